"""One table from a pytest-benchmark JSON: kernel, shape, provider, ms, TFLOP/s, % of roofline, speedup vs eager.

    pytest bench/ --benchmark-json=out/bench.json && python -m bench.summary out/bench.json
"""

import argparse
import json


def rows(data: dict) -> list[dict]:
    out = []
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        out.append({
            "kernel": b.get("group") or b["name"].split("[")[0],
            "case": info.get("case") or info.get("shape") or b.get("param", ""),
            "mode": info.get("mode", ""),
            "provider": info.get("provider", ""),
            # The harness's one timer (bench.harness.measure); pytest-benchmark's own stats time the do_bench call
            # on a GPU, not the kernel, so they are not read.
            "ms": info.get("ms_median"),
            "tflops": info.get("tflops"),
            "pct": info.get("pct_roofline"),
            "device": info.get("device", ""),
        })
    eager = {(r["kernel"], str(r["case"]), r["mode"]): r["ms"] for r in out if r["provider"] == "eager"}
    for r in out:
        base = eager.get((r["kernel"], str(r["case"]), r["mode"]))
        r["speedup"] = base / r["ms"] if base and r["ms"] else None
    return out


def format_rows(table: list[dict]) -> str:
    def f(v, spec):
        return "—" if v is None else format(v, spec)

    header = (f"{'kernel':<28} {'case':<26} {'mode':<8} {'provider':<10} {'ms':>9} {'TFLOP/s':>8} {'%roof':>6} "
              f"{'vs eager':>8}")
    lines = [header, "-" * len(header)]
    for r in table:
        lines.append(f"{r['kernel'][:28]:<28} {str(r['case'])[:26]:<26} {r['mode'][:8]:<8} {r['provider'][:10]:<10} "
                     f"{f(r['ms'], '.3f'):>9} {f(r['tflops'], '.2f'):>8} {f(r['pct'], '.1f'):>6} "
                     f"{f(r['speedup'], '.2f'):>8}")
    devices = sorted({r["device"] for r in table if r["device"]})
    lines.append(f"device: {', '.join(devices) or 'unknown'}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_path")
    args = parser.parse_args(argv)
    with open(args.json_path) as f:
        print(format_rows(rows(json.load(f))))


if __name__ == "__main__":
    main()
