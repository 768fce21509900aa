"""Kernel benchmark results as one table, and A/B comparisons between runs or providers with their spread.

    python -m bench.summary out/bench.json                    # one run: each provider against eager
    python -m bench.summary out/a.json out/b.json             # two runs (e.g. two commits): B/A per row
    python -m bench.summary 0001 0002                         # runs saved with --benchmark-save, from .benchmarks/

Each row is one kernel (the op a bench times), case, mode and provider, with pytest-benchmark's median time per
call and its interquartile range, and the ratio of medians against a reference: the first file's same row
(several files) or the same file's `--baseline` provider (one file). The ratio's spread is a 95% bootstrap
interval (the rounds of both rows resampled, 2000 times) when the JSON holds each round's time
(--benchmark-json always does; --benchmark-save with --benchmark-save-data) and both have at least 5 rounds; with
fewer, the interval the two whole ranges allow, [min/max_ref, max/min_ref]; without the rounds, the interval the
two interquartile ranges allow, [q1/q3_ref, q3/q1_ref]. A row is marked faster or slower only where that interval
excludes 1: where the spreads overlap, the table says "~" (no difference shown), whatever the medians say.
"""

import argparse
import glob
import os

import numpy as np

from speedrun import cli

BOOTSTRAP = 2000
LEVEL = 0.95
MIN_BOOTSTRAP_ROUNDS = 5  # fewer rounds: the whole ranges decide, [min/max_ref, max/min_ref]


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------


def resolve(spec: str, storage: str = ".benchmarks") -> str:
    """A path to a pytest-benchmark JSON file: `spec` itself when it is a file, else the run saved under `storage`
    whose file name starts with it (e.g. 0001, 0001_before, as `pytest-benchmark compare` takes them)."""
    if os.path.isfile(spec):
        return spec
    matches = sorted(glob.glob(os.path.join(storage, "*", f"{spec}*.json")))
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise cli.UserError(f"{spec}: no such file, and no run saved under {storage}/ starts with it (save one with "
                            "pytest bench/ --benchmark-save=NAME, or pass --storage)")
    raise cli.UserError(f"{spec} names {len(matches)} saved runs ({', '.join(matches)}): give more of the name")


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


def _case(info: dict, b: dict) -> str:
    case = info.get("case") or b.get("param") or ""
    shape = info.get("shape")
    if isinstance(shape, dict):
        shape = "×".join(str(v) for v in shape.values())
    elif isinstance(shape, (list, tuple)):
        shape = "×".join(str(v) for v in shape)
    return f"{case} ({shape})" if shape and str(shape).replace("×", "x") not in str(case) else str(case)


def rows(data: dict) -> list[dict]:
    """One dict per benchmark: kernel (the op, not the test function), case, mode, provider, timing statistics in
    ms (median, q1, q3, rounds, the per-round data when saved) and the derived figures."""
    out = []
    for b in data["benchmarks"]:
        info, stats = b.get("extra_info") or {}, b.get("stats") or {}
        ms = {k: 1e3 * stats[k] if stats.get(k) is not None else None for k in ("median", "q1", "q3", "min")}
        out.append({
            "kernel": info.get("op") or b.get("group") or b["name"].split("[")[0],
            "case": _case(info, b),
            "mode": str(info.get("mode") or ""),
            "provider": str(info.get("provider") or b.get("param") or b["name"]),
            "ms": ms["median"], "q1": ms["q1"], "q3": ms["q3"], "rounds": stats.get("rounds"),
            "data": [1e3 * v for v in stats["data"]] if stats.get("data") else None,
            "tflops": info.get("tflops"), "pct": info.get("pct_roofline"),
        })
    return out


def machine_line(data: dict) -> str:
    """The run's machine, threads and load (bench/conftest.py's machine_info), commit and date."""
    m = (data.get("machine_info") or {}).get("speedrun") or {}
    commit = m.get("commit") or (data.get("commit_info") or {}).get("id", "?")[:12]
    when = str(data.get("datetime", "?"))[:19]
    if not m:
        return f"commit {commit}, {when} (no machine record: not written by bench/)"
    line = (f"{m.get('cpu')}, {m.get('cores')} cores, {m.get('cpu_capability')}, {m.get('threads')} threads, "
            f"load {m.get('loadavg_1m_start')} at start / {m.get('loadavg_1m_end')} at end")
    if m.get("gpu"):
        line += f", GPU {m['gpu']}"
    return f"{line}; torch {m.get('torch')}, triton {m.get('triton')}; commit {commit}, {when}"


# ---------------------------------------------------------------------------------------------------
# Ratios and their spread
# ---------------------------------------------------------------------------------------------------


def _bootstrap_medians(values, rng) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    out = np.empty(BOOTSTRAP)
    chunk = max(1, 2_000_000 // len(values))  # bounded memory for long runs
    for start in range(0, BOOTSTRAP, chunk):
        n = min(chunk, BOOTSTRAP - start)
        out[start:start + n] = np.median(rng.choice(values, size=(n, len(values))), axis=1)
    return out


def ratio(row: dict, ref: dict, seed: int = 0) -> dict | None:
    """row's median / ref's median, its interval (lo, hi), the method, and the verdict: "faster" or "slower" when
    the interval excludes 1, else "~". None when either has no time."""
    if not row.get("ms") or not ref.get("ms"):
        return None
    value = row["ms"] / ref["ms"]
    if row.get("data") and ref.get("data") and min(len(row["data"]), len(ref["data"])) < MIN_BOOTSTRAP_ROUNDS:
        lo, hi = min(row["data"]) / max(ref["data"]), max(row["data"]) / min(ref["data"])
        method = "range"
    elif row.get("data") and ref.get("data"):
        rng = np.random.default_rng(seed)
        r = _bootstrap_medians(row["data"], rng) / _bootstrap_medians(ref["data"], rng)
        lo, hi = (float(v) for v in np.quantile(r, [(1 - LEVEL) / 2, (1 + LEVEL) / 2]))
        method = "bootstrap"
    elif None not in (row.get("q1"), row.get("q3"), ref.get("q1"), ref.get("q3")) and ref["q1"] > 0:
        lo, hi = row["q1"] / ref["q3"], row["q3"] / ref["q1"]
        method = "IQR"
    else:
        return {"value": value, "lo": None, "hi": None, "method": "none", "verdict": "?"}
    verdict = "faster" if hi < 1 else "slower" if lo > 1 else "~"
    return {"value": value, "lo": lo, "hi": hi, "method": method, "verdict": verdict}


def _key(r: dict) -> tuple:
    return r["kernel"], r["case"], r["mode"], r["provider"]


# ---------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------


def _f(v, spec):
    return "—" if v is None else format(v, spec)


def _time(r: dict | None) -> str:
    if not r or r.get("ms") is None:
        return "—"
    spread = f" [{r['q1']:.4g}–{r['q3']:.4g}]" if r.get("q1") is not None and r.get("q3") is not None else ""
    return f"{r['ms']:.4g}{spread}"


def _ratio(x: dict | None) -> str:
    if x is None:
        return "—"
    interval = f" [{x['lo']:.3f}–{x['hi']:.3f}]" if x["lo"] is not None else ""
    return f"{x['value']:.3f}{interval} {x['verdict']}"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    return [line, "-" * len(line)] + ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in body]


def one_run(table: list[dict], baseline: str = "eager") -> str:
    """One file: every row's time, and its ratio to the same kernel/case/mode's `baseline` provider."""
    refs = {_key(r)[:3]: r for r in table if r["provider"] == baseline}
    body = []
    for r in table:
        ref = refs.get(_key(r)[:3])
        x = ratio(r, ref) if ref is not None and ref is not r else None
        body.append([r["kernel"], r["case"], r["mode"], r["provider"], _time(r), str(r["rounds"] or "—"),
                     _f(r["tflops"], ".3g"), _f(r["pct"], ".1f"), _ratio(x)])
    return "\n".join(_table(["kernel", "case", "mode", "provider", "ms median [q1–q3]", "rounds", "TFLOP/s",
                             "%roof", f"time / {baseline} [95% interval]"], body))


def several_runs(tables: list[list[dict]], labels: list[str]) -> str:
    """Several files: each row's time in every file and its ratio to the first file's same row."""
    keys = list(dict.fromkeys(_key(r) for t in tables for r in t))
    by_file = [{_key(r): r for r in t} for t in tables]
    header = ["kernel", "case", "mode", "provider"] + [f"{lab} ms [q1–q3]" for lab in labels]
    header += [f"{lab}/{labels[0]} [95% interval]" for lab in labels[1:]]
    body = []
    for key in keys:
        cells = [by_file_i.get(key) for by_file_i in by_file]
        ref = cells[0]
        body.append([*key, *(_time(c) for c in cells),
                     *(_ratio(ratio(c, ref) if c is not None and ref is not None else None) for c in cells[1:])])
    return "\n".join(_table(header, body))


def report(paths: list[str], baseline: str = "eager") -> str:
    datas = [load(p) for p in paths]
    tables = [rows(d) for d in datas]
    labels = ["A", "B", "C", "D", "E", "F", "G", "H"][:len(paths)] if len(paths) <= 8 else \
        [f"R{i + 1}" for i in range(len(paths))]
    lines = [f"{lab}: {p} — {machine_line(d)}" for lab, p, d in zip(labels, paths, datas)]
    lines.append("")
    if len(paths) == 1:
        lines.append(one_run(tables[0], baseline))
    else:
        lines.append(several_runs(tables, labels))
    lines += ["", "Ratios are of medians (time per call; < 1 is faster). The interval: 95% bootstrap over the rounds "
              "(both rows with >= 5 rounds), else the whole ranges [min/max_ref, max/min_ref], else (no rounds "
              "saved) the IQRs [q1/q3_ref, q3/q1_ref]. faster/slower only where it excludes 1; ~ where the "
              "spreads overlap."]
    return "\n".join(lines)


def main(argv=None):
    doc = __doc__.split("\n\n")
    parser = cli.ArgumentParser(prog="python -m bench.summary", description="\n\n".join(doc[:2]), epilog=doc[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="a pytest-benchmark JSON file, or a run saved under --storage (e.g. 0001)")
    parser.add_argument("--baseline", default="eager",
                        help="with one run: the provider every other is compared with (default eager)")
    parser.add_argument("--storage", default=".benchmarks",
                        help="where pytest --benchmark-save keeps runs (default .benchmarks)")
    args = parser.parse_args(argv)
    print(report([resolve(r, args.storage) for r in args.runs], args.baseline))


if __name__ == "__main__":
    cli.run_main(main)
