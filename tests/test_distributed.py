"""Data parallelism on the CPU (gloo, 2 processes): same trajectory as one process, sharded Muon, resume, failures.

The parity runs use the tiny preset with --dtype=fp32 and --reference_world_size=2, so one
process accumulates 2 micro-batches a step and two processes run 1 each, over the same token windows.
What to expect: each rank's micro-batch has the same shape and rows as the one-process micro-batch it
replaces, so the forward/backward are the same computation; scaling a loss by 1/2 is exact, so one process's
g0/2 + g1/2 equals the ranks' (g0 + g1)/2 bit for bit (a sum of two floats commutes); the gradient norm is
formed from the same per-tensor norms in the same order. Training losses, weights and optimizer state are
therefore expected bitwise equal, and are on this machine. The tolerance (1e-6 relative on losses, 1e-6
absolute on weights and state, whose entries are O(0.01..1)) admits only rounding-order effects: the val
loss is a mean of 4 batch losses summed in another order ((l0+l2)/2 + (l1+l3)/2 against l0+l1+l2+l3, 1 ulp),
and a BLAS may batch the bf16 Newton-Schulz matmuls of 1 and 2 matrices differently on other CPUs.

One torchrun launch (this module as the worker, `python -m tests.test_distributed OUT DATA`) runs all three
optimizers and an interrupted-and-resumed Muon run in one process group; the failure tests start two plain
processes with torchrun's environment variables, so nothing but our own timeout and error handling ends them.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIMIZERS = ("adamw", "muon", "normuon")
MAX_STEPS = 4  # the warm-up runs one more step; the lr cools down over steps 3-4, so a stale lr would show
TIMING_KEYS = ("train_time_s", "step_avg_ms", "seconds_to_target")


def _args(optimizer, data_dir, out_dir, *extra):
    return ["--preset=tiny", f"--data_dir={data_dir}", f"--out_dir={out_dir}", "--threads=1", "--dtype=fp32",
            "--reference_world_size=2", f"--max_steps={MAX_STEPS}", "--val_every=2", f"--optimizer={optimizer}",
            f"--run_name={optimizer}", f"--checkpoint_every={MAX_STEPS}", *extra]  # the final state is compared


def _count_newton_schulz(counts: Counter):
    """Replace the registry's eager newton_schulz by a wrapper that counts matrices per shape; returns the undo."""
    from kernels import registry

    eager = registry.get("newton_schulz", "eager")

    def counted(x, *args, **kwargs):
        counts[str(tuple(x.shape[-2:]))] += x.shape[0] if x.ndim == 3 else 1
        return eager(x, *args, **kwargs)

    registry.OPS["newton_schulz"]["eager"] = counted
    return lambda: registry.OPS["newton_schulz"].__setitem__("eager", eager)


class _Interrupt(Exception):
    pass


def _worker(out_dir: str, data_dir: str):
    """Every rank: the three parity runs, then a Muon run stopped after its step-2 checkpoint and resumed."""
    import torch.distributed as dist

    import train
    from speedrun.config import resolve

    counts, report = Counter(), {}
    _count_newton_schulz(counts)
    for optimizer in OPTIMIZERS:
        counts.clear()
        train.Trainer(resolve(_args(optimizer, data_dir, out_dir))).run()
        report[optimizer] = dict(counts)

    args = [*_args("muon", data_dir, out_dir, "--checkpoint_every=2"), "--run_name=resumed"]
    trainer = train.Trainer(resolve(args))

    def stop(module, inputs, output):  # every rank stops at the same point, as a crash-free "kill"
        if module.training and trainer.step == 3:
            raise _Interrupt

    trainer.model.register_forward_hook(stop)
    try:
        trainer.run()
    except _Interrupt:
        report["interrupted_checkpoint_step"] = torch.load(trainer.checkpoint_path, weights_only=False)["step"]
    train.Trainer(resolve([*args, "--resume=True"])).run()
    with open(os.path.join(out_dir, f"report_rank{dist.get_rank()}.json"), "w") as f:
        json.dump(report, f)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(text_shards, tmp_path_factory):
    """Output directory of the 2-process torchrun job and its per-rank reports."""
    out = tmp_path_factory.mktemp("two_ranks")
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "tests.test_distributed", str(out),
                           str(text_shards)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    reports = [json.load(open(out / f"report_rank{r}.json")) for r in range(2)]
    return out, reports


def _log(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in f]


def _checkpoint(run_dir):
    return torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=False)


def _assert_logs_close(got, expected):
    assert [sorted(r) for r in got] == [sorted(r) for r in expected]
    for g, e in zip(got, expected):
        for key in ("train_loss", "val_loss"):
            if key in e:
                assert g[key] == pytest.approx(e[key], rel=1e-6, abs=0), (key, g, e)
        assert {k: v for k, v in g.items() if "loss" not in k} == {k: v for k, v in e.items() if "loss" not in k}


def _assert_states_close(got, expected, what):
    assert got.keys() == expected.keys(), what
    for key in expected:
        a, b = got[key], expected[key]
        if isinstance(b, dict):
            _assert_states_close(a, b, f"{what}.{key}")
        elif torch.is_tensor(b):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=lambda m: f"{what}.{key}: {m}")
        else:
            assert a == b, (f"{what}.{key}", a, b)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_two_ranks_match_one_rank_with_two_micro_batches(two_ranks, text_shards, tmp_path, optimizer):
    import train
    from optim import param_groups

    out, reports = two_ranks
    counts = Counter()
    undo = _count_newton_schulz(counts)
    try:
        train.main(_args(optimizer, text_shards, tmp_path))
    finally:
        undo()
    _assert_logs_close(_log(out / optimizer), _log(tmp_path / optimizer))
    two, one = _checkpoint(out / optimizer), _checkpoint(tmp_path / optimizer)
    _assert_states_close(two["model"], one["model"], "model")
    _assert_states_close(two["optimizer"]["state"], one["optimizer"]["state"], "optimizer")  # gathered shards
    assert two["loader"] == one["loader"]  # the same windows consumed

    if optimizer == "adamw":
        assert not counts and not reports[0]["adamw"] and not reports[1]["adamw"]
        return
    # each hidden matrix orthogonalized exactly once per step (and the warm-up step) across the ranks, and
    # the work split evenly (tiny: every shape has an even number of matrices)
    model = train.GPT(train.resolve(["--preset=tiny"]).model)
    matrices = Counter(str(tuple(p.shape)) for p in param_groups(model)["hidden"])
    expected = {shape: n * (MAX_STEPS + 1) for shape, n in matrices.items()}
    assert dict(counts) == expected
    for report in reports:
        assert report[optimizer] == {shape: n // 2 for shape, n in expected.items()}


def test_two_rank_checkpoint_resumes_exactly(two_ranks):
    out, reports = two_ranks
    assert reports[0]["interrupted_checkpoint_step"] == 2
    assert _log(out / "resumed") == _log(out / "muon")  # bitwise: same world size, same arithmetic
    resumed, uninterrupted = _checkpoint(out / "resumed"), _checkpoint(out / "muon")
    for key, value in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    assert resumed["optimizer"]["state"].keys() == uninterrupted["optimizer"]["state"].keys()


def test_accumulation_keeps_the_reference_global_batch():
    from optim.distributed import accumulation_steps

    assert [accumulation_steps(1, 8, w, 32) for w in (1, 2, 4, 8)] == [8, 4, 2, 1]
    assert accumulation_steps(2, 4, 8, 32) == 1
    assert accumulation_steps(3, 0, 5, 32) == 3  # 0: the batch grows with the world size
    with pytest.raises(ValueError, match="16 ranks cannot share.*--reference_world_size=16 --grad_accum=1 "
                                         "--batch_size=16"):
        accumulation_steps(1, 8, 16, 32)
    with pytest.raises(ValueError, match="3 ranks cannot share evenly: run on a number of ranks that divides 8$"):
        accumulation_steps(1, 8, 3, 32)


def test_every_world_size_reads_the_same_micro_batches_across_a_shard_boundary(tmp_path):
    """W ranks × 4/W micro-batches see the sequences of 1 rank × 4 micro-batches, step by step, also where a
    shard's tail holds one micro-batch but not a step (reading micro-batch by micro-batch would differ there)."""
    import train
    from data.loader import TokenLoader
    from data.shards import write_shard

    B, T, per_step = 2, 8, 4
    files = [tmp_path / "t_train_000000.bin", tmp_path / "t_train_000001.bin"]
    write_shard(files[0], np.arange(0, 3 * per_step * B * T + B * T + 5, dtype=np.uint16))  # tail: 1 micro-batch
    write_shard(files[1], np.arange(1000, 1000 + 2 * per_step * B * T + 1, dtype=np.uint16))

    def steps(world_size, n_steps=5):
        accum = per_step // world_size
        ranks = [SimpleNamespace(cfg=SimpleNamespace(batch_size=B), loader=TokenLoader(
            files, batch_size=B * accum, seq_len=T, rank=r, world_size=world_size)) for r in range(world_size)]
        out = []
        for _ in range(n_steps):  # the step's micro-batches in (rank, micro) order
            out.append([torch.stack(xy) for r in ranks for xy in train.Trainer.micro_batches(r)])
        return out

    one = steps(1)
    assert one[3][0][0, 0, 0] == 1000  # step 3 starts the second shard: the 1-micro-batch tail was skipped
    for world_size in (2, 4):
        for step, (a, b) in enumerate(zip(steps(world_size), one)):
            assert all(torch.equal(x, y) for x, y in zip(a, b)), (world_size, step)


def test_muon_matrices_are_shared_out_once_and_evenly():
    import train
    from optim import build_optimizer
    from optim.distributed import DataParallel

    cfg = train.resolve(["--preset=tiny", "--optimizer=muon", "--model.n_layer=5"])  # 30 matrices, 3 shapes
    owners = Counter()
    for rank in range(4):
        model = train.GPT(cfg.model)
        parallel = DataParallel(model, build_optimizer(cfg.optim, model), world_size=4, rank=rank)
        names = {id(p): n for n, p in model.named_parameters()}
        owners.update(names[i] for i in parallel.owned)
        shares = len(parallel.owned)
        assert shares in (7, 8), shares  # 30 over 4 ranks
    hidden = [n for n, p in train.GPT(cfg.model).named_parameters() if n.startswith("blocks.") and p.ndim == 2]
    assert sorted(owners) == sorted(hidden) and set(owners.values()) == {1}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_plain_ranks(text_shards, tmp_path, *extra) -> list[subprocess.Popen]:
    """Ranks 0 and 1 of a tiny 400-step run "r" in tmp_path, started as torchrun would start them (its environment,
    no torchrun); each rank's stderr goes to tmp_path/rank<N>.err."""
    port, procs = _free_port(), []
    for rank in range(2):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                   LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
        stderr = open(tmp_path / f"rank{rank}.err", "w")
        procs.append(subprocess.Popen(
            [sys.executable, "train.py", "--preset=tiny", f"--data_dir={text_shards}", f"--out_dir={tmp_path}",
             "--threads=1", "--max_steps=400", "--val_every=100000", "--run_name=r", *extra],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr))
    return procs


@pytest.mark.parametrize("signum, victim, timeout_s", [(signal.SIGKILL, 1, 60), (signal.SIGSTOP, 0, 10)],
                         ids=["rank-killed", "rank-hangs"])
def test_a_dead_or_hung_rank_stops_the_other_with_a_clear_error(text_shards, tmp_path, signum, victim, timeout_s):
    """Two plain processes (torchrun's environment, no torchrun to clean up): one is killed (its sockets close:
    the other must fail at its next collective, well inside the timeout) or stopped (it hangs: the other must
    fail once the timeout has passed)."""
    procs = _two_plain_ranks(text_shards, tmp_path, f"--dist_timeout_s={timeout_s}")
    survivor = procs[1 - victim]
    try:
        log, deadline = tmp_path / "r" / "log.jsonl", time.time() + 120
        while not (log.exists() and "train_loss" in log.read_text()):  # mid-run: a training step is done
            assert time.time() < deadline and survivor.poll() is None, "the run did not start"
            time.sleep(0.05)
        procs[victim].send_signal(signum)
        start = time.monotonic()
        code = survivor.wait(timeout=timeout_s + 60)
        elapsed = time.monotonic() - start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    error = (tmp_path / f"rank{1 - victim}.err").read_text()
    assert code == 1, error[-3000:]
    assert f"PeerError: rank {1 - victim} of 2:" in error and "another rank died, was killed or stopped" in error
    # The timing is the behaviour under test; the backend's own wording varies with the gloo build ("Connection
    # closed by peer" / "Connection reset by peer"; "Timed out waiting ..." / "Application timeout caused pair
    # closure"), so only its gist is checked.
    if signum == signal.SIGKILL:
        assert elapsed < timeout_s / 2 and re.search(r"[Cc]onnection|[Cc]losed|[Rr]eset", error), error[-3000:]
    else:
        assert timeout_s - 1 < elapsed < timeout_s + 30 and re.search(r"[Tt]ime ?out|[Tt]imed out", error), \
            error[-3000:]


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_logged_step(text_shards, tmp_path):
    """SIGTERM to rank 1 only: the ranks agree on the stop at the next log boundary (a multiple of --log_every),
    write one checkpoint there and both exit with status 143."""
    procs = _two_plain_ranks(text_shards, tmp_path, "--log_every=4")
    try:
        log, deadline = tmp_path / "r" / "log.jsonl", time.time() + 120
        while not (log.exists() and "train_loss" in log.read_text()):
            assert time.time() < deadline and all(p.poll() is None for p in procs), "the run did not start"
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=120) for p in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    errors = [(tmp_path / f"rank{rank}.err").read_text() for rank in range(2)]
    assert codes == [143, 143], errors
    step = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)["step"]
    assert step % 4 == 0 and 0 < step < 400
    for error in errors:
        assert error.splitlines()[-1].startswith(f"interrupted at step {step}; resume with: torchrun "), error[-2000:]


if __name__ == "__main__":  # a rank of the two_ranks fixture's torchrun job
    _worker(*sys.argv[1:3])
