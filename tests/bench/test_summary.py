"""bench.summary: speedup against the eager provider of the same kernel, case and mode."""

from bench import summary


def test_rows_and_speedup():
    def bench(provider, ms, mode="full"):
        return {"name": f"test_x[{provider}]", "group": "relu2_mlp", "stats": {"median": ms / 1e3},
                "extra_info": {"provider": provider, "case": "124m", "mode": mode, "ms_median": ms,
                               "tflops": 1.0, "pct_roofline": None, "device": "cpu"}}

    untimed = {"name": "test_x[triton]", "group": "relu2_mlp", "stats": {"median": 9.0},
               "extra_info": {"provider": "triton", "case": "124m", "mode": "full"}}
    table = summary.rows({"benchmarks": [bench("eager", 4.0), bench("compile", 2.0), bench("eager", 1.0, "fwd"),
                                         untimed]})
    speed = {(r["provider"], r["mode"]): r["speedup"] for r in table}
    assert speed[("compile", "full")] == 2.0 and speed[("eager", "fwd")] == 1.0
    # pytest-benchmark's own stats are not a kernel time (on a GPU they time the do_bench call): never read
    assert table[-1]["ms"] is None and speed[("triton", "full")] is None
    text = summary.format_rows(table)
    assert "relu2_mlp" in text and "device: cpu" in text
