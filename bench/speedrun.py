"""End-to-end records: steps and wall-clock to a target validation loss, per optimizer, over seeds.

    python -m bench.speedrun --preset cpu --optimizers adamw,muon,normuon --seeds 3 --tune
    torchrun --nproc_per_node=8 -m bench.speedrun --preset gpt2-124m --optimizers muon --seeds 5   # 8×H100

Each optimizer gets the same tuning budget (`--tune`: one seed over the same learning-rate multipliers
of its configured lr, best final val loss wins; the sweep is recorded). `--tune adamw` tunes the baseline
only; the comparison is then tuned AdamW against untuned others, and the report says so. Then every
optimizer runs every seed on the same data order. The report gives mean ± std of steps and seconds to
target, the one-sided t-test p-value that the mean final val loss is below the target (how speedrun
records are validated), and each optimizer's steps-to-target as a ratio of AdamW's.
Writes results.json, records.md, curves.png, steps.png.
Remaining arguments are passed to train.py as overrides (e.g. --max_steps=200).
"""

import argparse
import json
import math
import os
import statistics

import train
from configs import resolve

LR_MULTIPLIERS = (0.5, 1.0, 2.0)


def _run(preset, optimizer, seed, out, extra, lr=None):
    args = [f"--preset={preset}", f"--optimizer={optimizer}", f"--seed={seed}", f"--out_dir={out}", *extra]
    if lr is not None:
        args.append(f"--optim.lr={lr}")
        args.append(f"--run_name={preset}-{optimizer}-lr{lr:g}-s{seed}")
    summary = train.main(args)
    with open(os.path.join(summary["run_dir"], "log.jsonl")) as f:
        summary["curve"] = [(r["step"], r["val_loss"]) for r in map(json.loads, f) if "val_loss" in r]
    return summary


def tune(preset, optimizer, out, extra, multipliers=LR_MULTIPLIERS):
    base = resolve([f"--preset={preset}", f"--optimizer={optimizer}", *extra]).optim.lr
    sweep = []
    for m in multipliers:
        s = _run(preset, optimizer, 0, os.path.join(out, "tune"), [*extra, "--stop_at_target=False"], lr=base * m)
        sweep.append({"lr": base * m, "final_val_loss": s["final_val_loss"]})
    best = min(sweep, key=lambda r: r["final_val_loss"] if math.isfinite(r["final_val_loss"]) else float("inf"))
    return best["lr"], sweep


def one_sided_p(losses, target):
    """p-value of H0: mean final loss >= target, against H1: mean < target (one-sample t-test)."""
    if len(losses) < 2:
        return None
    from scipy import stats

    return float(stats.ttest_1samp(losses, target, alternative="less").pvalue)


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(runs_by_opt, target):
    rows = {}
    for opt, runs in runs_by_opt.items():
        steps = [r["steps_to_target"] for r in runs]
        secs = [r["seconds_to_target"] for r in runs]
        finals = [r["final_val_loss"] for r in runs]
        rows[opt] = {
            "runs": len(runs), "reached": sum(r["reached_target"] for r in runs),
            "steps_mean_std": _mean_std(steps), "seconds_mean_std": _mean_std(secs),
            "final_val_mean_std": _mean_std(finals), "p_value": one_sided_p(finals, target) if target else None,
            "step_avg_ms": statistics.fmean(r["step_avg_ms"] for r in runs),
        }
    base = rows.get("adamw", {}).get("steps_mean_std", (None,))[0]
    for row in rows.values():
        mean = row["steps_mean_std"][0]
        row["steps_ratio_vs_adamw"] = mean / base if base and mean else None
    return rows


def records_table(rows, target, machine) -> str:
    def fmt(ms, spec):
        return "—" if ms[0] is None else f"{ms[0]:{spec}} ± {ms[1]:{spec}}"

    lines = [f"Target val loss {target:.4f}; machine: {machine}", "",
             "| optimizer | runs reaching target | steps to target | seconds to target | final val loss "
             "| p (mean < target) | steps vs AdamW | ms/step |",
             "|---|---|---|---|---|---|---|---|"]
    for opt, r in rows.items():
        p = "—" if r["p_value"] is None else f"{r['p_value']:.2g}"
        ratio = "—" if r["steps_ratio_vs_adamw"] is None else f"{r['steps_ratio_vs_adamw']:.2f}"
        lines.append(f"| {opt} | {r['reached']}/{r['runs']} | {fmt(r['steps_mean_std'], '.1f')} | "
                     f"{fmt(r['seconds_mean_std'], '.1f')} | {fmt(r['final_val_mean_std'], '.4f')} | {p} | {ratio} | "
                     f"{r['step_avg_ms']:.0f} |")
    return "\n".join(lines)


def plot(runs_by_opt, rows, target, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for opt, runs in runs_by_opt.items():
        n = min(len(r["curve"]) for r in runs)
        steps = np.array([s for s, _ in runs[0]["curve"][:n]])
        losses = np.array([[v for _, v in r["curve"][:n]] for r in runs])
        mean, std = losses.mean(0), losses.std(0)
        ax.plot(steps, mean, label=opt)
        ax.fill_between(steps, mean - std, mean + std, alpha=0.25)
    if target:
        ax.axhline(target, color="k", ls="--", lw=1, label=f"target {target:.3f}")
    ax.set(xlabel="step", ylabel="val loss", title="validation loss (mean ± std over seeds)")
    ax.set_ylim(top=min(ax.get_ylim()[1], (target or 0) + 3) if target else None)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "curves.png"), dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(rows)
    means = [rows[o]["steps_mean_std"][0] or 0 for o in names]
    stds = [rows[o]["steps_mean_std"][1] or 0 for o in names]
    ax.bar(names, means, yerr=stds, capsize=4)
    ax.set(ylabel="steps to target", title="steps to target (mean ± std; 0 = not reached)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "steps.png"), dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--optimizers", default="adamw,muon,normuon")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tune", nargs="?", const="all", default=None,
                        help="the same lr sweep before the runs: for every optimizer (bare --tune) or for a comma "
                             "list (--tune adamw: tune the baseline only)")
    parser.add_argument("--target", default=None,
                        help="a val loss, or 'auto': the final val loss of the tuned AdamW sweep (needs --tune and "
                             "adamw first in --optimizers); default: the preset's target_val_loss")
    parser.add_argument("--out", default="out/speedrun")
    args, extra = parser.parse_known_args(argv)
    os.makedirs(args.out, exist_ok=True)
    optimizers = args.optimizers.split(",")
    tuned = set(optimizers if args.tune == "all" else (args.tune or "").split(","))
    if args.target == "auto" and ("adamw" not in tuned or optimizers[0] != "adamw"):
        parser.error("--target auto needs --tune and adamw first in --optimizers")
    target = None
    if args.target is None:
        target = resolve([f"--preset={args.preset}", *extra]).target_val_loss
    elif args.target != "auto":
        target = float(args.target)
    results = {"preset": args.preset, "target": target, "extra_args": extra, "tuning": {}, "runs": {}}
    for opt in optimizers:
        lr = None
        if opt in tuned:
            lr, sweep = tune(args.preset, opt, args.out, extra)
            results["tuning"][opt] = {"chosen_lr": lr, "sweep": sweep}
            if target is None:  # --target auto: the tuned AdamW baseline's final val loss (seed 0, full budget)
                target = min(r["final_val_loss"] for r in sweep)
                results["target"] = target
                print(f"target val loss set by tuned AdamW (lr {lr:g}): {target:.4f}")
        run_args = [*extra, f"--target_val_loss={target}"]
        results["runs"][opt] = [_run(args.preset, opt, 1000 + s, os.path.join(args.out, "runs"), run_args, lr=lr)
                                for s in range(args.seeds)]
    rows = aggregate(results["runs"], target)
    results["aggregate"] = rows
    machine = results["runs"][next(iter(results["runs"]))][0]["device"]
    threads = results["runs"][next(iter(results["runs"]))][0]["threads"]
    table = records_table(rows, target, f"{machine}, {threads} threads, load {os.getloadavg()[0]:.2f}")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.out, "records.md"), "w") as f:
        f.write(table + "\n")
    plot(results["runs"], rows, target, args.out)
    print(table)
    return results


if __name__ == "__main__":
    main()
