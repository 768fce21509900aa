"""The whole leaderboard of a preset from the results files of bench.speedrun, in one command.

    python -m bench.leaderboard out/*/results.json --out docs/track3_cpu/
    python -m bench.leaderboard docs/track3_cpu/results.json --out docs/track3_cpu/ --baseline track3-muon

Reads every results.json given (one preset; each optimizer's seeds from one file, as bench.speedrun --from-results
judges them) and writes into --out:

  leaderboard.md   the table, ranked by the step at which each recipe's seed mean reaches the target (the track's
                   reaching test), with track 3's published result number and step count beside it; the pairwise
                   verdict matrix by the track's rule; the agreement of the proxy's order with the published one
                   (bench.agreement: Kendall τ-b and Spearman ρ with bootstrap intervals over seeds); and, for every
                   file, the command that trained its runs, its commit and machine (CPU, torch's CPU capability,
                   threads, load); then this command and its commit
  records.md, results.json, curves.png, steps.png   as bench.speedrun --from-results writes them
  agreement.png    proxy steps to target against published steps, one point per recipe

The rule is the one the files recorded (flags override it, and say so: bench.verdict.recorded_rule).
"""

import json
import math
import os
import sys

from bench import agreement, harness, speedrun, verdict
from bench import results as results_file
from speedrun import cli


def verdict_matrix(rows: dict, rule: verdict.Rule, order: list[str]) -> list[str]:
    """Markdown: the cell in row A, column B is the pairwise statistic of A over B, (Δloss + Δsteps/100 · loss per
    100 steps)/√(1/n_A + 1/n_B), positive when A is better; bold and ✓ when it clears z·σ."""
    header = "| better ↓ than → | " + " | ".join(order) + " |"
    lines = [header, "|---" * (len(order) + 1) + "|"]
    for a in order:
        cells = []
        for b in order:
            if a == b:
                cells.append("—")
                continue
            lhs = rule.pairwise(verdict.Point(**rows[b]["point"]), verdict.Point(**rows[a]["point"]))
            cells.append(f"**{lhs:+.4f} ✓**" if lhs >= rule.threshold else f"{lhs:+.4f}")
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return lines


def _rank_key(row: dict):
    return (0, row["target_step"], row["point"]["mean"]) if row["reached"] else (1, math.inf, row["point"]["mean"])


def leaderboard_md(results: dict, rows: dict, rule: verdict.Rule, pubs: dict, agree: dict, command: str,
                   commit: str) -> str:
    order = sorted(rows, key=lambda o: _rank_key(rows[o]))
    params, sources = results["rule_params"], results.get("rule_sources", {})
    lines = [f"# {results.get('preset')} leaderboard", "",
             f"Target val loss {params['target']:g}; σ = {params['sigma']:g}, z = {params['z']:.4g}, "
             f"z·σ = {rule.threshold:.4g}; loss per 100 steps {params['loss_per_100_steps']:g} "
             f"({verdict.rule_sources_text(sources)}). n seeds reach the target at the "
             "earliest logged step where (target − mean)·√n ≥ z·σ; every seed trains its full budget.", "",
             "| rank | recipe | track 3 result | published steps | n | target reached at step | val loss there "
             "| final step | final val loss | steps vs baseline |", "|---|---|---|---|---|---|---|---|---|---|"]
    for i, opt in enumerate(order, 1):
        r, pub = rows[opt], pubs.get(opt)
        step = str(r["target_step"]) if r["reached"] else "not reached"
        there = "—" if r["val_at_target"] is None else f"{r['val_at_target'][0]:.4f} ± {r['val_at_target'][1]:.4f}"
        ratio = "—" if r["steps_vs_baseline"] is None else f"{r['steps_vs_baseline']:.2f}"
        lines.append(f"| {i} | {opt} | {'#' + str(pub[0]) if pub else '—'} | {pub[1] if pub else '—'} | {r['n']} | "
                     f"{step} | {there} | {r['final_step']} | {r['final_val'][0]:.4f} ± {r['final_val'][1]:.4f} | "
                     f"{ratio} |")
    pairs = verdict.pairwise_table(rows, rule)
    significant = sum(p["significant"] for p in pairs)
    lines += ["", f"Pairwise verdicts by the track's rule (each recipe at its target step, or at its final step where "
                  f"it does not reach the target): {significant} of {len(pairs)} pairs differ significantly.", "",
              *verdict_matrix(rows, rule, order), "",
              agreement.format_agreement(agree), "", "![validation loss](curves.png)", "",
              "## Where each figure comes from", ""]
    for s in results.get("sources") or [results]:
        opts = s.get("optimizers") or []
        threads = {r.get("threads") for o in opts for r in results["runs"].get(o, [])} - {None}
        m = (s.get("machine") or {}) | speedrun.run_threads(threads)
        where = f"{harness.machine_line(m)} at start" if "cpu" in m else "machine not recorded"
        lines.append(f"- {', '.join(opts) or '?'}: `{' '.join(s.get('command') or ['not recorded'])}` "
                     f"(`{s.get('file', '?')}`), commit {s.get('commit')}; {where}")
    lines += ["", f"This page: `{command}`, commit {commit}."]
    return "\n".join(lines)


def plot_agreement(agree: dict, out: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    reached = [r for r in agree["recipes"] if r["reached"]]
    never = [r for r in agree["recipes"] if not r["reached"]]
    top = max([r["proxy_steps"] for r in reached] or [1])
    ax.scatter([r["published_steps"] for r in reached], [r["proxy_steps"] for r in reached])
    ax.scatter([r["published_steps"] for r in never], [top * 1.15] * len(never), marker="^", color="C3",
               label="target not reached (ranked last)")
    for r in agree["recipes"]:
        ax.annotate(r["recipe"], (r["published_steps"], r["proxy_steps"] or top * 1.15), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    title = "proxy vs track 3"
    if agree.get("tau_b") is not None:
        title += f": τ-b {agree['tau_b']:+.2f}, ρ {agree['rho']:+.2f}"
    ax.set(xlabel="track 3: published steps to 3.28", ylabel="proxy: steps to the target", title=title)
    if never:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "agreement.png"), dpi=120)
    plt.close(fig)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = cli.ArgumentParser(prog="python -m bench.leaderboard", description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="results.json files of bench.speedrun (one preset)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--baseline", default=None, help="steps ratios against it (default: the files' baseline)")
    parser.add_argument("--sigma", type=float, default=None)
    parser.add_argument("--z", type=float, default=None)
    parser.add_argument("--loss-per-100-steps", type=float, default=None)
    parser.add_argument("--target", type=float, default=None)
    parser.add_argument("--val-slices", type=int, default=0,
                        help="judge on the mean of the first K val slices the runs logged (bench.speedrun "
                             "--val-slices); needs --target, --sigma and --loss-per-100-steps")
    parser.add_argument("--boot", type=int, default=2000, help="bootstrap resamples for the agreement intervals")
    args = parser.parse_args(argv)
    results = results_file.load_results(args.results)
    if args.val_slices:
        if None in (args.target, args.sigma, args.loss_per_100_steps):
            parser.error("--val-slices judges another val set than the recorded rule's: give --target, --sigma and "
                         "--loss-per-100-steps")
        results_file.use_val_slices(results, args.val_slices)
    flags = {"target": args.target, "sigma": args.sigma, "z": args.z, "loss_per_100_steps": args.loss_per_100_steps}
    params, sources, notes = verdict.recorded_rule(results, flags)
    if params["target"] is None:
        raise cli.UsageError("no target val loss recorded in these files: pass --target VALUE")
    rule = verdict.Rule(**params)
    results.update(rule_params=params, rule_sources=sources, pairs="all")
    results["baseline"] = args.baseline or results.get("baseline") or next(iter(results["runs"]))
    if results["baseline"] not in results["runs"]:
        raise cli.UsageError(f"--baseline {results['baseline']} has no runs in these files")
    command = " ".join(["python", "-m", "bench.leaderboard", *argv])
    commit = harness.git_commit()
    results["leaderboard"] = {"command": command, "commit": commit}
    os.makedirs(args.out, exist_ok=True)
    for line in notes:
        print(line)
    speedrun.report(results, args.out)  # records.md, results.json, curves.png, steps.png
    rows = results["aggregate"]
    pubs = {opt: agreement.published(opt) for opt in rows}
    agree = agreement.agreement(results["runs"], rule, {o: p[1] for o, p in pubs.items() if p}, boot=args.boot)
    results["agreement"] = agree
    text = leaderboard_md(results, rows, rule, pubs, agree, command, commit)
    with open(os.path.join(args.out, "leaderboard.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    plot_agreement(agree, args.out)
    print(text)
    return results


if __name__ == "__main__":
    cli.run_main(main)
