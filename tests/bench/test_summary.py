"""bench.summary: speedup against the eager provider of the same kernel, case and mode."""

from bench import summary


def test_rows_and_speedup():
    def bench(provider, ms, mode="full"):
        return {"name": f"test_x[{provider}]", "group": "relu2_mlp", "stats": {"median": ms / 1e3},
                "extra_info": {"op": "relu2_mlp", "provider": provider, "case": "124m", "mode": mode,
                               "tflops": 1.0, "pct_roofline": None}}

    table = summary.rows({"benchmarks": [bench("eager", 4.0), bench("compile", 2.0), bench("eager", 1.0, "fwd")],
                          "machine_info": {"speedrun": {"machine_line": "cpu"}}})
    speed = {(r["provider"], r["mode"]): r["speedup"] for r in table}
    assert speed[("compile", "full")] == 2.0 and speed[("eager", "fwd")] == 1.0
    text = summary.format_rows(table)
    assert "relu2_mlp" in text and "device: cpu" in text
