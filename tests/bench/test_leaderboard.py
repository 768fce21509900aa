"""bench.leaderboard: one command from results files to the page (table with track 3's published counts, verdict
matrix, agreement, provenance of every figure, plots)."""

import json

from bench import leaderboard

RULE = {"target": 4.77, "sigma": 0.0304, "z": 0.004 / 0.0013, "loss_per_100_steps": 0.62}
MACHINE = {"cpu": "AMD EPYC", "cores": 2, "cpu_capability": "AVX2", "native_bf16_cpu": False, "threads": 2,
           "loadavg_1m": 0.5}


def _file(path, optimizer, finals, reach_step, budget, command):
    """A results.json as bench.speedrun writes it: seeds whose val loss falls linearly to `finals` at reach_step."""
    runs = [{"curve": [{"step": 0, "val_loss": 10.8}, {"step": reach_step, "val_loss": v},
                       {"step": budget, "val_loss": v - 0.3}], "step_avg_ms": 300.0, "threads": 1, "seed": 1000 + i}
            for i, v in enumerate(finals)]
    data = {"preset": "track3-cpu", "runs": {optimizer: runs}, "rule_params": RULE, "command": command,
            "commit": "abc1234", "machine": MACHINE, "baseline": optimizer}
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    return str(path)


def test_leaderboard_from_results_files(tmp_path):
    muon = _file(tmp_path / "muon" / "results.json", "track3-muon", [4.69, 4.70, 4.71, 4.70, 4.69, 4.71, 4.70, 4.70],
                 112, 160, ["python", "-m", "bench.speedrun", "--optimizers", "track3-muon", "--seeds", "8"])
    adam = _file(tmp_path / "adam" / "results.json", "track3-adam", [4.72, 4.71, 4.73, 4.72, 4.72], 200, 277,
                 ["python", "-m", "bench.speedrun", "--optimizers=track3-adam", "--seeds", "5"])
    out = tmp_path / "board"
    results = leaderboard.main([muon, adam, f"--out={out}", "--boot=200"])
    page = (out / "leaderboard.md").read_text()
    assert "| 1 | track3-muon | #36 | 3250 | 8 | 112 |" in page
    assert "| 2 | track3-adam | #2 | 5625 | 5 | 200 |" in page
    # muon over adam: (0.02 + 88/100·0.62)/√(1/8 + 1/5) = 0.9921 >= 0.0935
    assert "| track3-muon | — | **+0.9921 ✓** |" in page and "| track3-adam | -0.9921 | — |" in page
    assert "1 of 1 pairs differ significantly" in page
    assert "Kendall τ-b +1.000" in page and "Spearman ρ +1.000" in page
    assert results["agreement"]["tau_b_ci95"] == [1.0, 1.0]
    assert "--optimizers track3-muon --seeds 8" in page and "commit abc1234" in page
    assert "AMD EPYC, 2 cores, torch CPU capability AVX2, native bf16 no, 1 threads" in page
    assert "python -m bench.leaderboard" in page
    for name in ("records.md", "results.json", "curves.png", "steps.png", "agreement.png"):
        assert (out / name).stat().st_size > 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["rule_params"] == RULE and saved["agreement"]["n"] == 2

    # the page regenerates from its own results.json (a file that judged several files keeps their sources)
    again = leaderboard.main([str(out / "results.json"), f"--out={tmp_path / 'again'}", "--boot=200"])
    assert (tmp_path / "again" / "leaderboard.md").read_text().split("This page")[0] == page.split("This page")[0]
    assert again["aggregate"] == results["aggregate"]
