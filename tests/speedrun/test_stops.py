"""Stops that never lose a run: `python train.py` processes sent SIGINT 2 or 3 times, 0.05, 0.1 and 0.3 s apart.

Two signals: the second is held, the run stops at its next logged step with a checkpoint (also without
--checkpoint_every), exit status 130. Three: the third aborts at once wherever the run is (inside a checkpoint write
too), or, if the stop had already finished, it ends as with two; either way the checkpoint left is whole and the
last good one. Each stop is resumed by the next process of the chain; the last resume runs to the end, and its log
is the uninterrupted run's, bit for bit.
"""

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

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMING_KEYS = ("train_time_s", "step_avg_ms", "seconds_to_target")
GAPS_S = (0.05, 0.1, 0.3)


def _common(data):
    return ["--preset=tiny", f"--data_dir={data}", "--threads=1", "--max_steps=24", "--val_every=4",
            "--optim.lr=0.01", "--run_name=r"]


def _log(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in f]


@pytest.fixture(scope="module")
def reference(text_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    summary = train.main([*_common(text_shards), f"--out_dir={out}"])
    return summary, _log(out / "r")


def _train_records_at_or_past(log, step, since_ns: int) -> bool:
    """Whether this process has logged a train record at or past `step`: the log was written since it started
    (a resumed run truncates it to its checkpoint first; the lines an aborted run left past it are not this one's)."""
    if not log.exists() or log.stat().st_mtime_ns <= since_ns:
        return False
    lines = [line for line in log.read_text().splitlines() if line.endswith("}")]
    return any("train_loss" in r and r["step"] >= step for r in map(json.loads, lines))


def _stopped(argv, run_dir, *, signals: int, gap_s: float, after_step: int):
    """Run `python train.py argv`, send SIGINT `signals` times gap_s apart once it has logged step after_step;
    returns (exit status, last stderr line)."""
    started = time.time_ns()
    proc = subprocess.Popen([sys.executable, "train.py", *argv], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while not _train_records_at_or_past(run_dir / "log.jsonl", after_step, started):
            assert proc.poll() is None and time.time() < deadline, "the run ended before it could be signalled"
            time.sleep(0.005)
        for i in range(signals):
            if i:
                time.sleep(gap_s)
            proc.send_signal(signal.SIGINT)
        stderr = proc.communicate(timeout=180)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stderr.splitlines()[-1]


def _checkpoint_step(run_dir):
    names = sorted(os.listdir(run_dir))
    assert names == ["checkpoint.pt", "config.json", "log.jsonl"], names  # no temporary file, lock released
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"]


@pytest.mark.parametrize("signals, checkpoint_every", [(2, 0), (3, 4)], ids=["two-signals", "three-signals"])
def test_repeated_signals_stop_with_a_checkpoint_and_resume_bitwise(text_shards, tmp_path, reference, signals,
                                                                    checkpoint_every):
    argv = [*_common(text_shards), f"--out_dir={tmp_path}", f"--checkpoint_every={checkpoint_every}"]
    run_dir, resume = tmp_path / "r", []
    step = checkpoint_every  # with periodic checkpoints, signal only once there is one to fall back on
    for gap_s in GAPS_S:
        status, last = _stopped([*argv, *resume], run_dir, signals=signals, gap_s=gap_s, after_step=step + 2)
        assert status == 130, last
        step = _checkpoint_step(run_dir)
        if last.startswith("interrupted at step"):  # the stop's own checkpoint: always, with two signals
            assert last.startswith(f"interrupted at step {step}; resume with: ")
        else:  # aborted by the third: the last good checkpoint stays, whole
            assert signals == 3 and last.startswith("aborted by repeated SIGINT, without a checkpoint for this stop; "
                                                    f"the last checkpoint, of step {step}, is intact: resume with: ")
        assert shlex.split(last.split("resume with: ", 1)[1])[2:] == [*argv, "--resume=True"]
        resume = ["--resume=True"]
    summary = train.main([*argv, "--resume=True"])
    expected, log = reference
    assert summary["steps"] == 24 and summary["final_val_loss"] == expected["final_val_loss"]
    assert _log(run_dir) == log
