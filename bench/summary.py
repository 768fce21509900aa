"""One table from a pytest-benchmark JSON: kernel, shape, provider, ms, TFLOP/s, % of roofline, speedup vs eager.

    pytest bench/ --benchmark-json=out/bench.json && python -m bench.summary out/bench.json
"""


from speedrun import cli


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


def load(path) -> dict:
    """A pytest-benchmark JSON file; a missing, unreadable or foreign file is a UserError naming it."""
    data = cli.read_json(path, what="the benchmark file", hint="pass the file written by pytest --benchmark-json")
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise cli.UserError(f"{path} has no 'benchmarks' list: it is not a pytest-benchmark JSON file (write one "
                            "with pytest bench/ --benchmark-json=PATH)")
    for i, b in enumerate(data["benchmarks"]):
        if not isinstance(b, dict) or "name" not in b:
            raise cli.UserError(f"{path}: benchmarks[{i}] has no 'name': not a pytest-benchmark record")
    return data


def main(argv=None):
    parser = cli.ArgumentParser(prog="python -m bench.summary", description=__doc__.splitlines()[0])
    parser.add_argument("json_path")
    args = parser.parse_args(argv)
    print(format_rows(rows(load(args.json_path))))


if __name__ == "__main__":
    cli.run_main(main)
