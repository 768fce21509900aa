"""bench.summary: kernel names, times and ratios with their spread, a difference marked only where the spreads do
not overlap; one file (providers against eager) and several (each file against the first), saved runs by name."""

import json
import random

import pytest

from bench import summary


def _bench(provider, samples_ms, *, op="relu2_mlp", case="cpu_1k", mode="full", data=True):
    xs = sorted(samples_ms)
    q = lambda p: xs[int(p * (len(xs) - 1))]  # noqa: E731
    stats = {"median": q(0.5) / 1e3, "q1": q(0.25) / 1e3, "q3": q(0.75) / 1e3, "min": xs[0] / 1e3,
             "rounds": len(xs)}
    if data:
        stats["data"] = [v / 1e3 for v in samples_ms]
    return {"name": f"test_{op}[{case}-{mode}-{provider}]", "group": op, "param": f"{case}-{mode}-{provider}",
            "stats": stats, "extra_info": {"op": op, "provider": provider, "case": case, "mode": mode,
                                           "shape": {"N": 1024, "H": 128, "F": 512}, "tflops": 1.0}}


def _noisy(center, n=40, spread=0.02, seed=0):
    rng = random.Random(seed)
    return [center * (1 + rng.uniform(-spread, spread)) for _ in range(n)]


def _file(tmp_path, name, benches):
    path = tmp_path / name
    path.write_text(json.dumps({"benchmarks": benches, "datetime": "2026-12-06T00:00:00",
                                "machine_info": {"speedrun": {"cpu": "AMD EPYC", "cores": 2, "threads": 1,
                                                              "cpu_capability": "AVX2", "loadavg_1m_start": 0.5,
                                                              "loadavg_1m_end": 0.6, "commit": "abc1234"}}}))
    return str(path)


def _by_provider(out):
    """Table lines by their provider column (columns are separated by two or more spaces)."""
    import re

    return {re.split(r"\s{2,}", line)[3]: line for line in out.splitlines() if line.startswith("relu2_mlp")}


def test_few_rounds_compare_whole_ranges():
    ref = summary.rows({"benchmarks": [_bench("eager", [10.0, 10.5, 11.0])]})[0]
    row = summary.rows({"benchmarks": [_bench("x", [5.0, 5.5, 10.2])]})[0]
    x = summary.ratio(row, ref)
    assert x["method"] == "range" and (x["lo"], x["hi"]) == pytest.approx((5 / 11, 10.2 / 10)) and x["verdict"] == "~"


def test_kernel_names_cases_and_times_from_pytest_benchmark_stats():
    (row,) = summary.rows({"benchmarks": [_bench("eager", [1.0, 2.0, 3.0, 4.0, 5.0])]})
    assert row["kernel"] == "relu2_mlp" and row["provider"] == "eager" and row["mode"] == "full"
    assert row["case"] == "cpu_1k (1024×128×512)"
    assert row["ms"] == pytest.approx(3.0) and row["q1"] == pytest.approx(2.0) and row["q3"] == pytest.approx(4.0)


def test_a_difference_is_marked_only_where_the_spreads_do_not_overlap():
    ref = summary.rows({"benchmarks": [_bench("eager", _noisy(10.0))]})[0]
    faster = summary.rows({"benchmarks": [_bench("triton", _noisy(5.0, seed=1))]})[0]
    same = summary.rows({"benchmarks": [_bench("triton", _noisy(10.05, seed=2))]})[0]
    x = summary.ratio(faster, ref)
    assert x["method"] == "bootstrap" and x["verdict"] == "faster" and x["lo"] <= x["value"] <= x["hi"] < 1
    assert x["value"] == pytest.approx(0.5, rel=0.03)
    y = summary.ratio(same, ref)
    assert y["verdict"] == "~" and y["lo"] < 1 < y["hi"]  # 0.5% apart, 2% noise: no difference shown
    slower = summary.ratio(ref, faster)
    assert slower["verdict"] == "slower" and slower["lo"] > 1


def test_without_per_round_data_the_interquartile_ranges_decide():
    ref = summary.rows({"benchmarks": [_bench("eager", [9, 10, 10, 11, 12], data=False)]})[0]
    overlap = summary.rows({"benchmarks": [_bench("x", [8, 9, 9.5, 10.5, 11], data=False)]})[0]
    apart = summary.rows({"benchmarks": [_bench("x", [4, 5, 5, 6, 7], data=False)]})[0]
    a = summary.ratio(overlap, ref)
    assert a["method"] == "IQR" and a["verdict"] == "~"
    assert (a["lo"], a["hi"]) == pytest.approx((9 / 11, 10.5 / 10))
    b = summary.ratio(apart, ref)
    assert b["verdict"] == "faster" and b["hi"] == pytest.approx(6 / 10)


def test_one_file_compares_providers_with_eager(tmp_path, capsys):
    path = _file(tmp_path, "a.json", [_bench("eager", _noisy(10.0)), _bench("compile", _noisy(4.0, seed=3)),
                                      _bench("triton", _noisy(10.0, seed=4))])
    summary.main([path])
    out = capsys.readouterr().out
    assert "A: " in out and "AMD EPYC, 2 cores, AVX2, 1 threads, load 0.5 at start / 0.6 at end" in out
    lines = _by_provider(out)
    assert "faster" in lines["compile"] and "0.4" in lines["compile"]
    assert lines["triton"].rstrip().endswith("~")
    assert "test_relu2_mlp" not in out  # kernel names, not test functions


def test_two_files_compare_row_by_row(tmp_path, capsys):
    a = _file(tmp_path, "a.json", [_bench("eager", _noisy(10.0)), _bench("triton", _noisy(2.0, seed=5))])
    b = _file(tmp_path, "b.json", [_bench("eager", _noisy(10.0, seed=6)), _bench("triton", _noisy(2.4, seed=7))])
    summary.main([a, b])
    out = capsys.readouterr().out
    lines = _by_provider(out)
    assert "B/A" in out and lines["eager"].rstrip().endswith("~")
    assert "slower" in lines["triton"] and "1.2" in lines["triton"]


def test_saved_runs_are_found_by_name(tmp_path):
    store = tmp_path / ".benchmarks" / "Linux-CPython-3.11-64bit"
    store.mkdir(parents=True)
    _file(store, "0001_before.json", [_bench("eager", [1.0, 2.0])])
    _file(store, "0002_after.json", [_bench("eager", [1.0, 2.0])])
    assert summary.resolve("0002", str(tmp_path / ".benchmarks")).endswith("0002_after.json")
    with pytest.raises(summary.cli.UserError, match="names 2 saved runs"):
        summary.resolve("000", str(tmp_path / ".benchmarks"))
    with pytest.raises(summary.cli.UserError, match="no run saved"):
        summary.resolve("0003", str(tmp_path / ".benchmarks"))
