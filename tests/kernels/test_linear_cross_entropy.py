"""kernels.linear_cross_entropy (the Triton implementation): parity (loss and every gradient; tanh and algebraic
softcaps, head bias, mean and sum), Liger and torch.compile peers (parity and peak memory), poisoned buffers,
codegen, input checks; 124M shape and determinism on a GPU.

On the CPU the kernels run under the Triton interpreter (tests/conftest.py), so shapes stay tiny. Parity through
tests.parity.check_parity: oracle kernels.reference.linear_cross_entropy(upcast=True) in float64, peer the same
eager code in the input dtype, one random grad_output scalar applied to all three paths.
"""

import pytest
import torch

from bench.cases import linear_cross_entropy as cases
from kernels import linear_cross_entropy as lce
from kernels import registry
from kernels.device import is_interpreter
from kernels.reference import linear_cross_entropy as eager_lce
from kernels.tiles import TRITON_DTYPE
from tests.parity import (
    NAN_WARNINGS,
    assert_close,
    check_nonfinite,
    check_parity,
    check_second_backward,
    poisoned,
    run,
)

IGNORE = -100


def make_inputs(N, H, V, dtype, device, *, ignore_rows=(), weight_scale=1.0):
    """hidden ~ N(0, 1), weight ~ N(0, weight_scale²/H) (logits of order weight_scale), targets with the given
    rows set to IGNORE."""
    hidden = torch.randn(N, H, device=device).to(dtype)
    weight = (torch.randn(V, H, device=device) * weight_scale / H**0.5).to(dtype)
    targets = torch.randint(0, V, (N,), device=device)
    for r in ignore_rows:
        targets[r] = IGNORE
    return hidden, weight, targets


def make_bias(V, dtype, device, scale=2.0):
    """A head bias of the logits' order (track 3 learns one; zero at init would test nothing)."""
    return (torch.randn(V, device=device) * scale).to(dtype)


NAMES = ("loss", "grad_hidden", "grad_weight")
NAMES_BIAS = NAMES + ("grad_bias",)


def kernel_fn(h, w, t, b=None, **kw):
    """The Triton op with the bias as a positional input, so that check_parity compares its gradient."""
    return lce.linear_cross_entropy(h, w, t, bias=b, **kw)


def eager_fn(h, w, t, b=None, upcast=False, **kw):
    return eager_lce(h, w, t, bias=b, upcast=upcast, **kw)


def fp32_noise(oracle):
    """fp32 errors come from the logits' K-term dot products (~sqrt(K)·eps relative), summed in another order by
    numpy (interpreter) than by torch; over <= 131×40 elements the peer's max error swings 10x from seed to seed
    (as low as 0 for the scalar loss). Floor: 8 eps of the largest value. (Measured over 20 seeds: the largest
    k needed with this floor was 0.56.)"""
    return 8 * torch.finfo(torch.float32).eps * oracle.abs().max().item()


def parity(hidden, weight, targets, bias=None, *, softcap=None, softcap_kind="tanh", z_loss=0.0, reduction="mean",
           k=None, **kernel_kw):
    """Kernel vs float64 oracle within k·(peer error) + noise for loss, grad_hidden, grad_weight (and grad_bias with
    a bias); plus the fixed per-dtype table against the oracle. Returns the kernel's [loss, *grads]."""
    kw = dict(softcap=softcap, softcap_kind=softcap_kind, z_loss=z_loss, reduction=reduction, ignore_index=IGNORE)
    g = torch.rand((), device=hidden.device) + 0.5  # one random grad_output for all three paths

    def kernel(*args, **kw):
        return kernel_fn(*args, **kw, **kernel_kw)

    names = NAMES if bias is None else NAMES_BIAS
    inputs = [hidden, weight, targets] + ([] if bias is None else [bias])
    where = (f"{tuple(hidden.shape)}x{weight.shape[0]} {hidden.dtype} softcap={softcap} ({softcap_kind}) "
             f"bias={bias is not None} {reduction} z_loss={z_loss}")
    out, _, _ = check_parity(kernel, eager_fn, inputs, names=names, grad_output=g, kwargs=kw,
                             k=k if k is not None else (3.0 if softcap else 2.0),  # FA's k: 2, 3 with softcap
                             noise=fp32_noise if hidden.dtype == torch.float32 else None, table=names, where=where)
    for r in (targets == IGNORE).nonzero().flatten().tolist():
        assert torch.equal(out[1][r], torch.zeros_like(out[1][r])), f"ignored row {r} has a nonzero grad_hidden"
    return out


# ---------------------------------------------------------------------------------------------------
# Parity (interpreter on CPU, the same code on a GPU)
# ---------------------------------------------------------------------------------------------------

# (N, H, V): a single token; 7 and 37 tokens; V = 97 / 131 (primes, not multiples of any tile); H = 24 / 40.
SHAPES = [(1, 24, 97), (7, 40, 131), (37, 24, 131)]


@pytest.mark.parametrize("softcap", [None, 15.0, 30.0])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_parity_with_eager(shape, dtype, softcap, device):
    N, H, V = shape
    ignore_rows = (2, N - 1) if N > 2 else ()
    # weight_scale 8: logits of order ±8-20, so a 15 softcap bends them and the tanh derivative matters.
    parity(*make_inputs(N, H, V, dtype, device, ignore_rows=ignore_rows, weight_scale=8.0), softcap=softcap)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_z_loss_and_reductions(dtype, reduction, device):
    inputs = make_inputs(37, 40, 131, dtype, device, ignore_rows=(0, 5, 6), weight_scale=4.0)
    parity(*inputs, softcap=30.0, z_loss=1e-2, reduction=reduction)


def test_fp16(device):
    parity(*make_inputs(37, 40, 131, torch.float16, device, ignore_rows=(3,), weight_scale=4.0), softcap=15.0,
           z_loss=1e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_many_tiles_and_chunks(dtype, device):
    """Small tiles and 16-row chunks: 3 chunks (the last ragged), 3 vocab tiles, 2 K-steps of 32/64 (H = 40),
    so the log-sum-exp combine, the fp32 grad_weight running sum (16-bit: in the workspace buffer) and every
    edge mask run. A row ignored in each chunk."""
    config = "f64" if dtype == torch.float32 else "b64"
    inputs = make_inputs(37, 40, 131, dtype, device, ignore_rows=(1, 20, 36), weight_scale=8.0)
    parity(*inputs, softcap=15.0, z_loss=1e-3, config=config, chunk_rows=16)


# Track 3's head: z = h Wᵀ + b, algebraic softcap 15·z·rsqrt(z² + 225), reduction "sum" (and the mean).
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_track3_head_bias_algebraic_softcap(shape, dtype, reduction, device):
    N, H, V = shape
    hidden, weight, targets = make_inputs(N, H, V, dtype, device, ignore_rows=(2,) if N > 2 else (), weight_scale=8.0)
    parity(hidden, weight, targets, make_bias(V, dtype, device), softcap=15.0, softcap_kind="algebraic",
           reduction=reduction)


@pytest.mark.parametrize("softcap, kind, bias",
                         [(None, "tanh", True), (15.0, "tanh", True), (30.0, "algebraic", False)],
                         ids=["bias-nocap", "bias-tanh", "algebraic-nobias"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_bias_and_softcap_kinds_separately(dtype, softcap, kind, bias, device):
    """Each track-3 feature on its own, with z-loss, over three chunks (the bias's fp32 running sum across chunks)."""
    inputs = make_inputs(37, 40, 131, dtype, device, ignore_rows=(1, 20), weight_scale=8.0)
    b = make_bias(131, dtype, device) if bias else None
    parity(*inputs, b, softcap=softcap, softcap_kind=kind, z_loss=1e-3, chunk_rows=16,
           config="f64" if dtype == torch.float32 else "b64")


def test_fp16_track3_head(device):
    inputs = make_inputs(37, 40, 131, torch.float16, device, ignore_rows=(3,), weight_scale=4.0)
    parity(*inputs, make_bias(131, torch.float16, device), softcap=15.0, softcap_kind="algebraic", reduction="sum")


def test_algebraic_softcap_far_from_zero_and_saturated(device):
    """Logits up to ~±2e5 (|z|/s ~ 1e4, where z² + s² rounds to z² in fp32 and c may round a hair past ±s): the
    derivative's clamp keeps grad finite and within the peer's error of the float64 oracle."""
    hidden, weight, targets = make_inputs(7, 24, 97, torch.float32, device, weight_scale=1.0)
    weight = weight * torch.logspace(0, 5, 97, device=device)[:, None]  # rows from ~1 to ~2e5 in logit scale
    parity(hidden, weight, targets, softcap=15.0, softcap_kind="algebraic", reduction="sum")


def test_reduction_none_without_grad(device):
    hidden, weight, targets = make_inputs(7, 24, 97, torch.float32, device, ignore_rows=(4,), weight_scale=4.0)
    with torch.no_grad():
        loss = lce.linear_cross_entropy(hidden, weight, targets, softcap=15.0, reduction="none")
    expected = eager_lce(hidden, weight, targets, softcap=15.0, reduction="none")
    assert loss.shape == (7,) and loss.dtype == torch.float32
    assert_close(loss, expected, atol=1e-5, rtol=1e-5, name="per-token loss")
    assert loss[4] == 0
    with torch.no_grad():
        loss32 = lce.linear_cross_entropy(hidden, weight, targets.int(), softcap=15.0, reduction="none")
    assert torch.equal(loss32, loss)  # int32 targets are accepted too


def test_reduction_none_with_grad_raises():
    hidden, weight, targets = make_inputs(4, 24, 97, torch.float32, "cpu")
    with pytest.raises(NotImplementedError, match="reduction='none' is supported only without autograd"):
        lce.linear_cross_entropy(hidden.requires_grad_(), weight, targets, reduction="none")


def test_no_grad_path_matches_and_skips_gradients(device):
    hidden, weight, targets = make_inputs(7, 24, 97, torch.bfloat16, device)
    with torch.no_grad():
        loss = lce.linear_cross_entropy(hidden, weight, targets, softcap=15.0)
    loss2, gh, gw, gb = lce.linear_cross_entropy_fwd(hidden, weight, targets, softcap=15.0)
    assert torch.equal(loss, loss2) and gb is None  # no bias: no bias gradient
    _, gh_none, gw_none, _ = lce.linear_cross_entropy_fwd(hidden, weight, targets, compute_grad_hidden=False,
                                                                  compute_grad_weight=False)
    assert gh_none is None and gw_none is None


@pytest.mark.parametrize("needs", [(False, True, False), (False, False, True), (True, False, True)],
                         ids=["weight", "bias", "hidden+bias"])
def test_only_requested_gradients(needs, device):
    """Gradients only for the inputs that require grad; the others stay None, the computed ones match eager."""
    hidden, weight, targets = make_inputs(7, 24, 97, torch.float32, device)
    bias = make_bias(97, torch.float32, device)
    ours = [t.clone().requires_grad_(n) for t, n in zip((hidden, weight, bias), needs)]
    lce.linear_cross_entropy(*ours[:2], targets, bias=ours[2], softcap=15.0).backward()
    ref = [t.clone().requires_grad_(n) for t, n in zip((hidden, weight, bias), needs)]
    eager_lce(*ref[:2], targets, bias=ref[2], softcap=15.0).backward()
    for name, a, b, n in zip(NAMES_BIAS[1:], ours, ref, needs):
        if n:
            assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-4, name=name)
        else:
            assert a.grad is None, name


def test_all_targets_ignored_gives_zero(device):
    hidden, weight, targets = make_inputs(5, 24, 97, torch.float32, device, ignore_rows=range(5))
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    b = make_bias(97, torch.float32, device).requires_grad_()
    loss = lce.linear_cross_entropy(h, w, targets, bias=b, softcap=15.0, softcap_kind="algebraic")
    loss.backward()
    assert loss.item() == 0.0  # 0 / max(0, 1), as the eager reference
    for t in (h, w, b):
        assert torch.equal(t.grad, torch.zeros_like(t))


def test_retain_graph_second_backward(device):
    """backward scales the saved gradients out of place: a second backward gives the same gradients again."""
    hidden, weight, targets = make_inputs(7, 24, 97, torch.float32, device)
    leaf = hidden.clone().requires_grad_()
    check_second_backward(lambda h: lce.linear_cross_entropy(h, weight, targets), leaf)


# 41.0: s·fl(1/s) is not 1 in fp32, so a saturated logit's tanh derivative is exactly 0, as eager's 1 - tanh² is,
# only when it is computed from |c| = s.
@NAN_WARNINGS
@pytest.mark.parametrize("softcap", [None, 15.0, 41.0, "algebraic"])
@pytest.mark.parametrize("kind", ["nan", "inf"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_nan_and_inf_propagate_as_in_eager(dtype, kind, softcap, device):
    """Non-finite hidden rows: loss and every gradient are non-finite exactly where eager's are, of the same kind.
    nan: NaN in two rows, one of them ignored (its loss is 0 but its gradient NaN, as eager's). inf: +inf and
    -inf in two rows; without softcap their logits make the loss NaN; with the tanh softcap the logits saturate at
    ±s (finite loss and grad_hidden, zero tanh derivative), so grad_weight is NaN (0·inf) only in the inf columns;
    the algebraic softcap (15, with a head bias) of an infinite logit is inf·0 = NaN, as eager's, so the loss is
    NaN."""
    hidden, weight, targets = make_inputs(37, 40, 131, dtype, device, ignore_rows=(5,), weight_scale=4.0)
    if kind == "nan":
        hidden[3, 7], hidden[5, 1] = float("nan"), float("nan")
    else:
        hidden[11, 0], hidden[30, 9] = float("inf"), -float("inf")
    g = torch.rand((), device=device) + 0.5
    algebraic = softcap == "algebraic"
    kwargs = dict(softcap=15.0 if algebraic else softcap, softcap_kind="algebraic" if algebraic else "tanh",
                  ignore_index=IGNORE)
    inputs = [hidden, weight, targets] + ([make_bias(131, dtype, device)] if algebraic else [])
    (loss, gh, gw, *_), _ = check_nonfinite(kernel_fn, eager_fn, inputs, names=NAMES_BIAS if algebraic else NAMES,
                                            grad_output=g, kwargs=kwargs)
    if kind == "inf" and softcap and not algebraic:
        assert torch.isfinite(loss) and torch.isfinite(gh).all() and torch.isnan(gw[:, [0, 9]]).all()
    if kind == "inf" and algebraic:
        assert torch.isnan(loss)


def test_registered_as_triton():
    assert registry.get("linear_cross_entropy", "triton") is lce.linear_cross_entropy


# ---------------------------------------------------------------------------------------------------
# Peer: Liger-Kernel's fused linear cross-entropy (no softcap: Liger's softcap fails under the interpreter)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias, reduction", [(False, "mean"), (True, "sum")], ids=["nobias-mean", "bias-sum"])
@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
def test_matches_liger(z_loss, bias, reduction, device):
    """Same loss and gradients as Liger's fused linear cross-entropy (fp32, no softcap), and both as close to the
    float64 oracle as the eager peer is (tests.parity.check_parity holds each to k·(peer error) + noise)."""
    liger = pytest.importorskip("liger_kernel.transformers.functional",
                                reason="liger-kernel not importable (it is not on the GPU image)")
    hidden, weight, targets = make_inputs(37, 40, 131, torch.float32, device, ignore_rows=(3, 9), weight_scale=4.0)
    inputs = [hidden, weight, targets] + ([make_bias(131, torch.float32, device)] if bias else [])
    names = NAMES_BIAS if bias else NAMES
    g = torch.tensor(0.7, device=device)
    kw = dict(z_loss=z_loss, reduction=reduction, ignore_index=IGNORE)

    def liger_fn(h, w, t, b=None, z_loss=0.0, **kw):
        return liger.liger_fused_linear_cross_entropy(h, w, t, bias=b, lse_square_scale=z_loss, **kw)

    ours = run(kernel_fn, inputs, g, **kw)
    theirs = run(liger_fn, inputs, g, **kw)
    for name, a, b in zip(names, ours, theirs):
        assert_close(a, b, atol=1e-6, rtol=1e-5, name=f"{name} vs Liger")
    for fn, who in ((kernel_fn, "ours"), (liger_fn, "Liger")):
        check_parity(fn, eager_fn, inputs, names=names, grad_output=g, kwargs=kw, noise=fp32_noise, where=who)


# ---------------------------------------------------------------------------------------------------
# Poisoned buffers: every output element is written, nothing unwritten is read
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["tanh", "algebraic+bias"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_nan_outputs_and_workspace_are_fully_overwritten(dtype, head, device):
    config = "f64" if dtype == torch.float32 else "b64"
    hidden, weight, targets = make_inputs(37, 40, 131, dtype, device, ignore_rows=(2,), weight_scale=4.0)
    track3 = head == "algebraic+bias"
    head_kw = dict(softcap=15.0, softcap_kind="algebraic" if track3 else "tanh",
                   bias=make_bias(131, dtype, device) if track3 else None)
    kw = dict(z_loss=1e-3, config=config, chunk_rows=16, **head_kw)
    clean = lce.linear_cross_entropy_fwd(hidden, weight, targets, **kw)

    ws = poisoned(lce.lce_workspace(37, 131, 40, dtype, device, config=config, chunk_rows=16))
    assert (ws.gw_acc is not None) == (dtype != torch.float32)  # 3 chunks: 16-bit needs the fp32 running sum
    out = dict(grad_hidden=poisoned(hidden), grad_weight=poisoned(weight),
               loss_rows=poisoned((37,), dtype=torch.float32, device=device),
               grad_bias=poisoned((131,), dtype=dtype, device=device) if track3 else None)
    loss, gh, gw, gb = lce.linear_cross_entropy_fwd(hidden, weight, targets, z_loss=1e-3, workspace=ws,
                                                           **out, **head_kw)
    assert gh is out["grad_hidden"] and gw is out["grad_weight"] and gb is out["grad_bias"]
    for name, a, b in (("loss", loss, clean[0]), ("grad_hidden", gh, clean[1]), ("grad_weight", gw, clean[2]),
                       ("loss_rows", out["loss_rows"], None)) + ((("grad_bias", gb, clean[3]),) if track3 else ()):
        assert torch.isfinite(a).all(), f"{name}: {int((~torch.isfinite(a)).sum())} elements left unwritten"
        if b is not None:
            assert torch.equal(a, b), f"{name} differs from the run with fresh buffers"


def test_workspace_is_reusable(device):
    hidden, weight, targets = make_inputs(37, 40, 131, torch.bfloat16, device)
    ws = lce.lce_workspace(37, 131, 40, torch.bfloat16, device, config="b64", chunk_rows=16)
    bias = make_bias(131, torch.bfloat16, device)
    first = lce.linear_cross_entropy_fwd(hidden, weight, targets, bias=bias, workspace=ws)
    second = lce.linear_cross_entropy_fwd(hidden, weight, targets, bias=bias, workspace=ws)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------
# Peak memory on the CPU (process peak RSS, see bench.harness.peak_memory_bytes)
# ---------------------------------------------------------------------------------------------------


def _peaks(N, H, V, chunk_rows, dtype=torch.float32, providers=("eager", "triton"), softcap=15.0):
    """{provider: peak bytes of one forward + backward above the inputs}, process RSS (bench.harness)."""
    from bench.harness import peak_memory_bytes

    hidden, weight, targets = make_inputs(N, H, V, dtype, "cpu", weight_scale=4.0)

    def step(fn, **kw):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()

        def go():  # repeatable; the gradients are dropped after the peak, not before it
            fn(h, w, targets, **kw).backward()
            h.grad = w.grad = None

        # "rss": the profiler misreads frees of tensors passed to interpreted kernels (see its docstring); the
        # first call (compilation, first-launch work) is outside the measurement
        return peak_memory_bytes(go, "cpu", method="rss")[1]

    config = "b128" if dtype != torch.float32 else "f64"
    fns = {"eager": (eager_lce, dict(softcap=softcap)),
           "compile": (lambda: _compiled_eager(), dict(softcap=softcap)),
           "liger": (lambda: _liger(), {}),
           "triton": (lce.linear_cross_entropy, dict(softcap=softcap, chunk_rows=chunk_rows, config=config))}
    peaks = {}
    for name in providers:
        fn, kw = fns[name]
        peaks[name] = step(fn() if name in ("compile", "liger") else fn, **kw)
    return peaks


def _liger():
    return pytest.importorskip("liger_kernel.transformers.functional",
                               reason="liger-kernel not importable").liger_fused_linear_cross_entropy


_COMPILED = {}


def _compiled_eager():
    """torch.compile (inductor) of the eager reference: torch's own fusion of the same loss, compiled once."""
    if "lce" not in _COMPILED:
        _COMPILED["lce"] = torch.compile(eager_lce)
    return _COMPILED["lce"]


@pytest.mark.skipif(not is_interpreter(), reason="CPU memory trace (the gpu tests compare CUDA peaks)")
def test_peak_memory_is_bounded_by_the_chunk(capsys):
    N, H, V, C = 64, 32, 4096, 16  # 4 chunks; eager holds several (N, V) fp32 tensors at once
    peaks = _peaks(N, H, V, C)
    eager_peak, triton_peak = peaks["eager"], peaks["triton"]
    logits, chunk = N * V * 4, C * V * 4
    # Fused: the chunk buffer + the two gradients and their grad_output-scaled copies in backward + per-row
    # buffers + 1 MiB for the interpreter's numpy tiles (RSS counts them).
    bound = chunk + 2 * 4 * (N * H + V * H) + 4 * (C * 2 * (V // 64 + 1) + 4 * N) + 2**20
    with capsys.disabled():
        print(f"\n[peak memory, CPU, fp32, N={N} H={H} V={V} chunk={C}] eager {eager_peak / 2**20:.2f} MiB "
              f"({eager_peak / logits:.1f}x the N×V fp32 logits), triton {triton_peak / 2**20:.2f} MiB "
              f"(chunk buffer {chunk / 2**20:.2f} MiB)")
    assert triton_peak <= bound, f"triton peak {triton_peak} B > bound {bound} B"
    assert eager_peak >= 2 * logits  # logits and at least their gradient (the comparison is meaningful)
    assert triton_peak < eager_peak / 3


@pytest.mark.skipif(not is_interpreter(), reason="CPU memory trace (the gpu tests compare CUDA peaks)")
def test_peers_liger_and_compiled_eager_parity_and_peak_memory(capsys):
    """The Triton op beside Liger's fused linear cross-entropy and torch.compile's fusion of the eager loss (no
    softcap: Liger's softcap does not run under the interpreter), fp32, N = 256 tokens (8 chunks of 32), H = 32,
    V = 4096. Parity: each peer's loss and gradients within k·(eager peer error) + noise of the float64 oracle.
    Memory (process RSS, one forward + backward): the Triton op below eager's and torch.compile's, whose (N, V)
    tensors grow with the tokens; its own floor is the (V, H) gradient and, in backward, its grad_output-scaled
    copy (out of place, so that retain_graph works; Liger returns its saved gradient itself when grad_output is
    1, after a host sync on that test, and picks 4-row chunks here: it can sit below)."""
    from bench.harness import machine_line

    N, H, V, C = 256, 32, 4096, 32
    hidden, weight, targets = make_inputs(N, H, V, torch.float32, "cpu", ignore_rows=(7, 200), weight_scale=4.0)
    g = torch.tensor(0.8)
    for name, fn in (("compile", _compiled_eager()), ("liger", _liger())):
        check_parity(fn, eager_lce, [hidden, weight, targets], names=NAMES, grad_output=g, noise=fp32_noise,
                     kwargs=dict(ignore_index=IGNORE), where=name)
    peaks = _peaks(N, H, V, C, providers=("eager", "compile", "liger", "triton"), softcap=None)
    logits = N * V * 4
    with capsys.disabled():
        print(f"\n[peak memory, CPU, fp32, no softcap, N={N} H={H} V={V} chunk={C}; {machine_line()}] " +
              ", ".join(f"{k} {v / 2**20:.2f} MiB" for k, v in peaks.items()) +
              f" (N×V fp32 logits {logits / 2**20:.2f} MiB, V×H fp32 {V * H * 4 / 2**20:.2f} MiB)")
    assert peaks["triton"] < peaks["eager"] / 2
    assert peaks["triton"] < peaks["compile"]
    bound = C * V * 4 + 2 * 4 * (N * H + V * H) + 4 * (C * 2 * (V // 64 + 1) + 4 * N) + 2**20
    assert peaks["triton"] <= bound, f"triton peak {peaks['triton']} B > bound {bound} B"


@pytest.mark.slow
@pytest.mark.skipif(not is_interpreter(), reason="CPU memory trace (the gpu tests compare CUDA peaks)")
def test_peak_memory_speedrun_vocab(capsys):
    """The real vocab (50304) and the 124M run's tokens/width ratio (8192/768 ≈ 11; here 1024/64 = 16), bf16,
    4 chunks of 256 rows (a few minutes under the interpreter). The ratio matters: the Triton path holds
    (V, H)-sized buffers (grad_weight, its fp32 running sum when chunked) where eager holds (N, V) ones, so with
    fewer tokens than the width (N < H) eager is the smaller one."""
    N, H, V, C = 1024, 64, 50304, 256
    peaks = _peaks(N, H, V, C, dtype=torch.bfloat16)
    eager_peak, triton_peak = peaks["eager"], peaks["triton"]
    chunk, weight_fp32 = C * V * 4, V * H * 4
    with capsys.disabled():
        print(f"\n[peak memory, CPU, bf16, N={N} H={H} V={V} chunk={C}] eager {eager_peak / 2**20:.1f} MiB, "
              f"triton {triton_peak / 2**20:.1f} MiB (N×V fp32 logits {N * V * 4 / 2**20:.1f} MiB, "
              f"chunk buffer {chunk / 2**20:.1f} MiB, V×H fp32 {weight_fp32 / 2**20:.1f} MiB)")
    # chunk buffer + fp32 running sum + grad_weight and its scaled copy (bf16) + partials, per-row buffers,
    # interpreter tiles
    assert triton_peak <= chunk + weight_fp32 + weight_fp32 + 4 * (N * H + 2 * C * 800 + 4 * N) + 2**21
    assert triton_peak < eager_peak / 4


# ---------------------------------------------------------------------------------------------------
# Configs, chunking, codegen
# ---------------------------------------------------------------------------------------------------


def test_pick_config_and_chunk_rows():
    assert lce.pick_config(8192, 50304, torch.bfloat16) == "b128"
    assert lce.pick_config(37, 131, torch.bfloat16) == "b64"
    assert lce.pick_config(8192, 50304, torch.float32) == "f64"
    for N in (1, 37, 8192, 65536):
        for dtype in lce.SUPPORTED_DTYPES:
            assert (lce.pick_config(N, 50304, dtype), dtype) in lce.CONFIGS
    assert lce.pick_chunk_rows(8192, 50304, 128) == 4096  # two even chunks within the 1 GiB budget
    assert lce.pick_chunk_rows(100, 50304, 128) == 128
    rows = lce.pick_chunk_rows(65536, 50304, 128)
    assert rows % 128 == 0 and rows * 50304 * 4 <= lce.LOGITS_BUDGET_BYTES


def test_flop_model():
    assert cases.lce_flops(8192, 768, 50304) == 6 * 8192 * 768 * 50304


def test_codegen_cases_cover_every_config():
    configs = {tuple(case.config.split(" ")[:2]) for case in cases.codegen_cases()}
    assert configs == {(name, TRITON_DTYPE[dtype]) for name, dtype in lce.CONFIGS}
    kernels = {case.kernel for case in cases.codegen_cases()}
    assert kernels == {"lce_logits", "lce_loss_grad", "lce_grad_hidden", "lce_grad_weight"}


def test_sm90_codegen_has_hgmma_and_no_spills(assert_sm90_clean):
    """Every config compiles for sm_90: HGMMA in the three matmul kernels, no spills, smem <= 227 KB."""
    mine = assert_sm90_clean("lce_", cases.codegen_cases())
    assert all(r["hgmma"] > 0 for r in mine if r["kernel"] != "lce_loss_grad")


# ---------------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------------


def test_rejects_bad_shapes():
    h, w, t = torch.randn(4, 8), torch.randn(16, 8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"hidden \(N=4, H=8\) and weight \(V=16, H=6\) disagree on the hidden dim"):
        lce.linear_cross_entropy(h, torch.randn(16, 6), t)
    with pytest.raises(ValueError, match="targets has 3 entries but hidden has N=4 rows"):
        lce.linear_cross_entropy(h, w, t[:3])
    with pytest.raises(ValueError, match="hidden must have 2 dims"):
        lce.linear_cross_entropy(h[None], w, t)
    with pytest.raises(ValueError, match="targets must have 1 dims"):
        lce.linear_cross_entropy(h, w, t[:, None])
    with pytest.raises(ValueError, match="hidden is empty"):
        lce.linear_cross_entropy(h[:0], w, t[:0])
    with pytest.raises(ValueError, match="weight must be contiguous"):
        lce.linear_cross_entropy(h, torch.randn(8, 16).T, t)


def test_rejects_bad_dtypes():
    h, w, t = torch.randn(4, 8), torch.randn(16, 8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(TypeError, match="hidden .* and weight .* must share one dtype"):
        lce.linear_cross_entropy(h, w.bfloat16(), t)
    with pytest.raises(TypeError, match="hidden has dtype torch.float64"):
        lce.linear_cross_entropy(h.double(), w.double(), t)
    with pytest.raises(TypeError, match="targets has dtype torch.float32"):
        lce.linear_cross_entropy(h, w, t.float())


def test_rejects_bad_arguments():
    h, w, t = torch.randn(4, 8), torch.randn(16, 8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="reduction must be"):
        lce.linear_cross_entropy(h, w, t, reduction="avg")
    with pytest.raises(ValueError, match="softcap must be a positive finite float"):
        lce.linear_cross_entropy(h, w, t, softcap=0.0)
    with pytest.raises(ValueError, match="softcap_kind must be one of"):
        lce.linear_cross_entropy(h, w, t, softcap=15.0, softcap_kind="cubic")
    with pytest.raises(ValueError, match="softcap_kind must be one of"):
        eager_lce(h, w, t, softcap=15.0, softcap_kind="cubic")
    with pytest.raises(ValueError, match=r"bias has 15 entries but weight \(V=16, H=8\)"):
        lce.linear_cross_entropy(h, w, t, bias=torch.zeros(15))
    with pytest.raises(TypeError, match="hidden .* and bias .* must share one dtype"):
        lce.linear_cross_entropy(h, w, t, bias=torch.zeros(16, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="bias must have 1 dims"):
        lce.linear_cross_entropy(h, w, t, bias=torch.zeros(16, 1))
    with pytest.raises(ValueError, match="z_loss must be finite"):
        lce.linear_cross_entropy(h, w, t, z_loss=float("nan"))
    with pytest.raises(ValueError, match="no linear-cross-entropy config 'b128' for torch.float32"):
        lce.linear_cross_entropy_fwd(h, w, t, config="b128")
    with pytest.raises(ValueError, match=r"grad_hidden must have shape \(4, 8\)"):
        lce.linear_cross_entropy_fwd(h, w, t, grad_hidden=torch.empty(4, 9))
    with pytest.raises(ValueError, match="workspace.logits must be"):
        ws = lce.lce_workspace(4, 32, 8, torch.float32, "cpu")
        lce.linear_cross_entropy_fwd(h, w, t, workspace=ws)


def test_target_range_check_is_opt_in():
    """No check (and no host sync) by default: a bad target's loss is NaN (loud), not a silently wrong value, and
    a mean or sum over it is NaN. validate_targets=True raises naming the target."""
    h, w = torch.randn(4, 8), torch.randn(16, 8)
    for bad in (16, -1):
        t = torch.tensor([0, 3, bad, IGNORE])
        with pytest.raises(ValueError, match=rf"targets\[2\] = {bad} is outside \[0, V=16\)"):
            lce.linear_cross_entropy(h, w, t, validate_targets=True)
        with pytest.raises(ValueError, match=rf"targets\[2\] = {bad} is outside"):
            lce.linear_cross_entropy_fwd(h, w, t, validate_targets=True)
        with torch.no_grad():
            rows = lce.linear_cross_entropy(h, w, t, reduction="none")
        assert torch.isnan(rows[2]) and torch.isfinite(rows[[0, 1, 3]]).all()
        assert torch.isnan(lce.linear_cross_entropy(h.requires_grad_(), w, t))


def test_cpu_tensor_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        lce.linear_cross_entropy(torch.randn(4, 8), torch.randn(16, 8), torch.zeros(4, dtype=torch.long))


# ---------------------------------------------------------------------------------------------------
# GPU: the 124M shape and determinism
# ---------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("head", ["nocap", "tanh", "track3"])
def test_speedrun_shape_bf16(head):
    """8192 tokens × 768 → 50304 (two 4096-row chunks), vs eager in bf16 and the float64 oracle (~13 GB); track3:
    head bias, algebraic softcap, reduction "sum"."""
    hidden, weight, targets = make_inputs(8192, 768, 50304, torch.bfloat16, "cuda", ignore_rows=range(0, 8192, 97))
    if head == "track3":
        parity(hidden, weight, targets, make_bias(50304, torch.bfloat16, "cuda"), softcap=15.0,
               softcap_kind="algebraic", reduction="sum")
    else:
        parity(hidden, weight, targets, softcap=None if head == "nocap" else 15.0, z_loss=1e-4)


@pytest.mark.gpu
def test_speedrun_shape_peak_memory():
    from bench.harness import peak_memory_bytes

    hidden, weight, targets = make_inputs(8192, 768, 50304, torch.bfloat16, "cuda")
    peaks = {}
    for name, fn in (("eager", eager_lce), ("triton", lce.linear_cross_entropy)):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()

        def go():
            fn(h, w, targets, softcap=15.0).backward()
            h.grad = w.grad = None
        peaks[name] = peak_memory_bytes(go, "cuda")[1]
    print(f"\n[peak memory, CUDA, bf16, 8192x768x50304] eager {peaks['eager'] / 2**30:.2f} GiB, "
          f"triton {peaks['triton'] / 2**30:.2f} GiB")
    assert peaks["triton"] <= lce.LOGITS_BUDGET_BYTES + 4 * 50304 * 768 * 3 + 2**27
    assert peaks["triton"] < peaks["eager"] / 3


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_deterministic(dtype):
    hidden, weight, targets = make_inputs(8192, 768, 50304, dtype, "cuda", ignore_rows=range(0, 8192, 97))
    kw = dict(bias=make_bias(50304, dtype, "cuda"), softcap=15.0, softcap_kind="algebraic", z_loss=1e-4)
    first = lce.linear_cross_entropy_fwd(hidden, weight, targets, **kw)
    for _ in range(10):
        again = lce.linear_cross_entropy_fwd(hidden, weight, targets, **kw)
        for a, b in zip(first, again):
            assert torch.equal(a, b)
