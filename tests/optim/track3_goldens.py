"""Our trainer against the golden of a track-3 result (tests/golden/<folder>.json, scripts/track3_golden.py): the
shared method of the result-parity tests (tests/test_track3_golden.py's, for any result's golden).

A golden holds the reference script's own run at 2 layers, d=256, 2 rows of 64 tokens, vocab 50304, fp32 (bf16
only where the script's optimizer computes in bf16), one thread: every parameter's init fingerprint, the loss and
every gradient at a perturbed init, and N optimizer steps (loss before each, every parameter's norm after each,
the norms the forward saw where a wrapper moves the weights first), plus the same run as a peer (its bf16 GEMMs
summed in another order, or 2 threads / no SIMD for fp32-only scripts) and the distance between the two.

Tolerances come from that distance, per figure and per step: the peer's relative difference, its running maximum
over the steps so far (a difference does not shrink back by itself), times DRIFT_FACTOR; where the peer is
bitwise equal (before the first bf16 GEMM of a non-zero momentum, say) the tolerance is FLOOR, the 1e-5 relative
of the forward and backward: bitwise would hold on the recording machine's kind of CPU with one thread only, and
every CPU must pass.
"""

import json
import math
import re
from pathlib import Path

import pytest
import torch

import train
from data.shards import write_shard
from kernels.device import native_bf16
from speedrun.config import resolve

GOLDENS = Path(__file__).parents[1] / "golden"
FLOOR = 1e-5  # relative: the forward and backward's agreement, and the bound where the peer is bitwise
DRIFT_FACTOR = 4.0  # × the reference's measured self-drift


def load(folder: str) -> dict:
    return json.loads((GOLDENS / f"{folder}.json").read_text())


def our_name(ref: str) -> str:
    """The reference's parameter name -> ours."""
    top = {"embed.weight": "wte.weight", "proj.weight": "lm_head.weight", "proj.bias": "lm_head.bias",
           "norm1.gains": "norm_in.gain", "norm2.gains": "norm_f.gain"}
    if ref in top:
        return top[ref]
    name = re.sub(r"attn\.(q|k|v|proj)\.", r"attn.c_\1.", ref)
    name = re.sub(r"mlp\.(fc|proj)\.", r"mlp.c_\1.", name)
    return name.replace(".gains", ".gain")


def streams(meta: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The golden script's train and val token streams."""
    g = torch.Generator()
    train_stream = torch.randint(0, meta["data_vocab"], (meta["train_tokens"],), generator=g.manual_seed(
        meta["train_seed"]))
    val = torch.randint(0, meta["data_vocab"], (2 * meta["val_tokens"] + 1,), generator=g.manual_seed(meta["val_seed"]))
    return train_stream, val


def config(golden: dict, tmp_path, recipe: str, *extra: str):
    """The track3 preset shrunk to the golden's shape, over shards holding its streams, with `recipe` and the
    golden's step count as the run's max_steps and schedule horizon; `extra` options on top."""
    meta, shape = golden["meta"], golden["meta"]["shape"]
    train_stream, val_stream = streams(meta)
    write_shard(tmp_path / "g_train_000000.bin", train_stream.numpy())
    write_shard(tmp_path / "g_val_000000.bin", val_stream.numpy())
    return resolve(["--preset=track3", f"--optimizer={recipe}", f"--data_dir={tmp_path}",
                    "--train_pattern=g_train_*.bin", "--val_pattern=g_val_*.bin", f"--out_dir={tmp_path / 'runs'}",
                    f"--model.n_layer={shape['n_layer']}", f"--model.n_embd={shape['dim']}",
                    f"--model.n_head={shape['dim'] // 128}", f"--model.max_seq_len={shape['seq']}",
                    f"--batch_size={shape['rows']}", f"--seq_len={shape['seq']}", "--reference_world_size=1",
                    f"--max_steps={meta['steps']}", "--schedule_steps=0", f"--val_tokens={meta['val_tokens']}",
                    f"--val_every={meta['steps']}", "--dtype=fp32", "--compile=False", "--threads=1",
                    "--log_every=1",
                    # the reference's loss formulation (the CPU's chunked loss sums in another order)
                    "--model.linear_cross_entropy_impl=eager", *extra])


def tiny_model(golden: dict, **init) -> torch.nn.Module:
    """Our track3 model at the golden's shape, fp32, the reference's loss formulation; `init`: GPTConfig init fields.
    Seed the generator and call reset_parameters() for the golden's init."""
    from model.config import model_preset
    from model.gpt import GPT

    shape = golden["meta"]["shape"]
    return GPT(model_preset("track3", n_layer=shape["n_layer"], n_embd=shape["dim"], n_head=shape["dim"] // 128,
                            vocab_size=shape["vocab"], max_seq_len=shape["seq"], linear_cross_entropy_impl="eager",
                            **init))


def fingerprint(p: torch.Tensor) -> dict:
    p = p.detach().double().flatten()
    return {"norm": p.norm().item(), "sum": p.sum().item(), "first": p[:2].tolist(), "last": p[-2:].tolist()}


def check_init(golden: dict, model: torch.nn.Module):
    """Every parameter's init fingerprint (the init is bitwise the reference's: a relative 1e-9 on float64 sums)."""
    params = dict(model.named_parameters())
    assert sorted(our_name(n) for n in golden["init"]) == sorted(params)
    for ref, want in golden["init"].items():
        got = fingerprint(params[our_name(ref)])
        assert got["first"] == pytest.approx(want["first"], rel=1e-6, abs=1e-12), ref
        assert got["last"] == pytest.approx(want["last"], rel=1e-6, abs=1e-12), ref
        assert got["norm"] == pytest.approx(want["norm"], rel=1e-9, abs=1e-12), ref
        assert got["sum"] == pytest.approx(want["sum"], rel=1e-9, abs=1e-9 * max(want["norm"], 1.0)), ref


def check_perturbed(golden: dict, model: torch.nn.Module):
    """At init + the golden's seeded noise, on step 0's batch: the loss and every gradient within FLOOR (a gradient by
    its norm and by a seeded probe <g, r>: |Δ<g, r>| <= FLOOR·|g|·|r| is what "g within FLOOR" implies)."""
    meta = golden["meta"]
    params = dict(model.named_parameters())
    with torch.no_grad():
        for i, ref in enumerate(golden["init"]):
            p = params[our_name(ref)]
            p.add_(meta["perturb_std"] * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    rows, seq = meta["shape"]["rows"], meta["shape"]["seq"]
    buf = streams(meta)[0][: rows * seq + 1]
    loss = model(buf[:-1].view(rows, seq), buf[1:].view(rows, seq))
    loss.backward()
    want = golden["perturbed"]
    assert loss.item() == pytest.approx(want["loss"], rel=FLOOR)
    for i, (ref, grad) in enumerate(want["grads"].items()):
        g = params[our_name(ref)].grad.double()
        r = torch.randn(g.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        assert g.norm().item() == pytest.approx(grad["norm"], rel=FLOOR), ref
        assert abs((g * r).sum().item() - grad["probe"]) <= FLOOR * grad["norm"] * r.norm().item(), ref


class Run:
    """A trainer run with what the golden records: losses (per token) before each step, every parameter's norm
    after each step and at each training forward, the val losses, and per step what `probe(trainer)` returns."""

    def __init__(self, cfg, init=None, probe=None):
        self.trainer = trainer = train.Trainer(cfg)
        if init is not None:
            init(trainer.model)
        self.norms, self.norms_at_forward, self.probes = [], [], []
        step = trainer.parallel.step

        def step_and_record():
            if probe is not None:
                self.probes.append(probe(trainer))
            step()
            self.norms.append(self._norms())

        def at_forward(module, args):
            if module.training:
                self.norms_at_forward.append(self._norms())

        trainer.parallel.step = step_and_record
        trainer.model.register_forward_pre_hook(at_forward)

    def _norms(self) -> dict:
        return {n: p.detach().double().norm().item() for n, p in self.trainer.model.named_parameters()}

    def run(self):
        summary = self.trainer.run()
        log = [json.loads(line) for line in open(Path(summary["run_dir"]) / "log.jsonl")]
        self.losses = [r["train_loss"] for r in log if "train_loss" in r]
        self.vals = [r["val_loss"] for r in log if "val_loss" in r]
        # the warm-up step (run, then undone) comes first
        self.norms, self.norms_at_forward, self.probes = self.norms[1:], self.norms_at_forward[1:], self.probes[1:]
        return self


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b) if b else abs(a - b)


def tolerances(golden: dict) -> tuple[list[float], list[dict], float]:
    """(per step loss tolerance, per step {reference name: norm tolerance}, val tolerance): DRIFT_FACTOR × the
    peer's running maximum relative difference, at least FLOOR."""
    peer_key = next(k for k in golden if k.startswith("steps_") and isinstance(golden[k], list))
    peer = golden[peer_key]
    loss_tol, norm_tol = [], []
    running_loss, running = 0.0, {ref: 0.0 for ref in golden["init"]}
    for want, other in zip(golden["steps"], peer):
        running_loss = max(running_loss, _rel(other["loss"], want["loss"]))
        loss_tol.append(max(FLOOR, DRIFT_FACTOR * running_loss))
        for ref in running:
            running[ref] = max(running[ref], _rel(other["norms"][ref], want["norms"][ref]))
        norm_tol.append({ref: max(FLOOR, DRIFT_FACTOR * d) for ref, d in running.items()})
    return loss_tol, norm_tol, max(FLOOR, DRIFT_FACTOR * golden["self_drift"]["val"])


def worst(run: Run, golden: dict) -> dict:
    """How far `run` is from the golden: the largest ratio |relative difference| / tolerance of each kind."""
    tokens = golden["meta"]["shape"]["rows"] * golden["meta"]["shape"]["seq"]
    loss_tol, norm_tol, val_tol = tolerances(golden)
    out = {"loss": 0.0, "norms": 0.0, "norms_at_forward": 0.0, "val": _rel(run.vals[-1], golden["val_loss_after"])
           / val_tol}
    for k, want in enumerate(golden["steps"]):
        out["loss"] = max(out["loss"], _rel(run.losses[k], want["loss"] / tokens) / loss_tol[k])
        for key in ("norms", "norms_at_forward"):
            for ref, norm in want.get(key, {}).items():
                got = getattr(run, key)[k][our_name(ref)]
                out[key] = max(out[key], (_rel(got, norm) if norm else abs(got)) / norm_tol[k][ref])
    return out


def check_trajectory(run: Run, golden: dict):
    """Every figure within its tolerance (tolerances()); the val loss before training within FLOOR."""
    tokens = golden["meta"]["shape"]["rows"] * golden["meta"]["shape"]["seq"]
    loss_tol, norm_tol, val_tol = tolerances(golden)
    steps = golden["steps"]
    assert len(run.losses) == len(run.norms) == len(steps) and len(run.vals) == 2
    assert run.vals[0] == pytest.approx(golden["val_loss_before"], rel=FLOOR)
    for k, want in enumerate(steps):
        assert run.losses[k] == pytest.approx(want["loss"] / tokens, rel=loss_tol[k]), k
        for key in ("norms", "norms_at_forward"):
            for ref, norm in want.get(key, {}).items():
                got = getattr(run, key)[k][our_name(ref)]
                assert got == pytest.approx(norm, rel=norm_tol[k][ref], abs=1e-12), (key, k, ref)
    assert run.vals[-1] == pytest.approx(golden["val_loss_after"], rel=val_tol)
    assert all(math.isfinite(v) for v in run.vals)


def peer_arithmetic_differs(golden: dict) -> str | None:
    """Why our run cannot be the golden's bf16-emulation peer bit for bit here (None: it can). Our Muon-family
    Newton-Schulz in bf16 on a CPU without native bf16 is an fp32 GEMM of the bf16 operands rounded to bf16, the
    peer's emulation; the fp32 GEMM's summation order is the CPU kind's (one thread)."""
    if golden["self_drift"]["peers"] != ["bf16"]:
        return "the golden's peer is not a bf16-emulation run"
    if native_bf16(torch.device("cpu")):
        return "this CPU multiplies bf16 natively: our Newton-Schulz runs bf16 GEMMs, not the peer's emulation"
    here, there = torch.backends.cpu.get_cpu_capability(), golden["meta"]["cpu_capability"]
    if here != there:
        return f"fp32 GEMMs sum in another order on this {here} CPU than on the recording {there} CPU"
    return None


def check_equals_the_peer(run: Run, golden: dict):
    """Every parameter's norm after each step and the final val loss bitwise the peer's."""
    peer = golden["steps_emulated_bf16"]
    for k, want in enumerate(peer):
        for ref, norm in want["norms"].items():
            assert run.norms[k][our_name(ref)] == norm, (k, ref)
    assert run.vals[-1] == golden["val_loss_after_emulated_bf16"]
