"""Training with the Triton kernels follows eager training's loss curve.

A tiny GPT (the "tiny" preset, d = 32, with a 211-token vocabulary, learned positions and the head's init scaled
so the softcap works in its nonlinear range) is trained with Muon (Newton-Schulz on the hidden matrices) and
AdamW (the rest) from one initialisation on one stream of batches, three ways:

    oracle  every op eager, in float64 (parameters, activations, optimizer state and Newton-Schulz)
    peer    every op eager, in fp32                                            (the same code as the oracle)
    kernel  fp32, with Triton implementations (under the interpreter on the CPU) of relu2_mlp,
            linear_cross_entropy and newton_schulz (Muon's ns_impl) in place of the eager ones

The default run (SHORT: one layer, 2 × 16 tokens, 6 steps) swaps all three kernels in at once: the interpreter
runs one program at a time, so it takes tens of seconds. The full run (FULL, --runslow: the preset's two layers,
4 × 32 tokens, 30 steps) swaps in one kernel at a time.

Error model. The peer and the kernel run differ from the oracle only by fp32 rounding: at the same parameters their
forward and backward values differ from float64 by the fp32 accumulation error of each sum (K terms: up to K·u
relative, typically √K·u, u = 2⁻²⁴), and training carries each step's difference into the next step's parameters,
where the dynamics (Newton-Schulz above all, whose polynomial slopes amplify small singular directions) may grow
it. Nothing in that chain differs in kind between an eager fp32 op and a Triton fp32 op that sums in another
order, so the kernel's curve may sit at most k times further from the oracle's than the peer's does, plus the
rounding of the loss itself (FlashAttention's parity rule, tests/parity.py, applied to the curve): at every step t

    |L_kernel(t) - L_oracle(t)|  <=  k · max_{s <= t} |L_peer(s) - L_oracle(s)|  +  noise(t),
    noise(t) = 4·u·|L_oracle(t)|   (two fp32 roundings of the loss value on each side)

with k = K_FACTOR = 4 (FlashAttention takes 2 for one op; a curve composes many ops over many steps). The running
maximum lets the band grow as rounding differences accumulate, no faster than fp32 rounding makes them grow in
eager training. A wrong constant leaves it at once: test_the_band_catches_a_planted_error checks that an eager
loss whose softcap is off by one part in 10³ fails the check. What the short run resolves: a Triton loss whose
softcap is off by 1e-3, a Newton-Schulz whose coefficient a is off by 1e-2, or a relu² epilogue off by 1e-2, each
leaves the band; errors of 1e-4 in the last two stay inside it (their effect on six steps' losses is below four
times fp32's own drift), and need the full run or the kernels' parity tests.
"""

import copy
import dataclasses
import functools

import pytest
import torch

from kernels import reference, registry
from model.config import model_preset
from model.gpt import GPT
from optim import muon
from optim.muon import Muon

VOCAB = 211  # prime: the loss kernel's vocabulary tiles have a ragged edge
K_FACTOR = 4.0
LR_MUON, LR_ADAM = 0.02, 0.01
U = 2.0**-24
HEAD_SCALE = 25.0
IMPLS = {"relu2_mlp": "mlp", "linear_cross_entropy": "ce", "newton_schulz": "ns"}


@dataclasses.dataclass(frozen=True)
class Setting:
    n_layer: int
    batch: int
    seq: int
    steps: int
    distinct_batches: int  # the stream cycles through this many batches


# The default run: all three Triton kernels in one run, a one-layer model, a few steps (the interpreter runs one
# program at a time: Muon's Newton-Schulz alone is ~90 programs a step). The full run (--runslow): the "tiny"
# preset's two layers, 4 × 32 tokens, 30 steps, one Triton kernel at a time.
SHORT = Setting(n_layer=1, batch=2, seq=16, steps=6, distinct_batches=1)
FULL = Setting(n_layer=2, batch=4, seq=32, steps=30, distinct_batches=30)


def _config(setting: Setting, **impls):
    # rotary off: it rounds q and k to fp32, which would put fp32 rounding into the float64 oracle; projections
    # initialised (not zero) so every matmul of the MLP carries gradient from the first step
    return model_preset("tiny", vocab_size=VOCAB, n_layer=setting.n_layer, rotary=False, zero_init_proj=False,
                        attention_impl="sdpa", unet_skips=setting.n_layer > 1, **impls)


@functools.cache
def _batches(setting: Setting):
    """A learnable token stream: a first-order Markov chain where each token has four likely successors."""
    g = torch.Generator().manual_seed(1234)
    successors = torch.randint(0, VOCAB, (VOCAB, 4), generator=g)
    out = []
    for _ in range(setting.distinct_batches):
        tokens = torch.empty(setting.batch, setting.seq + 1, dtype=torch.long)
        tokens[:, 0] = torch.randint(0, VOCAB, (setting.batch,), generator=g)
        for t in range(setting.seq):
            choice = torch.randint(0, 4, (setting.batch,), generator=g)
            noise = torch.randint(0, VOCAB, (setting.batch,), generator=g)
            follow = torch.rand(setting.batch, generator=g) < 0.9
            tokens[:, t + 1] = torch.where(follow, successors[tokens[:, t], choice], noise)
        out.append((tokens[:, :-1], tokens[:, 1:]))
    return [out[step % len(out)] for step in range(setting.steps)]


@functools.cache
def _initial_state(setting: Setting):
    """The GPT init, with the head scaled ×HEAD_SCALE: logits of order 1-3 from the first step, where the softcap
    is not the identity (a zero or N(0, 0.02) head leaves it linear for many steps)."""
    torch.manual_seed(0)
    state = copy.deepcopy(GPT(_config(setting)).state_dict())
    state["lm_head.weight"] *= HEAD_SCALE
    return state


def train(setting: Setting, *, triton=(), float64=False, ce_fn=None) -> torch.Tensor:
    """The loss of every training step (float64 tensor), from the setting's initial state and batches; `triton`
    names the ops that run their Triton implementation, the others run eager."""
    impls = {IMPLS[op]: "triton" for op in triton}
    model = GPT(_config(setting, relu2_mlp_impl=impls.get("mlp", "eager"),
                        linear_cross_entropy_impl=impls.get("ce", "eager")))
    model.load_state_dict(_initial_state(setting))
    if float64:
        model.double()
        # the eager loss computes in fp32 unless told to upcast
        model.cross_entropy = functools.partial(reference.linear_cross_entropy, upcast=True)
    if ce_fn is not None:
        model.cross_entropy = ce_fn
    hidden = [p for name, p in model.named_parameters() if name.startswith("blocks.") and p.ndim == 2]
    others = [p for name, p in model.named_parameters() if not (name.startswith("blocks.") and p.ndim == 2)]
    optimizer = Muon(hidden, others, lr=LR_MUON, adam_lr=LR_ADAM, ns_impl=impls.get("ns", "eager"),
                     ns_dtype="fp64" if float64 else "fp32")
    losses = []
    for idx, targets in _batches(setting):
        loss = model(idx, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return torch.tensor(losses, dtype=torch.float64)


@functools.cache
def reference_curves(setting: Setting):
    """(oracle, peer): the float64 and the fp32 eager curves of a setting."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(muon.NS_DTYPES, "fp64", torch.float64)  # Newton-Schulz in float64 for the oracle
        oracle = train(setting, float64=True)
    return oracle, train(setting)


def band_violations(kernel, peer, oracle) -> list[str]:
    """The steps where the kernel's curve leaves the band of the module docstring, described."""
    peer_err = torch.cummax((peer - oracle).abs(), dim=0).values
    bound = K_FACTOR * peer_err + 4 * U * oracle.abs()
    err = (kernel - oracle).abs()
    return [f"step {t}: |kernel - oracle| = {err[t]:.3g} > {K_FACTOR}·{peer_err[t]:.3g} + noise = {bound[t]:.3g}"
            for t in range(len(oracle)) if not err[t] <= bound[t]]


def assert_follows(kernel, setting: Setting, what: str):
    oracle, peer = reference_curves(setting)
    bad = band_violations(kernel, peer, oracle)
    assert not bad, f"{what}: {len(bad)} of {setting.steps} steps outside the band; first: " + "; ".join(bad[:3])


@pytest.mark.parametrize("setting", [SHORT, pytest.param(FULL, marks=pytest.mark.slow)], ids=["short", "full"])
def test_the_curves_learn(setting):
    """The setup is meaningful: the loss falls, the fp32 peer stays near the float64 oracle (rounding, not
    divergence), and the two differ (else the band would be zero)."""
    oracle, peer = reference_curves(setting)
    assert oracle[-1] < oracle[0] - 1.0, oracle.tolist()
    gap = (peer - oracle).abs()
    assert 0 < gap.max() < 1e-4, gap.tolist()


def test_triton_kernels_follow_the_eager_curve():
    """The short run with the Triton MLP, loss and Newton-Schulz together."""
    assert_follows(train(SHORT, triton=tuple(IMPLS)), SHORT, "relu2_mlp + linear_cross_entropy + newton_schulz")


@pytest.mark.slow
@pytest.mark.parametrize("op", list(IMPLS))
def test_each_triton_kernel_follows_the_eager_curve(op):
    """The full run, one Triton kernel at a time."""
    assert_follows(train(FULL, triton=(op,)), FULL, op)


def test_the_band_catches_a_planted_error():
    """The short run with an eager loss whose softcap is 15·(1 + 1e-3) instead of 15 (a wrong constant in a loss
    kernel) leaves the band: the check can fail."""
    oracle, peer = reference_curves(SHORT)
    eager = registry.get("linear_cross_entropy", "eager")

    def wrong_softcap(*args, softcap=None, **kw):
        return eager(*args, softcap=softcap * (1 + 1e-3), **kw)

    assert band_violations(train(SHORT, ce_fn=wrong_softcap), peer, oracle)
