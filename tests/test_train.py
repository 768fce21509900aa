"""train.py end to end on the CPU: a few steps of the tiny preset on shards made from real text."""

import json
import os

import pytest

import train


@pytest.fixture
def shards(text_shards):
    return text_shards


def run(shards, tmp_path, *args):
    return train.main(["--preset=tiny", f"--data_dir={shards}", f"--out_dir={tmp_path}", "--threads=1", *args])


@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "muon", "normuon"])
def test_tiny_run_learns(shards, tmp_path, optimizer):
    lr = {"sgd": 0.5}.get(optimizer, 0.01)
    summary = run(shards, tmp_path, f"--optimizer={optimizer}", "--max_steps=4", "--val_every=4",
                  f"--optim.lr={lr}", f"--optim.adam_lr={lr}", "--warmup_steps=1")
    log = [json.loads(line) for line in open(os.path.join(summary["run_dir"], "log.jsonl"))]
    vals = [r["val_loss"] for r in log if "val_loss" in r]
    assert len(vals) == 2 and vals[1] < vals[0] - 0.05, vals
    assert summary["steps"] == 4 and summary["tokens"] == 4 * 2 * 64
    assert os.path.exists(os.path.join(summary["run_dir"], "config.json"))


def test_target_is_reported_and_stops_the_run(shards, tmp_path):
    summary = run(shards, tmp_path, "--max_steps=6", "--val_every=1", "--target_val_loss=10.7", "--optim.lr=0.01")
    assert summary["reached_target"] and summary["steps"] == summary["steps_to_target"] < 6
    assert summary["seconds_to_target"] > 0 and summary["warmup_s"] > 0
    missed = run(shards, tmp_path, "--max_steps=2", "--val_every=1", "--target_val_loss=1.0", "--run_name=miss")
    assert not missed["reached_target"] and missed["steps_to_target"] is None and missed["steps"] == 2
    assert "NOT reached" in train.format_summary(missed)


def test_speedrun_preset_runs_a_step_at_tiny_size(shards, tmp_path):
    summary = run(shards, tmp_path, "--preset=gpt2-124m", "--model.n_layer=2", "--model.n_embd=64",
                  "--model.n_head=2", "--batch_size=1", "--seq_len=32", "--max_steps=1", "--val_every=1",
                  "--val_tokens=64", "--compile=False", "--train_pattern=*_train_*.bin", "--val_pattern=*_val_*.bin")
    assert summary["steps"] == 1 and summary["optimizer"] == "muon"


def test_missing_data_is_refused_with_the_command_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.prepare"):
        train.main(["--preset=gpt2-124m", f"--data_dir={tmp_path / 'none'}", f"--out_dir={tmp_path}"])


def test_lr_schedule_is_trapezoidal():
    cfg = train.resolve(["--preset=tiny", "--max_steps=100", "--warmup_steps=10", "--cooldown_frac=0.5"])
    factors = [train.lr_factor(s, cfg) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0 and factors[49] == 1.0
    assert factors[75] == pytest.approx(0.5) and factors[99] == pytest.approx(0.02)


def test_unavailable_attention_backend_is_refused_before_training(shards, tmp_path):
    with pytest.raises(RuntimeError, match="'fa3'.*auto"):
        run(shards, tmp_path, "--attention=fa3")
