"""The optimizer seam: an optimizer file of one's own, outside the repository, races through train.py and
bench.speedrun without a change to any file of the repository, and resumes and replays from its run's config."""

import json
import os
import shutil
import subprocess
import sys

import pytest

import train
from bench import speedrun
from optim import registry
from speedrun.config import help_text, resolve

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(REPO, "docs", "examples", "lion.py")


def repository_state() -> str:
    """Tracked and untracked files (ignored ones aside) with their changes: what a run must leave as it was."""
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout
    diff = subprocess.run(["git", "diff"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return status + diff


@pytest.fixture(scope="module")
def lion(tmp_path_factory):
    """The example file, copied outside the repository (once: a process registers a name from one file only)."""
    path = tmp_path_factory.mktemp("elsewhere") / "my_lion.py"
    shutil.copy(EXAMPLE, path)
    yield path
    registry.unload_file(str(path))  # the rest of the session sees the package's parts only


def test_the_readme_example_is_the_file_tested():
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    with open(EXAMPLE) as f:
        example = f.read()
    assert example.strip() in readme  # the README shows the whole file


def test_an_outside_optimizer_trains_resumes_and_replays(lion, text_shards, tmp_path):
    before = repository_state()
    common = ["--preset=tiny", f"--data_dir={text_shards}", "--threads=1", "--max_steps=4", "--val_every=2",
              f"--out_dir={tmp_path / 'runs'}", "--run_name=lion"]
    summary = train.main([*common, f"--optimizer={lion}:lion", "--optim.lr=0.01", "--checkpoint_every=2"])
    log = [json.loads(line) for line in open(tmp_path / "runs" / "lion" / "log.jsonl")]
    vals = [r["val_loss"] for r in log if "val_loss" in r]
    assert summary["optimizer"] == "lion" and vals[-1] < vals[0] - 0.1, vals  # it learns
    config = json.loads((tmp_path / "runs" / "lion" / "config.json").read_text())
    assert config["optim"] == {"name": f"{lion}:lion", "lr": 0.01, "betas": [0.9, 0.99], "weight_decay": 0.0}
    # the recorded config replays the same run (its file loaded again), and resuming it checks it the same way
    assert resolve([f"--config={tmp_path / 'runs' / 'lion' / 'config.json'}"]).optim.lr == 0.01
    resumed = train.main([*common, f"--optimizer={lion}:lion", "--optim.lr=0.01", "--checkpoint_every=2",
                          "--max_steps=4", "--resume=True"])
    assert resumed["final_val_loss"] == summary["final_val_loss"]
    # its recipe, scaled to the preset's budget like the package's own
    cfg = resolve(["--preset=track3-cpu", f"--optimizer={lion}:lion-track3"])
    assert cfg.recipe == f"{lion}:lion-track3" and cfg.max_steps == 160 and cfg.optim.weight_decay == 0.1
    assert "--optim.betas=(0.9, 0.99)" in help_text([f"--optimizer={lion}:lion"])
    assert repository_state() == before


def test_an_outside_optimizer_races_in_bench_speedrun(lion, text_shards, tmp_path):
    before = repository_state()
    out = tmp_path / "race"
    speedrun.main(["--preset=tiny", f"--optimizers=adamw,{lion}:lion", "--seeds=2", f"--out={out}",
                   f"--data_dir={text_shards}", "--threads=1", "--max_steps=3", "--val_every=1", "--target=10.9",
                   "--sigma=0.1"])
    results = json.loads((out / "results.json").read_text())
    assert set(results["aggregate"]) == {"adamw", f"{lion}:lion"}
    assert repository_state() == before


def test_a_file_that_defines_no_such_part_is_refused(lion):
    with pytest.raises(ValueError, match="defines no optimizer or recipe named 'lino'; it defines: lion"):
        resolve([f"--optimizer={lion}:lino"])


def test_an_outside_file_runs_in_a_fresh_process(lion, text_shards, tmp_path):
    """As a researcher runs it: `python train.py --optimizer FILE.py:NAME` from the repository's root."""
    proc = subprocess.run([sys.executable, "train.py", "--preset=tiny", f"--data_dir={text_shards}", "--threads=1",
                           "--max_steps=2", f"--out_dir={tmp_path}", f"--optimizer={lion}:lion"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tiny/lion seed 1337" in proc.stdout
