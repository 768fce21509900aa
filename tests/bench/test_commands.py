"""Every bench command's --help shows its description whole; bench.speedrun writes its results without
matplotlib and says in one line that the plots were skipped."""

import importlib
import json
import os
import re
import sys

import pytest

from bench import provenance, speedrun

COMMANDS = ["bench.speedrun", "bench.codegen", "bench.cpu_step", "bench.summary", "bench.plot", "bench.gpu_report"]


def _words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("name", COMMANDS)
def test_help_shows_the_whole_description(name, capsys):
    module = importlib.import_module(name)
    first = module.__doc__.strip().split("\n\n")[0]
    assert first.rstrip().endswith((".", ":")), f"{name}'s first paragraph is not a whole sentence"
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert _words(first) in _words(out), f"{name} --help cuts its description:\n{out[:600]}"
    assert re.search(r"usage: python -m " + re.escape(name), out)


def _results(tmp_path):
    runs = [{"curve": [{"step": s, "val_loss": v, "train_time_s": s / 10} for s, v in ((0, 9.0), (10, 3.9))],
             "step_avg_ms": 10.0, "threads": 1} for _ in range(2)]
    return {"command": ["test"], "commit": provenance.git_commit(), "machine": provenance.machine(),
            "rule_params": {"target": 4.0, "sigma": 0.01, "z": 3.0, "loss_per_100_steps": 0.05},
            "runs": {"muon": runs}, "baseline": "muon", "pairs": "all"}


def test_plots_are_written_with_matplotlib(tmp_path):
    pytest.importorskip("matplotlib")
    speedrun.report(_results(tmp_path), str(tmp_path))
    assert (tmp_path / "curves.png").stat().st_size > 0 and (tmp_path / "steps.png").stat().st_size > 0


def test_without_matplotlib_the_results_are_written_and_one_line_says_why(tmp_path, monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    with pytest.raises(ImportError):
        import matplotlib  # noqa: F401
    table = speedrun.report(_results(tmp_path), str(tmp_path))
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["plots skipped: matplotlib is not installed (pip install matplotlib); results.json and "
                   "records.md are written"]
    assert json.loads((tmp_path / "results.json").read_text())["aggregate"]["muon"]["reached"]
    assert (tmp_path / "records.md").read_text().strip() == table.strip()
    assert not os.path.exists(tmp_path / "curves.png") and not os.path.exists(tmp_path / "steps.png")
