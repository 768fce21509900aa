"""Reliability of a run: exact kill-and-resume, atomic checkpoint writes, and the NaN/inf guard."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch

import train
from speedrun import checkpoint
from speedrun.config import resolve

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMING_KEYS = ("train_time_s", "step_avg_ms", "seconds_to_target")


def _log_without_timings(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in f]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_killed_and_resumed_run_matches_uninterrupted_run(text_shards, tmp_path, optimizer):
    common = ["--preset=tiny", f"--data_dir={text_shards}", "--threads=1", "--max_steps=40", "--val_every=5",
              "--checkpoint_every=3", f"--optimizer={optimizer}", "--optim.lr=0.01", "--run_name=r"]
    reference = train.main([*common, f"--out_dir={tmp_path / 'ref'}"])

    out = tmp_path / "killed"
    log = out / "r" / "log.jsonl"
    proc = subprocess.Popen([sys.executable, "train.py", *common, f"--out_dir={out}"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # kill once a train line past a checkpoint is logged
        if log.exists() and any(json.loads(line).get("step", 0) >= 8 and "train_loss" in json.loads(line)
                                for line in log.read_text().splitlines() if line.endswith("}")):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run finished (or failed) before it could be killed"
    killed_at = torch.load(out / "r" / "checkpoint.pt", weights_only=False)["step"]
    assert 6 <= killed_at < 40

    resumed = train.main([*common, f"--out_dir={out}", "--resume=True"])
    assert resumed["steps"] == reference["steps"] == 40
    assert resumed["final_val_loss"] == reference["final_val_loss"]  # bitwise: same float
    assert _log_without_timings(out / "r") == _log_without_timings(tmp_path / "ref" / "r")


def _wait_for_train_step(proc, log, step: int, timeout_s: float = 120):
    """Wait until the run logged a train record at or past `step`; False if it ended first."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and any(json.loads(line).get("step", 0) >= step and "train_loss" in json.loads(line)
                                for line in log.read_text().splitlines() if line.endswith("}")):
            return True
        time.sleep(0.005)
    return False


def test_sigterm_checkpoints_and_the_printed_command_resumes_the_same_trajectory(text_shards, tmp_path):
    """SIGTERM (a scheduler's preemption) ends the run after its current step with a checkpoint, one line naming
    the step and the command that resumes it, and exit status 143; that command continues bit for bit. SIGINT
    (Ctrl-C) does the same with status 130."""
    common = ["--preset=tiny", f"--data_dir={text_shards}", "--threads=1", "--max_steps=24", "--val_every=5",
              "--optim.lr=0.01", "--run_name=r"]
    reference = train.main([*common, f"--out_dir={tmp_path / 'ref'}"])
    for signum, status in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        out = tmp_path / signum.name
        argv = [*common, f"--out_dir={out}"]
        proc = subprocess.Popen([sys.executable, "train.py", *argv], cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        assert _wait_for_train_step(proc, out / "r" / "log.jsonl", 3), "the run ended before it could be signalled"
        proc.send_signal(signum)
        stderr = proc.communicate(timeout=120)[1]
        assert proc.returncode == status, stderr
        last = stderr.splitlines()[-1]
        step = torch.load(out / "r" / "checkpoint.pt", weights_only=False)["step"]
        assert 3 <= step < 24 and last.startswith(f"interrupted at step {step}; resume with: "), stderr
        command = shlex.split(last.split("resume with: ", 1)[1])
        assert command == [sys.executable, "train.py", *argv, "--resume=True"]
        assert not (out / "r" / "lock").exists() and not (out / "r" / "summary.json").exists()
        if signum == signal.SIGTERM:
            resumed = train.main(command[2:])
            assert resumed["steps"] == 24 and resumed["final_val_loss"] == reference["final_val_loss"]
            assert _log_without_timings(out / "r") == _log_without_timings(tmp_path / "ref" / "r")
            assert not (out / "r" / "checkpoint.pt").exists()  # finished without --checkpoint_every: none kept


def test_resume_may_change_what_does_not_shape_the_trajectory(text_shards, tmp_path):
    args = ["--preset=tiny", f"--data_dir={text_shards}", f"--out_dir={tmp_path}", "--max_steps=2", "--run_name=r",
            "--threads=1"]
    train.main([*args, "--checkpoint_every=1"])
    resumed = train.main([*args, "--resume=True", "--max_steps=2", "--val_every=1", "--log_every=2",
                          "--threads=2", "--memory_check=False"])
    assert resumed["steps"] == 2


def test_resume_refuses_a_different_config(text_shards, tmp_path):
    args = ["--preset=tiny", f"--data_dir={text_shards}", f"--out_dir={tmp_path}", "--max_steps=2", "--run_name=r",
            "--checkpoint_every=2"]
    train.main(args)
    with pytest.raises(ValueError, match="different config.*--optim.lr: 0.003 in the checkpoint, 0.5 now"):
        train.main([*args, "--resume=True", "--optim.lr=0.5"])
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train.main([*args, "--resume=True", "--run_name=other"])


def test_a_kill_during_save_leaves_the_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "ckpt.pt"
    script = f"""
import os, signal, torch
from speedrun import checkpoint
checkpoint.save_atomic({{"version": 1, "w": torch.arange(5)}}, {str(path)!r})
def dying_save(obj, f, *args, **kwargs):
    f.write(b"half a checkpoint" * 4096)
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
checkpoint.save_atomic({{"version": 2}}, {str(path)!r})
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    state = checkpoint.load(str(path))
    assert state["version"] == 1 and torch.equal(state["w"], torch.arange(5))


def test_a_damaged_checkpoint_is_named(tmp_path):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="could not be read"):
        checkpoint.load(str(path))


def _trainer(text_shards, tmp_path, *extra):
    cfg = resolve(["--preset=tiny", f"--data_dir={text_shards}", f"--out_dir={tmp_path}", "--max_steps=6",
                   "--checkpoint_every=1", "--val_every=100", *extra])
    return train.Trainer(cfg)


def test_nan_gradient_stops_with_step_and_parameter_and_keeps_last_good_checkpoint(text_shards, tmp_path):
    trainer = _trainer(text_shards, tmp_path)
    name = "blocks.1.mlp.c_fc.weight"
    param = dict(trainer.model.named_parameters())[name]

    def poison(grad):  # trainer.step is 0 during the warm-up step, then counts the timed steps
        return grad * float("nan") if trainer.step == 3 else grad

    param.register_hook(poison)
    with pytest.raises(FloatingPointError, match=f"step 3: gradient norm is nan.*{name}"):
        trainer.run()
    good = checkpoint.load(trainer.checkpoint_path)
    assert good["step"] == 3
    assert all(torch.isfinite(v).all() for v in good["model"].values())


def test_nan_loss_stops_with_the_step(text_shards, tmp_path):
    trainer = _trainer(text_shards, tmp_path)

    def poison(module, inputs, output):
        return output * float("nan") if module.training and trainer.step == 2 else output

    trainer.model.blocks[0].register_forward_hook(poison)
    with pytest.raises(FloatingPointError, match="step 2: training loss is nan; first parameter .*: "):
        trainer.run()


class _Stop(Exception):
    pass


def test_track3_run_stopped_and_resumed_matches_uninterrupted_run(text_shards, tmp_path):
    """The track3 preset (summed loss, sorted shards with the loader's margin, its recipe's Muon) at a tiny size:
    a run stopped after its step-4 checkpoint and resumed reproduces the uninterrupted run's log bit for bit."""
    common = ["--preset=track3", f"--data_dir={text_shards}", "--train_pattern=*_train_*.bin",
              "--val_pattern=*_val_*.bin", "--model.n_layer=1", "--model.n_embd=128", "--model.n_head=1",
              "--batch_size=1", "--seq_len=32", "--reference_world_size=2", "--max_steps=8", "--val_tokens=256",
              "--val_every=3", "--checkpoint_every=2", "--compile=False", "--dtype=fp32", "--threads=1",
              "--run_name=r"]
    reference = train.main([*common, f"--out_dir={tmp_path / 'ref'}"])
    args = [*common, f"--out_dir={tmp_path / 'stopped'}"]
    trainer = train.Trainer(resolve(args))

    def stop(module, inputs, output):
        if module.training and trainer.step == 5:
            raise _Stop

    trainer.model.register_forward_hook(stop)
    with pytest.raises(_Stop):
        trainer.run()
    assert checkpoint.load(trainer.checkpoint_path)["step"] == 4
    resumed = train.main([*args, "--resume=True"])
    assert resumed["final_val_loss"] == reference["final_val_loss"] and resumed["steps"] == 8
    assert _log_without_timings(tmp_path / "stopped" / "r") == _log_without_timings(tmp_path / "ref" / "r")


# --- the guard between log steps: found at a boundary, replayed from the last good state ----------------------


def _poison_grad(trainer, name, step, times=None):
    """Multiply `name`'s gradient by NaN whenever trainer.step == step (at most `times` times)."""
    fired = []

    def poison(grad):
        if trainer.step == step and (times is None or len(fired) < times):
            fired.append(step)
            return grad * float("nan")
        return grad

    dict(trainer.model.named_parameters())[name].register_hook(poison)
    return fired


def test_nan_between_log_steps_is_replayed_from_the_initial_state(text_shards, tmp_path):
    """No checkpoint yet: the bad step 2 is noticed at the log step 4, the run restarts from the initial state kept
    in host memory, replays steps 0-2 with a check after each, and stops with today's message."""
    trainer = _trainer(text_shards, tmp_path, "--log_every=4", "--checkpoint_every=0")
    fired = _poison_grad(trainer, "blocks.0.attn.c_q.weight", step=2)
    with pytest.raises(FloatingPointError, match="step 2: gradient norm is nan.*blocks.0.attn.c_q.weight"):
        trainer.run()
    assert fired == [2, 2]  # the run, then the replay
    assert not os.path.exists(trainer.checkpoint_path)
    log = [json.loads(line) for line in open(os.path.join(trainer.run_dir, "log.jsonl"))]
    assert [r["step"] for r in log] == [0] and "val_loss" in log[0]  # no record of the bad interval


def test_nan_between_log_steps_is_replayed_from_the_last_checkpoint_and_never_checkpointed(text_shards, tmp_path):
    """Checkpoints at 3 and 6, log every 100: the bad step 4 is noticed at step 6, before its checkpoint is
    written; the replay starts from the step-3 checkpoint, which stays on disk."""
    trainer = _trainer(text_shards, tmp_path, "--log_every=100", "--checkpoint_every=3")
    fired = _poison_grad(trainer, "blocks.1.mlp.c_proj.weight", step=4)
    with pytest.raises(FloatingPointError, match="step 4: gradient norm is nan.*blocks.1.mlp.c_proj.weight"):
        trainer.run()
    assert fired == [4, 4]
    good = checkpoint.load(trainer.checkpoint_path)
    assert good["step"] == 3 and all(torch.isfinite(v).all() for v in good["model"].values())


def test_a_non_finite_step_the_replay_does_not_reproduce_is_still_reported(text_shards, tmp_path):
    """Non-deterministic arithmetic (simulated: the poison fires once): the replay finds every step finite, and
    the run stops with the step and the value recorded on the device."""
    trainer = _trainer(text_shards, tmp_path, "--log_every=100", "--checkpoint_every=3")
    _poison_grad(trainer, "blocks.1.mlp.c_proj.weight", step=4, times=1)
    with pytest.raises(FloatingPointError, match="step 4: gradient norm is nan; replayed from step 3, the step "
                                                 "was finite .*not deterministic"):
        trainer.run()


def test_non_finite_weights_are_never_checkpointed(text_shards, tmp_path):
    """Weights made non-finite by an update whose loss and gradients were finite (here: an overwritten weight)
    are caught before the checkpoint that would hold them."""
    trainer = _trainer(text_shards, tmp_path, "--log_every=100", "--checkpoint_every=3")
    step = trainer.parallel.step

    def corrupting_step():
        step()
        if trainer.step == 5:  # the last step before the step-6 checkpoint: no later loss shows it
            trainer.model.blocks[1].mlp.c_fc.weight.data[0, 0] = float("inf")

    trainer.parallel.step = corrupting_step
    with pytest.raises(FloatingPointError, match="blocks.1.mlp.c_fc.weight is not finite after 6 steps.*no checkpoint"):
        trainer.run()
    assert checkpoint.load(trainer.checkpoint_path)["step"] == 3


# --- the Checkpointer: save, read, check against the run's config, the rollback point ---------------------------


def test_the_checkpointer_keeps_the_rollback_point(tmp_path):
    points = checkpoint.Checkpointer(str(tmp_path))
    assert points.rollback_state() is None  # nothing yet: a replay has nowhere to start
    initial = {"model": checkpoint.host_copy({"w": torch.ones(2, requires_grad=True)})}
    assert not initial["model"]["w"].requires_grad
    points.keep_initial(initial)
    assert points.rollback_state() is initial and points.step is None
    points.save(3, None)  # another rank writes: the rollback point moves, nothing is written here
    assert points.step == 3 and points.initial is None and not os.path.exists(points.path)
    points.save(4, {"step": 4, "config": {"lr": 1.0, "resume": False}})
    assert points.rollback_state()["step"] == 4 and points.read()["step"] == 4


def test_the_checkpointer_checks_the_config(tmp_path):
    points = checkpoint.Checkpointer(str(tmp_path))
    state = {"config": {"lr": 1.0, "log_every": 1, "optim": {"beta": 0.9}}}
    assert points.check(state, {"lr": 1.0, "log_every": 5, "optim": {"beta": 0.9}}, {"log_every"}) is state
    expected = (r"change the trajectory: --lr: 1.0 in the checkpoint, 2.0 now; "
                r"--optim.beta: 0.9 in the checkpoint, 0.8 now\.")
    with pytest.raises(checkpoint.CheckpointMismatch, match=expected):
        points.check(state, {"lr": 2.0, "log_every": 1, "optim": {"beta": 0.8}}, {"log_every"})
