"""bench.speedrun: tuning, seeded runs, statistics, the records table and plots — end to end at tiny size."""

import json
import math
import os

import pytest

from bench import speedrun


def test_one_sided_p_value():
    assert speedrun.one_sided_p([3.0], 3.28) is None  # a single run cannot be tested
    assert speedrun.one_sided_p([3.20, 3.21, 3.19, 3.22], 3.28) < 0.01
    assert speedrun.one_sided_p([3.30, 3.31, 3.29], 3.28) > 0.5


def test_aggregate_ratios_against_adamw():
    def run(steps, final, reached=True):
        return {"steps_to_target": steps if reached else None, "seconds_to_target": steps / 10 if reached else None,
                "final_val_loss": final, "reached_target": reached, "step_avg_ms": 100.0}

    rows = speedrun.aggregate({"adamw": [run(100, 4.0), run(120, 4.1)], "muon": [run(55, 3.9), run(0, 4.5, False)]},
                              target=4.2)
    assert rows["adamw"]["steps_mean_std"][0] == 110 and rows["muon"]["reached"] == 1
    assert rows["muon"]["steps_ratio_vs_adamw"] == pytest.approx(55 / 110)
    table = speedrun.records_table(rows, 4.2, "test machine")
    assert "| muon | 1/2 | 55.0 ± 0.0 |" in table and "test machine" in table


def test_end_to_end_with_tuning(text_shards, tmp_path):
    out = tmp_path / "sr"
    results = speedrun.main(["--preset=tiny", "--optimizers=adamw,muon", "--seeds=2", "--tune", f"--out={out}",
                             "--target=auto", f"--data_dir={text_shards}", "--max_steps=4", "--val_every=1",
                             "--threads=1", "--optim.lr=0.01", "--optim.adam_lr=0.01"])
    assert set(results["tuning"]) == {"adamw", "muon"}
    assert [r["lr"] for r in results["tuning"]["adamw"]["sweep"]] == [0.005, 0.01, 0.02]
    for opt in ("adamw", "muon"):
        runs = results["runs"][opt]
        assert len(runs) == 2 and {r["seed"] for r in runs} == {1000, 1001}
        assert all(math.isfinite(r["final_val_loss"]) for r in runs)
    for name in ("results.json", "records.md", "curves.png", "steps.png"):
        assert os.path.getsize(out / name) > 0
    # --target auto: the tuned AdamW sweep's best final val loss
    assert results["target"] == min(r["final_val_loss"] for r in results["tuning"]["adamw"]["sweep"])
    assert json.load(open(out / "results.json"))["target"] == results["target"]


def test_auto_target_needs_tuned_adamw_first(tmp_path):
    with pytest.raises(SystemExit):
        speedrun.main(["--optimizers=muon,adamw", "--tune", "--target=auto", f"--out={tmp_path}"])
