"""bench.harness through pytest-benchmark: one round is one call, so --benchmark-compare-fail catches a kernel that
got slower and passes one that did not.

The case timed here is a real bench run by pytest (in a subprocess, through bench/conftest.py's `measure` fixture
and bench.harness) whose call is dominated by a sleep of fixed length: a sleeping process does not compete for
the cores, so the median round is the sleep plus the scheduler's wake-up latency (tens of microseconds, a few
tenths of a percent of 20 ms) whatever the other processes on a shared machine are doing. A planted slowdown of
20% (the sleep made 20% longer) is then far above the 5% threshold, and an unchanged rerun far below it.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench import harness

REPO = Path(__file__).resolve().parents[2]
SLEEP_S = 0.02
BUDGET = ["--benchmark-max-time=0.5", "--benchmark-min-rounds=15"]  # ~25 rounds of 20 ms


def _bench_dir(tmp_path: Path, sleep_s: float) -> Path:
    """A bench folder that uses the project's bench fixtures: conftest.py loads bench/conftest.py as a plugin."""
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["bench.conftest"]\n')
    (tmp_path / "test_planted.py").write_text(textwrap.dedent(f"""
        import time


        def test_sleep(measure):
            measure(lambda: time.sleep({sleep_s!r}), op="planted", provider="sleep", case="fixed")
    """))
    return tmp_path


def _pytest(bench: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(bench),
                           str(bench), f"--benchmark-storage=file://{bench / 'store'}", *BUDGET, *args],
                          cwd=bench, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A bench saved once as the baseline (0001_base): the folder, and the JSON pytest-benchmark wrote."""
    bench = _bench_dir(tmp_path_factory.mktemp("planted"), SLEEP_S)
    proc = _pytest(bench, "--benchmark-save=base", f"--benchmark-json={bench / 'base.json'}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return bench, json.loads((bench / "base.json").read_text())


def test_every_round_is_one_call_and_the_machine_is_recorded_once(saved):
    _, data = saved
    (row,) = data["benchmarks"]
    stats = row["stats"]
    assert stats["rounds"] >= 15 and len(stats["data"]) == stats["rounds"]
    assert min(stats["data"]) >= SLEEP_S  # each round is one whole call
    assert stats["median"] == pytest.approx(SLEEP_S, rel=0.05)
    assert row["group"] == "planted" and row["extra_info"]["provider"] == "sleep"
    assert "cpu" not in row["extra_info"] and "loadavg_1m" not in row["extra_info"]  # per run, not per row
    info = data["machine_info"]["speedrun"]
    for key in ("cpu", "cpu_capability", "native_bf16_cpu", "threads", "loadavg_1m_start", "torch", "commit",
                "timer"):
        assert key in info, key


def test_compare_fail_catches_a_planted_20_percent_slowdown(saved, tmp_path):
    bench, _ = saved
    _bench_dir(bench, SLEEP_S * 1.2)  # the same test, 20% slower
    try:
        proc = _pytest(bench, "--benchmark-compare=0001", "--benchmark-compare-fail=median:5%")
    finally:
        _bench_dir(bench, SLEEP_S)
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "Performance has regressed" in proc.stdout + proc.stderr
    assert "test_sleep" in proc.stdout + proc.stderr


def test_compare_fail_passes_an_unchanged_rerun(saved):
    bench, _ = saved
    proc = _pytest(bench, "--benchmark-compare=0001", "--benchmark-compare-fail=median:5%")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Performance has regressed" not in proc.stdout + proc.stderr


def test_plan_rounds_fills_the_budget_within_the_bounds():
    calls = []
    warmup, rounds = harness.plan_rounds(lambda: calls.append(1), budget_s=0.01, min_rounds=7)
    assert warmup == len(calls) >= 1 and rounds == harness.MAX_ROUNDS  # a no-op call: capped
    import time

    warmup, rounds = harness.plan_rounds(lambda: time.sleep(0.01), budget_s=0.05, min_rounds=7)
    assert warmup == 1 and rounds == 7  # 5 rounds fit in the budget: the minimum wins
    warmup, rounds = harness.plan_rounds(lambda: time.sleep(0.002), budget_s=0.1, min_rounds=3)
    assert 3 <= warmup <= 6 and 20 <= rounds <= 50


def test_time_rounds_on_the_cpu_clock():
    import time

    samples = harness.time_rounds(lambda: time.sleep(0.003), "cpu", budget_s=0.05, min_rounds=4)
    assert len(samples) >= 4 and min(samples) >= 0.003
    med, p20, p80 = harness.quantiles_ms(samples)
    assert p20 <= med <= p80 and med == pytest.approx(3.0, rel=0.5)


def test_quantiles_match_torch():
    import torch

    samples = [0.3, 0.1, 0.7, 0.2, 0.5]
    expected = torch.tensor(samples, dtype=torch.float64).quantile(torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64))
    assert harness.quantiles_ms(samples, (0.5, 0.2, 0.8)) == pytest.approx([1e3 * float(v) for v in expected])
