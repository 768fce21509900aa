"""The run directory: an earlier run is never overwritten unasked, --overwrite replaces it only once the new run
writes, a failed start leaves no empty folder, and the checkpoint rule (a finished run keeps its checkpoint only
with --checkpoint_every)."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

import train
from speedrun import cli, rundir
from speedrun.config import resolve


def _args(data, out, *extra):
    return ["--preset=tiny", f"--data_dir={data}", f"--out_dir={out}", "--run_name=r", "--threads=1",
            "--max_steps=4", *extra]


def _files(run_dir) -> dict:
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(Path(run_dir).iterdir())}


def test_a_finished_run_is_never_overwritten_unasked(text_shards, tmp_path, capsys):
    train.main(_args(text_shards, tmp_path, "--max_steps=6"))
    run_dir = tmp_path / "r"
    before = _files(run_dir)
    assert sorted(before) == ["config.json", "log.jsonl", "summary.json"]  # no checkpoint: --checkpoint_every=0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli.run_main(train.main, _args(text_shards, tmp_path))
    lines = capsys.readouterr().err.splitlines()
    assert exc.value.code == 1 and lines == [
        f"error: {run_dir} already holds a finished run; it cannot be continued with --resume=True (no checkpoint), "
        "start another run beside it with a new --run_name, or replace it with --overwrite"]
    assert _files(run_dir) == before  # byte-identical
    beside = train.main([*_args(text_shards, tmp_path), "--run_name=r2"])
    assert beside["steps"] == 4 and _files(run_dir) == before
    replaced = train.main([*_args(text_shards, tmp_path), "--overwrite"])
    assert replaced["steps"] == 4 and json.loads((run_dir / "summary.json").read_text())["steps"] == 4
    assert sum(1 for _ in open(run_dir / "log.jsonl")) == 4 + 3  # the new run's records only (val at 0, 2, 4)
    assert sorted(_files(run_dir)) == ["config.json", "log.jsonl", "summary.json"]


class _Broken(Exception):
    pass


def _break_training(trainer):
    def fail(module, inputs, output):
        if module.training:
            raise _Broken

    trainer.model.register_forward_hook(fail)


def test_overwrite_keeps_the_earlier_run_until_the_new_one_writes(text_shards, tmp_path):
    """--overwrite of a run whose replacement fails in its warm-up (before it writes): the earlier run is whole."""
    train.main(_args(text_shards, tmp_path, "--checkpoint_every=2"))
    before = _files(tmp_path / "r")
    assert sorted(before) == ["checkpoint.pt", "config.json", "log.jsonl", "summary.json"]
    trainer = train.Trainer(resolve(_args(text_shards, tmp_path)), overwrite=True)
    _break_training(trainer)
    with pytest.raises(_Broken):
        trainer.run()
    assert _files(tmp_path / "r") == before


def test_a_run_that_fails_before_writing_leaves_no_folder(text_shards, tmp_path):
    out = tmp_path / "new" / "runs"
    trainer = train.Trainer(resolve(_args(text_shards, out)))
    _break_training(trainer)
    with pytest.raises(_Broken):
        trainer.run()
    assert list(tmp_path.iterdir()) == []  # the run folder and the out_dir it created are gone


def test_the_checkpoint_rule(text_shards, tmp_path):
    """With --checkpoint_every the finished run keeps its last checkpoint (at the last step, after the last
    validation); without, a checkpoint written by a stop is removed once the resumed run finishes."""
    train.main(_args(text_shards, tmp_path, "--checkpoint_every=3"))
    state = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 4 and state["val_step"] == 4
    trainer = train.Trainer(resolve(_args(text_shards, tmp_path, "--run_name=stopped", "--checkpoint_every=2")))

    def stop(module, inputs, output):
        if module.training and trainer.step == 3:
            raise _Broken

    trainer.model.register_forward_hook(stop)
    with pytest.raises(_Broken):
        trainer.run()
    assert (tmp_path / "stopped" / "checkpoint.pt").exists()
    assert train.main(_args(text_shards, tmp_path, "--run_name=stopped", "--resume=True",
                            "--checkpoint_every=0"))["steps"] == 4
    assert sorted(_files(tmp_path / "stopped")) == ["config.json", "log.jsonl", "summary.json"]


def test_what_an_earlier_run_left_is_named(tmp_path):
    assert rundir.earlier_run_state(str(tmp_path)) is None and rundir.earlier_run(str(tmp_path)) is None
    (tmp_path / "lock").write_text("1 host\n")
    (tmp_path / "notes.txt").write_text("mine")
    assert rundir.earlier_run(str(tmp_path)) is None  # not a run's files
    rundir.refuse_earlier_run(str(tmp_path))
    (tmp_path / "log.jsonl").write_text("")
    assert rundir.earlier_run_state(str(tmp_path)) == "unfinished"
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    assert rundir.earlier_run_state(str(tmp_path)) == "interrupted"
    with pytest.raises(rundir.RunDirTaken, match="continue it with --resume=True"):
        rundir.refuse_earlier_run(str(tmp_path))
    (tmp_path / "summary.json").write_text("{}")
    assert rundir.earlier_run(str(tmp_path)) == "a finished run with its checkpoint"
    rundir.remove_earlier_run(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lock", "notes.txt"]
