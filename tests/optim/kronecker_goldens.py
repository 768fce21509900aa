"""Our trainer against the golden of a track-3 result (tests/golden/<folder>.json, written by scripts/track3_golden.py
from the result's own script), with tolerances per parameter class from the reference's measured self-drift: the
method of tests/test_track3_golden.py for the Kronecker-factored results (Shampoo #21, SOAPH #27).

A golden holds the reference's run at 2 layers, d=256, 2 rows of 64 tokens, vocab 50304, fp32, one thread: every
parameter's init fingerprint, the loss and every gradient at a perturbed init, N steps (loss before each, every
parameter's norm after each), the val loss before and after, and the same run twice more as peers (2 threads; the
CPU's SIMD kernels off), whose distance to it is the reference's self-drift.

Tolerances: the parameters fall in classes (drift_class) whose drifts differ by orders of magnitude; a class's
tolerance at step k is FACTOR × the largest relative difference of any of its parameters to any peer over the
steps up to k (a difference does not shrink back by itself), at least FLOOR, the 1e-5 relative agreement of the
forward and backward (where the peers are bitwise equal, e.g. before the first reduction-order-sensitive op). Where
two peers sample the reference's spread too thinly, more runs of the same script (tests/golden/peers/<folder>.*.json,
the harness under other settings) join them.
"""

import json
import math
from pathlib import Path

import pytest
import torch

import train

# the golden method shared with the other recipes (loading, the shrunk config, the perturbed-gradient check)
from tests.optim.track3_goldens import (  # noqa: F401 (re-exported for the Kronecker golden tests)
    FLOOR,
    GOLDENS,
    check_perturbed,
    config,
    fingerprint,
    load,
    our_name,
)

FACTOR = 4.0  # × the reference's measured self-drift
PEERS = ("steps_threads2", "steps_nosimd")
CLASSES = ("loss", "outer", "matrix", "proj_matrix", "block_1d")


def load_peers(folder: str) -> tuple[dict, ...]:
    """The further runs of a golden's script in tests/golden/peers/<folder>.*.json."""
    return tuple(json.loads(p.read_text()) for p in sorted((GOLDENS / "peers").glob(f"{folder}.*.json")))


def drift_class(ref: str) -> str:
    """outer: embedding, head, outer gains | matrix: q, k, v, mlp.fc weights | proj_matrix: attention and MLP output
    projection weights (zero at the baseline's init) | block_1d: the blocks' biases and gains."""
    if not ref.startswith("blocks."):
        return "outer"
    if not ref.endswith("weight"):
        return "block_1d"
    return "proj_matrix" if ref.endswith("proj.weight") else "matrix"


def check_init(golden: dict, model: torch.nn.Module):
    """Every parameter's init fingerprint: entries equal, float64 norms and sums within 1e-12 (bitwise the same
    draws)."""
    params = dict(model.named_parameters())
    assert sorted(our_name(n) for n in golden["init"]) == sorted(params)
    for ref, want in golden["init"].items():
        got = fingerprint(params[our_name(ref)])
        assert got["first"] == want["first"] and got["last"] == want["last"], ref
        assert got["norm"] == pytest.approx(want["norm"], rel=1e-12, abs=0), ref
        assert got["sum"] == pytest.approx(want["sum"], rel=1e-12, abs=1e-12 * max(want["norm"], 1.0)), ref


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b)) if a != b else 0.0


def peer_runs(golden: dict, extra: tuple[dict, ...] = ()) -> list[tuple[list, float]]:
    """(steps, final val loss) of every peer: the golden's own (2 threads, no SIMD) and every run of each `extra`
    file (more runs of the same script, e.g. under another BLAS code path: tests/golden/peers/)."""
    runs = [(golden[p], golden["val_loss_after" + p.removeprefix("steps")]) for p in PEERS]
    for other in extra:
        assert other["init"] == golden["init"] and other["meta"]["script_sha256"] == golden["meta"]["script_sha256"]
        assert other["meta"]["rewrites"] == golden["meta"]["rewrites"]  # the same script, constants and size
        runs += [(other[key], other["val_loss_after" + key.removeprefix("steps")]) for key in other
                 if key.startswith("steps") and isinstance(other[key], list)]
    return runs


def drift(golden: dict, extra: tuple[dict, ...] = ()) -> tuple[list[dict], float]:
    """(per step {class (and "loss"): the reference's self-drift}, the final val loss's): the largest relative
    difference to any peer run over that class's parameters, as a running maximum over the steps."""
    out, running = [], dict.fromkeys(CLASSES, 0.0)
    runs = peer_runs(golden, extra)
    for k, want in enumerate(golden["steps"]):
        for steps, _ in runs:
            other = steps[k]
            running["loss"] = max(running["loss"], _rel(other["loss"], want["loss"]))
            for ref, norm in want["norms"].items():
                cls = drift_class(ref)
                running[cls] = max(running[cls], _rel(other["norms"][ref], norm))
        out.append(dict(running))
    return out, max(_rel(val, golden["val_loss_after"]) for _, val in runs)


def tolerances(golden: dict, extra: tuple[dict, ...] = ()) -> tuple[list[dict], float]:
    """(per step {class: relative tolerance}, the final val loss's): FACTOR × drift(), at least FLOOR."""
    per_step, val = drift(golden, extra)
    return ([{cls: max(FLOOR, FACTOR * d) for cls, d in step.items()} for step in per_step],
            max(FLOOR, FACTOR * val))


class Run:
    """A trainer run with what the golden records: the loss per token before each step, every parameter's norm after
    each step, the val losses, and each role's lr at each step. `init(model)` draws the init."""

    def __init__(self, cfg, init):
        self.trainer = trainer = train.Trainer(cfg)
        init(trainer.model)
        self.norms, self.lrs = [], []
        step = trainer.parallel.step

        def step_and_record():
            self.lrs.append({g["role"]: g["lr"] for g in trainer.optimizer.param_groups})
            step()
            self.norms.append({n: p.detach().double().norm().item() for n, p in trainer.model.named_parameters()})

        trainer.parallel.step = step_and_record

    def run(self):
        summary = self.trainer.run()
        log = [json.loads(line) for line in open(Path(summary["run_dir"]) / "log.jsonl")]
        self.losses = [r["train_loss"] for r in log if "train_loss" in r]
        self.vals = [r["val_loss"] for r in log if "val_loss" in r]
        self.norms, self.lrs = self.norms[1:], self.lrs[1:]  # the warm-up step (run, then undone) comes first
        return self


def distances(losses, norms, val_after, golden: dict, extra: tuple[dict, ...] = ()) -> dict:
    """How far a trajectory is from the golden's, per class: the largest ratio of relative difference to tolerance
    (<= 1 passes). losses[k] per token before step k, norms[k] {our name: norm} after step k."""
    tokens = golden["meta"]["shape"]["rows"] * golden["meta"]["shape"]["seq"]
    per_step, val_tol = tolerances(golden, extra)
    out = dict.fromkeys(CLASSES, 0.0)
    out["val"] = _rel(val_after, golden["val_loss_after"]) / val_tol
    for k, want in enumerate(golden["steps"]):
        out["loss"] = max(out["loss"], _rel(losses[k], want["loss"] / tokens) / per_step[k]["loss"])
        for ref, norm in want["norms"].items():
            cls = drift_class(ref)
            out[cls] = max(out[cls], _rel(norms[k][our_name(ref)], norm) / per_step[k][cls])
    return out


def check_trajectory(losses, norms, val_after, golden: dict, extra: tuple[dict, ...] = ()):
    """Every figure within its class's tolerance at its step (tolerances())."""
    assert len(losses) == len(norms) == len(golden["steps"])
    assert all(math.isfinite(v) for v in losses) and math.isfinite(val_after)
    far = {cls: ratio for cls, ratio in distances(losses, norms, val_after, golden, extra).items() if ratio > 1}
    assert not far, f"beyond the tolerance (ratio of relative difference to tolerance): {far}"


def peer_trajectories(golden: dict, extra: tuple[dict, ...] = ()):
    """Every peer run's losses per token, norms under our names and final val loss, in check_trajectory's form."""
    tokens = golden["meta"]["shape"]["rows"] * golden["meta"]["shape"]["seq"]
    return [([s["loss"] / tokens for s in steps], [{our_name(r): v for r, v in s["norms"].items()} for s in steps],
             val) for steps, val in peer_runs(golden, extra)]


def check_lrs(run: Run, golden: dict, roles: dict):
    """Each group's lr at each step as the reference set it (1e-12); `roles`: the golden's "Optimizer#i.groupj" ->
    our role."""
    for k, want in enumerate(golden["steps"]):
        for key, lr in want["hparams"].items():
            group, name = key.rsplit(".", 1)
            if name == "lr":
                assert run.lrs[k][roles[group]] == pytest.approx(lr, rel=1e-12, abs=1e-15), (k, key)


def recording_arithmetic_differs(golden: dict) -> str | None:
    """Why this CPU does not compute as the golden's recording did (None: it does): one thread of the same SIMD
    level (torch's kernels and MKL's GEMMs and eigendecompositions take other code paths on other levels)."""
    here, there = torch.backends.cpu.get_cpu_capability(), golden["meta"]["cpu_capability"]
    if here != there:
        return f"fp32 kernels round differently on this {here} CPU than on the recording {there} CPU"
    return None


def check_bitwise(run: Run, golden: dict):
    """Every parameter's norm after every step and the final val loss equal to the golden's bit for bit."""
    for k, want in enumerate(golden["steps"]):
        for ref, norm in want["norms"].items():
            assert run.norms[k][our_name(ref)] == norm, (k, ref)
    assert run.vals[-1] == golden["val_loss_after"]
