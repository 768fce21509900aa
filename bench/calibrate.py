"""Calibrate a preset's rule: its σ, its target and its loss per 100 steps, from seeds of its baseline recipe.

    python -m bench.calibrate --preset track3-cpu --optimizer track3-muon --seeds 8 --jobs 2 --out out/calibrate
    python -m bench.calibrate --preset track3-cpu --seeds 8 --out out/calibrate --val_tokens=32768   # a changed preset

The procedure (what the preset's docstring cites for its target_sigma, target_val_loss and loss_per_100_steps):

  σ       the std of the final val loss of --seeds runs (seeds 1000..) of the baseline at the full budget, every run
          its full budget (its 95% χ² interval is printed beside it).
  target  the baseline's n-seed mean, at the logged validation step nearest --target-frac of the budget (track 3's
          target sits at 70% of the baseline's), plus z·σ/√n, rounded up to --round: the loss the n seeds reach
          there by the track's reaching test. The command checks that they reach it there and not at the validation
          before (else it says so).
  loss per 100 steps   the baseline trained with a budget --short-frac of the full one (the schedule scaled with
          it) for the first --short-seeds seeds, against the same seeds' full runs: the mean rise of the final val
          loss per step cut, × 100 (the track measured its 0.0045 by cutting a record by 200 steps).

The runs are bench.speedrun's (named as it names them, so its leaderboard and bench.noise's init group reuse them
and the other way round); --jobs trains them side by side (bench.jobs). Remaining arguments are train.py overrides
that define the preset being calibrated (e.g. --val_tokens=32768). Writes OUT/calibration.json and prints the
preset's three fields.
"""

import json
import math
import os
import statistics
import sys

from bench import harness, jobs
from bench.noise import chi2_interval
from bench.speedrun import run_args
from bench.verdict import Rule, group_curve
from speedrun import cli


def calibrate(full: list[dict], short: dict, budget: int, short_steps: int, z: float, target_frac: float,
              rounding: float) -> dict:
    """σ, the target and the loss per 100 steps from the full runs' summaries (with "curve", "seed") and the short
    runs' {seed: summary}."""
    finals = [r["final_val_loss"] for r in full]
    n = len(finals)
    sigma = statistics.stdev(finals)
    curve = group_curve([r["curve"] for r in full])
    at = min(curve, key=lambda row: (abs(row["step"] - target_frac * budget), row["step"]))
    exact = at["mean"] + z * sigma / math.sqrt(n)
    target = math.ceil(round(exact / rounding, 9)) * rounding
    rule = Rule(target=target, sigma=sigma, z=z)
    index = curve.index(at)
    before = curve[index - 1] if index else None
    rises = {s: short[s]["final_val_loss"] - next(r["final_val_loss"] for r in full if r["seed"] == s) for s in short}
    per_100 = statistics.fmean(rises.values()) / (budget - short_steps) * 100 if rises else None
    spread = (statistics.stdev(rises.values()) / (budget - short_steps) * 100 / math.sqrt(len(rises))
              if len(rises) > 1 else None)
    return {"n": n, "finals": finals, "sigma": sigma, "sigma_ci95": list(chi2_interval(sigma, n - 1)),
            "target_step": at["step"], "mean_there": at["mean"], "target_exact": exact, "target": target,
            "margin_there": rule.margin(at["mean"], n), "threshold": rule.threshold,
            "reached_there": rule.reaches(at["mean"], n),
            "step_before": before and before["step"], "mean_before": before and before["mean"],
            "reached_before": bool(before) and rule.reaches(before["mean"], n),
            "short_steps": short_steps, "rises": rises, "loss_per_100_steps": per_100, "loss_per_100_steps_se": spread}


def report(c: dict, preset: str, z: float) -> str:
    lines = [f"σ = {c['sigma']:.4f} (95% interval {c['sigma_ci95'][0]:.4f}-{c['sigma_ci95'][1]:.4f}): the std of "
             f"{c['n']} final val losses " + ", ".join(f"{v:.4f}" for v in c["finals"]),
             f"target = {c['target']:g}: the {c['n']}-seed mean at step {c['target_step']} is {c['mean_there']:.4f}; "
             f"+ z·σ/√n = {z:.4g}·{c['sigma']:.4f}/√{c['n']} gives {c['target_exact']:.4f}, rounded up; margin there "
             f"{c['margin_there']:.4f} >= z·σ {c['threshold']:.4f}"
             + (f"; at step {c['step_before']} the mean is {c['mean_before']:.4f}, "
                + ("REACHED already: choose a later --target-frac or finer rounding" if c["reached_before"]
                   else "not reached") if c["step_before"] is not None else "")]
    if c["loss_per_100_steps"] is not None:
        lines.append(f"loss per 100 steps = {c['loss_per_100_steps']:.3f}"
                     + (f" ± {c['loss_per_100_steps_se']:.3f} (standard error)" if c["loss_per_100_steps_se"] else "")
                     + f": final val loss at {c['short_steps']} steps minus at the full budget, seeds "
                     + ", ".join(f"{s} {d:+.4f}" for s, d in c["rises"].items()))
    lines.append(f"preset {preset}: target_val_loss={c['target']:g}, target_sigma={c['sigma']:.4f}"
                 + (f", loss_per_100_steps={c['loss_per_100_steps']:.2f}" if c["loss_per_100_steps"] else ""))
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = cli.ArgumentParser(prog="python -m bench.calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="track3-cpu")
    parser.add_argument("--optimizer", default=None, help="the baseline (default: the preset's recipe)")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--short-seeds", type=int, default=3)
    parser.add_argument("--short-frac", type=float, default=0.8)
    parser.add_argument("--target-frac", type=float, default=0.7)
    parser.add_argument("--round", type=float, default=0.01, help="the target is rounded up to a multiple of this")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="out/calibrate")
    args, extra = parser.parse_known_args(argv)
    if args.seeds < 2:
        parser.error("--seeds must be >= 2 (σ is their std)")
    if not 0 < args.short_frac < 1 or not 0 < args.target_frac <= 1:
        parser.error("--short-frac must lie in (0, 1) and --target-frac in (0, 1]")
    if not any(a.startswith("--threads=") for a in extra):
        extra = [*extra, "--threads=1"]
    from speedrun.config import resolve

    cfg = resolve([f"--preset={args.preset}", *extra])
    optimizer = args.optimizer or cfg.recipe
    if not optimizer:
        parser.error(f"preset {args.preset} names no recipe: pass --optimizer")
    full_cfg = resolve([f"--preset={args.preset}", f"--optimizer={optimizer}", *extra])
    budget = full_cfg.max_steps
    short_steps = round(args.short_frac * budget)
    runs_dir = os.path.join(args.out, "runs")
    planned = [jobs.Job(f"{optimizer} seed {1000 + s}", run_args(args.preset, optimizer, 1000 + s, runs_dir, extra),
                        kind=optimizer, tag=("full", 1000 + s)) for s in range(args.seeds)]
    for s in range(min(args.short_seeds, args.seeds)):
        seed = 1000 + s
        a = run_args(args.preset, optimizer, seed, runs_dir, [*extra, f"--max_steps={short_steps}"])
        a = [x if not x.startswith("--run_name=") else f"{x}-steps{short_steps}" for x in a]
        planned.append(jobs.Job(f"{optimizer} seed {seed}, {short_steps} steps", a, kind=optimizer,
                                tag=("short", seed)))
    to_train = [j for j in planned if jobs.finished_run(j.args) is None]
    print(f"{len(planned)} runs: {len(planned) - len(to_train)} reused, {len(to_train)} to train")
    os.makedirs(args.out, exist_ok=True)
    estimate = jobs.calibrate(to_train[:1], args.out) if to_train else None
    if estimate:
        print("estimate: " + jobs.cpu_hours_line(to_train, estimate, args.jobs))
    outcomes = jobs.Runner(args.jobs, os.path.join(args.out, "logs")).run(planned, estimate=estimate)
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise cli.UserError("; ".join(f"{o.job.label}: {o.error}" for o in failed) + " (run again to retry)")
    full = sorted((o.summary for o in outcomes if o.job.tag[0] == "full"), key=lambda r: r["seed"])
    short = {o.job.tag[1]: o.summary for o in outcomes if o.job.tag[0] == "short"}
    result = calibrate(full, short, budget, short_steps, cfg.target_z, args.target_frac, args.round)
    result.update(command=" ".join(["python", "-m", "bench.calibrate", *argv]), commit=harness.git_commit(),
                  machine=harness.machine_line(harness.machine() | {"threads": full[0]["threads"]}),
                  preset=args.preset, optimizer=optimizer, overrides=extra, budget=budget)
    with open(os.path.join(args.out, "calibration.json"), "w") as f:
        json.dump(result, f, indent=1)
    text = report(result, args.preset, cfg.target_z)
    print(text)
    return result


if __name__ == "__main__":
    cli.run_main(main)
