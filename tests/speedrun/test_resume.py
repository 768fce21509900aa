"""Resume honours what it can and refuses the rest (speedrun/resume.py): options not given keep the checkpoint's
values, config.json edits are compared with the checkpoint, more steps are taken where the schedule of the steps
already taken stays the same, and config.json is never silently rewritten."""

import json
from pathlib import Path

import pytest

import train
from speedrun import resume
from speedrun.checkpoint import CheckpointMismatch
from speedrun.config import resolve, to_dict

TIMING_KEYS = ("train_time_s", "step_avg_ms", "seconds_to_target")


def _saved(*argv):
    return to_dict(resolve(["--preset=tiny", *argv]))


def _resumed(saved, argv, edited=None, *, given=True, step=3):
    cfg = resolve(["--preset=tiny", *argv])
    names = resume.given_options(["--preset=tiny", *argv], cfg, resolve) if given else None
    return resume.resumed_config(cfg, saved, edited, given=names, step=step, schedule=train.schedule_at,
                                 checkpoint_path="c.pt", config_path="config.json")


def test_options_not_given_keep_the_checkpoints_values():
    saved = _saved("--optim.lr=0.01", "--checkpoint_every=3", "--seed=7")
    cfg, applied = _resumed(saved, ["--val_every=1"])
    assert (cfg.optim.lr, cfg.checkpoint_every, cfg.seed, cfg.val_every) == (0.01, 3, 7, 1)
    assert applied == ["--val_every: 2 -> 1 (command line)"]
    with pytest.raises(CheckpointMismatch, match="--optim.lr: 0.01 in the checkpoint, 0.003 now"):
        _resumed(saved, [], given=False)  # without the command line every option counts as given
    with pytest.raises(CheckpointMismatch, match="--seed: 7 in the checkpoint, 1337 now"):
        _resumed(saved, ["--seed=1337"])
    with pytest.raises(CheckpointMismatch, match="--optim.name: 'adamw' in the checkpoint, 'muon' now"):
        _resumed(saved, ["--optimizer=muon"])


def test_config_json_edits_are_applied_or_refused():
    saved = _saved("--schedule_steps=30")
    edited = json.loads(json.dumps(saved)) | {"max_steps": 6, "val_every": 3, "out_dir": "elsewhere"}
    cfg, applied = _resumed(saved, [], edited)
    assert (cfg.max_steps, cfg.val_every, cfg.out_dir) == (6, 3, "runs")  # out_dir: where the file is, not an edit
    assert applied == ["--max_steps: 3 -> 6 (config.json)", "--val_every: 2 -> 3 (config.json)"]
    edited["model"]["n_layer"] = 3
    with pytest.raises(CheckpointMismatch, match=r"--model.n_layer: 2 in the checkpoint, 3 in config.json.*undo the "
                                                 "edits in config.json"):
        _resumed(saved, [], edited)


def test_more_steps_only_where_the_steps_taken_keep_their_schedule():
    """tiny: warm-up 1 step, decay over the last 40% of the horizon. At step 3 of a 3-step run, step 2 was in the
    decay (factor 0.833); a 6-step horizon puts it back in the constant phase: refused. Step 1 of 3 was constant in
    both: allowed. With the horizon separate (schedule_steps), any number of steps up to it is allowed."""
    with pytest.raises(CheckpointMismatch, match=r"--max_steps: 3 in the checkpoint, 6 now: this changes the "
                                                 r"schedule of step 2, .*\(lr factor 0.833333 then, 1 now\)"):
        _resumed(_saved(), ["--max_steps=6"], step=3)
    assert _resumed(_saved(), ["--max_steps=6"], step=2)[0].max_steps == 6
    assert _resumed(_saved("--schedule_steps=30"), ["--max_steps=30"], step=3)[0].max_steps == 30
    with pytest.raises(CheckpointMismatch, match="--max_steps=2 is below the checkpoint's step 3"):
        _resumed(_saved(), ["--max_steps=2"], step=3)


def _log(run_dir, key="train_loss"):
    with open(Path(run_dir) / "log.jsonl") as f:
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in map(json.loads, f) if key in r]


def test_a_finished_run_extended_by_editing_config_json_is_the_longer_run(text_shards, tmp_path, capsys):
    """A 4-step run with a separate 12-step horizon, finished with its checkpoint; config.json edited to 8 steps.
    The resume applies and prints the edit, leaves config.json byte for byte as edited, and trains steps 4-7
    exactly as an 8-step run does (train records bitwise equal)."""
    common = ["--preset=tiny", f"--data_dir={text_shards}", "--threads=1", "--schedule_steps=12", "--val_every=4",
              "--optim.lr=0.01", "--run_name=r"]
    reference = train.main([*common, f"--out_dir={tmp_path / 'ref'}", "--max_steps=8"])
    run = [*common, f"--out_dir={tmp_path / 'run'}", "--max_steps=4", "--checkpoint_every=4"]
    train.main(run)
    config_path = tmp_path / "run" / "r" / "config.json"
    config = json.loads(config_path.read_text())
    config["max_steps"] = 8
    config_path.write_text(json.dumps(config, indent=2))
    edited = config_path.read_bytes()
    capsys.readouterr()
    resumed = train.main([*run, "--resume=True"])  # the command the run was started with, resumed
    out = capsys.readouterr().out
    assert f"resuming {tmp_path / 'run' / 'r'} at step 4 with: --max_steps: 4 -> 8 ({config_path})" in out
    assert config_path.read_bytes() == edited
    assert resumed["steps"] == 8 and resumed["final_val_loss"] == reference["final_val_loss"]
    assert _log(tmp_path / "run" / "r") == _log(tmp_path / "ref" / "r")


def test_config_json_is_rewritten_only_with_a_note(text_shards, tmp_path, capsys):
    args = ["--preset=tiny", f"--data_dir={text_shards}", f"--out_dir={tmp_path}", "--threads=1", "--run_name=r",
            "--checkpoint_every=3"]
    train.main(args)
    config_path = tmp_path / "r" / "config.json"
    capsys.readouterr()
    train.main([*args, "--resume=True", "--val_every=1"])
    assert f"{config_path} now holds this run's config: --val_every: 2 -> 1" in capsys.readouterr().out
    assert json.loads(config_path.read_text())["val_every"] == 1
