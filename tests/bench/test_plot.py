"""bench.plot: train.py runs' val and train curves overlaid in one PNG, labelled from each run's config."""

import json
import struct

import pytest

import train
from bench import plot
from speedrun.cli import UserError

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def runs(text_shards, tmp_path_factory):
    """Two real tiny runs (the tiny preset, 4 steps, validation every 2) that differ only in the optimizer."""
    out = tmp_path_factory.mktemp("runs")
    dirs = []
    for optimizer in ("adamw", "muon"):
        summary = train.main(["--preset=tiny", f"--data_dir={text_shards}", f"--out_dir={out}", "--threads=1",
                              f"--optimizer={optimizer}", "--max_steps=4", "--val_every=2", "--seed=3"])
        dirs.append(summary["run_dir"])
    return out, dirs


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_two_runs_in_one_png(runs, tmp_path):
    out, dirs = runs
    png = tmp_path / "curves.png"
    plot.main([*dirs, "--out", str(png)])
    assert _png_size(png) == (960, 600)  # 8 x 5 inches at 120 dpi


def test_curves_and_legend_come_from_each_run(runs):
    out, dirs = runs
    loaded = [plot.load_run(d) for d in plot.run_dirs([str(out)])]  # a folder of runs
    assert sorted(r["path"] for r in loaded) == sorted(dirs)
    fig = plot.figure(loaded, "tokens")
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert set(lines) == {"tiny adamw seed 3 val", "tiny adamw seed 3 train", "tiny muon seed 3 val",
                          "tiny muon seed 3 train"}
    for run in loaded:
        val = lines[f"tiny {run['optimizer']} seed 3 val"]
        log = [json.loads(x) for x in open(f"{run['path']}/log.jsonl")]
        assert list(val.get_xdata()) == [r["tokens"] for r in log if "val_loss" in r]
        assert list(val.get_ydata()) == [r["val_loss"] for r in log if "val_loss" in r]
        train_line = lines[f"tiny {run['optimizer']} seed 3 train"]
        assert list(train_line.get_ydata()) == [r["train_loss"] for r in log if "train_loss" in r]
        assert train_line.get_color() == val.get_color() and train_line.get_linestyle() == "--"
    assert fig.axes[0].get_xlabel() == "tokens"


def test_same_labels_get_the_run_name(tmp_path):
    for name in ("a", "b"):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"preset": "cpu", "seed": 1, "run_name": name,
                                                   "optim": {"name": "muon"}}))
        (d / "log.jsonl").write_text(json.dumps({"step": 2, "val_loss": 5.0, "tokens": 10, "train_time_s": 1.0})
                                     + "\n")
    runs = [plot.load_run(str(tmp_path / n)) for n in ("a", "b")]
    assert plot.labels(runs) == ["cpu muon seed 1 (a)", "cpu muon seed 1 (b)"]
    fig = plot.figure(runs, "seconds")
    assert fig.axes[0].get_xlabel() == "training time (s)" and len(fig.axes[0].get_lines()) == 2


def test_a_folder_without_runs_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no train.py run there"):
        plot.main([str(tmp_path), "--out", str(tmp_path / "x.png")])
