"""train.py's options for the noise study (bench.noise): --data_offset moves the train stream, --val_slice_tokens logs
the val loss of disjoint val slices; neither changes a default run."""

import json
import os

import pytest

import train


def _run(shards, out, *args):
    summary = train.main(["--preset=tiny", f"--data_dir={shards}", f"--out_dir={out}", "--threads=1", "--max_steps=4",
                          "--val_every=2", "--optimizer=muon", *args])
    with open(os.path.join(summary["run_dir"], "log.jsonl")) as f:
        return summary, [json.loads(line) for line in f]


def test_val_slices_leave_the_run_alone_and_the_first_is_the_default_val_loss(text_shards, tmp_path):
    _, plain = _run(text_shards, tmp_path / "plain", "--val_tokens=512")
    _, sliced = _run(text_shards, tmp_path / "sliced", "--val_tokens=1536", "--val_slice_tokens=512")
    train_loss = [[r["train_loss"] for r in log if "train_loss" in r] for log in (plain, sliced)]
    assert train_loss[0] == train_loss[1]  # the trajectory, bitwise
    vals = [[r for r in log if "val_loss" in r] for log in (plain, sliced)]
    assert [r["step"] for r in vals[0]] == [r["step"] for r in vals[1]] == [0, 2, 4]
    for a, b in zip(*vals):
        assert len(b["val_slices"]) == 3 and "val_slices" not in a
        assert b["val_slices"][0] == a["val_loss"]  # bitwise: the same sums in the same order
        assert b["val_loss"] == pytest.approx(sum(b["val_slices"]) / 3, rel=1e-6)
    assert len(set(vals[1][-1]["val_slices"])) == 3  # disjoint samples (at step 0 every token's loss is ln V)


def test_data_offset_trains_on_a_later_stretch_with_the_same_init(text_shards, tmp_path):
    _, base = _run(text_shards, tmp_path / "base", "--val_tokens=512")
    _, moved = _run(text_shards, tmp_path / "moved", "--val_tokens=512", "--data_offset=50")
    assert base[0]["val_loss"] == moved[0]["val_loss"]  # step 0: the same init
    assert [r["train_loss"] for r in base if "train_loss" in r] != [r["train_loss"] for r in moved if "train_loss" in r]


def test_val_slices_must_divide_the_val_set(text_shards, tmp_path):
    from speedrun.cli import ConfigError

    with pytest.raises(ConfigError, match="must divide --val_tokens"):
        _run(text_shards, tmp_path, "--val_tokens=1024", "--val_slice_tokens=384")
    with pytest.raises(ConfigError, match="multiple of the tokens of one validation step"):
        _run(text_shards, tmp_path, "--val_tokens=1024", "--val_slice_tokens=64")
