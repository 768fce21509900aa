"""End-to-end records: the step at which each optimizer reaches the target val loss over seeds, and which
optimizers are significantly better than which, by the rules of modded-nanogpt's optimization track.

    python -m bench.speedrun --preset cpu --optimizers adamw,muon,normuon --seeds 3 --tune
    torchrun --nproc_per_node=8 -m bench.speedrun --preset gpt2-124m --optimizers muon --seeds 5   # 8×H100
    python -m bench.speedrun --from-results out/speedrun/results.json --sigma 0.01   # re-judge saved runs
    python -m bench.speedrun --from-results out/a/results.json,out/b/results.json    # judge two runs' files together

The rules (records/track_3_optimization/README.md, "Rules" and "Pairwise statistical significance"):

  Reaching the target. n runs (seeds, none left out) reach the target at step s when their mean val loss
  there satisfies  (target - mean)·√n >= z·σ : a one-sided z-test with the seed noise σ known (the track:
  σ = 0.0013 and z·σ = 0.004, which it calls 3.09σ, p < .001). One run needs a loss below 3.276, four an
  average below 3.278. Runs are never stopped early on their val loss: every seed trains the full budget
  (--stop_at_target=False) and s is the earliest *logged* validation step at which the mean passes, the
  same rule for every seed.

  Pairwise. A new result (s_new steps, mean m_new over n_new seeds) is significantly better than an old one
  when  (Δloss + Δsteps/100 · loss_per_100_steps) / √(1/n_old + 1/n_new) >= z·σ,  Δloss = m_old - m_new,
  Δsteps = s_old - s_new, each mean taken at its own step count; loss_per_100_steps converts saved steps
  into val loss (the track measured 0.0045: cutting one record by 200 steps cost 0.0091).

The target, σ, z and loss_per_100_steps are parameters with the track's values as defaults. σ comes from
the config's `target_sigma` when it has that field (set it with --target_sigma=..., which the runs record
too), else from --sigma; a track with another noise level (the CPU track) must set its own. The report also
gives each optimizer's observed seed spread beside σ: a spread well above σ means the z-test is overconfident.

Each optimizer gets the same tuning budget (`--tune`: one seed over the same learning-rate multipliers of
its configured lr, --lr-multipliers, default 0.5,1,2; best final val loss wins; the sweep is recorded; a sweep
whose best point sits at an edge should be widened). A run whose directory already holds it finished with the
same config is reused, not trained again, and one stopped with its checkpoint is resumed (an interrupted command,
or a widened sweep, resumes cheaply); a directory holding a run made with other options is refused, never
overwritten.
`--tune adamw` tunes the baseline only; the comparison is then tuned AdamW against untuned others, and the
report says so. Then every optimizer runs every seed on the same data order. Writes results.json (with the
command line, commit and machine), records.md, curves.png and steps.png. Remaining arguments are train.py
overrides (e.g. --max_steps=200).
"""

import dataclasses
import itertools
import json
import math
import os
import statistics
import sys

from bench import command_help, harness
from bench.results import load_results
from speedrun import cli

LR_MULTIPLIERS = (0.5, 1.0, 2.0)


@dataclasses.dataclass(frozen=True)
class Rule:
    """The track's statistics. `threshold` = z·σ, the margin both tests must clear."""

    target: float = 3.28
    sigma: float = 0.0013  # seed-to-seed std of the final val loss, assumed known
    z: float = 0.004 / 0.0013  # the track's 0.004 in units of its σ (it writes 3.09σ, p < .001; 3.077σ exactly)
    loss_per_100_steps: float = 0.0045  # val loss that 100 more steps of the baseline buy

    def __post_init__(self):
        for name in ("sigma", "z", "loss_per_100_steps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise cli.ConfigError(f"{name} must be a positive number, got {value}")
        if not math.isfinite(self.target):
            raise cli.ConfigError(f"target must be a finite val loss, got {self.target}")

    @property
    def threshold(self) -> float:
        return self.z * self.sigma

    def margin(self, mean: float, n: int) -> float:
        """(target - mean)·√n: the left-hand side of the reaching test."""
        return (self.target - mean) * math.sqrt(n)

    def reaches(self, mean: float, n: int) -> bool:
        return self.margin(mean, n) >= self.threshold  # False for a NaN mean

    def pairwise(self, old: "Point", new: "Point") -> float:
        """(Δloss + Δsteps/100·loss_per_100_steps)/√(1/n_old + 1/n_new), positive when `new` is better."""
        d_loss = old.mean - new.mean
        d_steps = old.steps - new.steps
        return (d_loss + d_steps / 100 * self.loss_per_100_steps) / math.sqrt(1 / old.n + 1 / new.n)

    def significantly_better(self, old: "Point", new: "Point") -> bool:
        return self.pairwise(old, new) >= self.threshold


@dataclasses.dataclass(frozen=True)
class Point:
    """A result: mean val loss over n seeds at a step count."""

    steps: int
    mean: float
    n: int


def _mean_std(values):
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def group_curve(curves) -> list[dict]:
    """Per logged validation step (those every run logged, in order): mean and std of val loss over the runs,
    and the mean training seconds to that step. `curves` holds one list of log records per run."""
    if not curves or any(not c for c in curves):
        raise ValueError("every run needs at least one logged validation step")
    by_run = [{r["step"]: r for r in c} for c in curves]
    common = sorted(set.intersection(*(set(b) for b in by_run)))
    rows = []
    for step in common:
        losses = [b[step]["val_loss"] for b in by_run]
        mean, std = _mean_std(losses)
        times = [b[step].get("train_time_s") for b in by_run]
        rows.append({"step": step, "mean": mean, "std": std, "n": len(losses),
                     "seconds": statistics.fmean(times) if None not in times else None})
    return rows


def target_step(curve: list[dict], rule: Rule) -> dict | None:
    """The earliest row of group_curve(...) whose mean passes the reaching test, or None."""
    return next((row for row in curve if rule.reaches(row["mean"], row["n"])), None)


def aggregate(runs_by_opt: dict, rule: Rule, baseline: str | None = None) -> dict:
    """Per optimizer: n, the step it reaches the target (None if not), mean ± std val loss there and at the
    end, its margin, seconds to that step, ms/step; and steps as a ratio of the baseline's."""
    rows = {}
    for opt, runs in runs_by_opt.items():
        curve = group_curve([r["curve"] for r in runs])
        hit, end = target_step(curve, rule), curve[-1]
        at = hit or end  # the result compared pairwise: at its target step, else at its final step
        rows[opt] = {
            "n": len(runs), "reached": hit is not None,
            "target_step": hit["step"] if hit else None,
            "val_at_target": (hit["mean"], hit["std"]) if hit else None,
            "seconds_to_target": hit["seconds"] if hit else None,
            "final_step": end["step"], "final_val": (end["mean"], end["std"]),
            "margin": rule.margin(at["mean"], at["n"]),
            "point": dataclasses.asdict(Point(at["step"], at["mean"], at["n"])),
            "step_avg_ms": statistics.fmean(r["step_avg_ms"] for r in runs),
            "curve": curve,
        }
    base = rows.get(baseline, {}).get("target_step")
    for row in rows.values():
        row["steps_vs_baseline"] = row["target_step"] / base if base and row["target_step"] else None
    return rows


def pairwise_table(rows: dict, rule: Rule, baseline: str | None = None) -> list[dict]:
    """Every pair (or each optimizer against `baseline`), oriented so that `better` has the larger claim."""
    names = list(rows)
    pairs = [(baseline, o) for o in names if o != baseline] if baseline else list(itertools.combinations(names, 2))
    out = []
    for a, b in pairs:
        pa, pb = Point(**rows[a]["point"]), Point(**rows[b]["point"])
        lhs = rule.pairwise(pa, pb)
        old, new, lhs = (a, b, lhs) if lhs >= 0 else (b, a, -lhs)
        po, pn = Point(**rows[old]["point"]), Point(**rows[new]["point"])
        out.append({"better": new, "than": old, "d_loss": po.mean - pn.mean, "d_steps": po.steps - pn.steps,
                    "lhs": lhs, "significant": lhs >= rule.threshold,
                    "at_final_step": [o for o in (new, old) if not rows[o]["reached"]]})
    return out


def records_table(rows: dict, pairs: list[dict], rule: Rule, machine: str, baseline: str | None = None,
                  tuned: tuple = ()) -> str:
    def pm(ms, spec):
        return "—" if ms is None else f"{ms[0]:{spec}} ± {ms[1]:{spec}}"

    lines = [f"Target val loss {rule.target:.4f}. Reached at the earliest logged step where (target − mean)·√n ≥ "
             f"z·σ = {rule.z:.3f} × {rule.sigma:g} = {rule.threshold:.4g}; all seeds run the full budget.",
             f"Machine: {machine}", ""]
    untuned = [o for o in rows if o not in tuned]
    if tuned and untuned:
        lines[-1:] = [f"Learning rate tuned for {', '.join(tuned)} only; {', '.join(untuned)} ran at their "
                      "configured lr: the comparison is not on an equal tuning budget.", ""]
    lines += ["| optimizer | n | target reached at step | margin (target−mean)·√n | val loss there | seconds there "
              f"| final step | final val loss | steps vs {baseline or 'baseline'} | ms/step |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for opt, r in rows.items():
        step = str(r["target_step"]) if r["reached"] else "not reached"
        secs = "—" if r["seconds_to_target"] is None else f"{r['seconds_to_target']:.1f}"
        ratio = "—" if r["steps_vs_baseline"] is None else f"{r['steps_vs_baseline']:.2f}"
        lines.append(f"| {opt} | {r['n']} | {step} | {r['margin']:.4f} | {pm(r['val_at_target'], '.4f')} | {secs} | "
                     f"{r['final_step']} | {pm(r['final_val'], '.4f')} | {ratio} | {r['step_avg_ms']:.0f} |")
    if pairs:
        lines += ["", f"Pairwise: (Δloss + Δsteps/100 × {rule.loss_per_100_steps:g}) / √(1/n₁ + 1/n₂) ≥ "
                      f"{rule.threshold:.4g}, each at its target step (at its final step where marked).", "",
                  "| better | than | Δloss | Δsteps | LHS | significant |", "|---|---|---|---|---|---|"]
        for p in pairs:
            mark = {o: f"{o} (final step, target not reached)" for o in p["at_final_step"]}
            lines.append(f"| {mark.get(p['better'], p['better'])} | {mark.get(p['than'], p['than'])} | "
                         f"{p['d_loss']:+.4f} | {p['d_steps']:+d} | {p['lhs']:.4f} | "
                         f"{'yes' if p['significant'] else 'no'} |")
    spread = {o: r["final_val"][1] for o, r in rows.items() if r["n"] > 1}
    if spread:
        lines += ["", "Seed spread of the final val loss (std) beside the assumed σ "
                      f"{rule.sigma:g}: " + ", ".join(f"{o} {s:.4f}" for o, s in spread.items())
                  + (" — well above σ: the z-test is overconfident; set σ for this track."
                     if max(spread.values()) > 2 * rule.sigma else ".")]
    return "\n".join(lines)


def plot(rows: dict, rule: Rule, out: str) -> bool:
    """curves.png and steps.png in `out`; without matplotlib, one line saying so (the rest is written) and False."""
    try:
        import matplotlib
    except ImportError:
        print("plots skipped: matplotlib is not installed (pip install matplotlib); results.json and records.md "
              "are written")
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for opt, r in rows.items():
        steps = [c["step"] for c in r["curve"]]
        mean = [c["mean"] for c in r["curve"]]
        std = [c["std"] for c in r["curve"]]
        line, = ax.plot(steps, mean, label=f"{opt} (n={r['n']})")
        ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.25)
        if r["reached"]:
            ax.plot([r["target_step"]], [r["val_at_target"][0]], "o", color=line.get_color())
    ax.axhline(rule.target, color="k", ls="--", lw=1, label=f"target {rule.target:.4f}")
    ax.set(xlabel="step", ylabel="val loss", title="validation loss (mean ± std over seeds; ● target reached)")
    ax.set_ylim(top=min(ax.get_ylim()[1], rule.target + 3))
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "curves.png"), dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(rows)
    bars = ax.bar(names, [rows[o]["target_step"] or 0 for o in names])
    for bar, o in zip(bars, names):
        label = str(rows[o]["target_step"]) if rows[o]["reached"] else "not reached"
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    ax.set(ylabel="steps", title=f"step at which the seed mean reaches {rule.target:.4f} (z-test)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "steps.png"), dpi=120)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------------------------- runs


def _run(preset, optimizer, seed, out, extra, lr=None):
    import train

    args = [f"--preset={preset}", f"--optimizer={optimizer}", f"--seed={seed}", f"--out_dir={out}", *extra,
            "--stop_at_target=False"]  # the full budget: the step is chosen afterwards, the same for every seed
    if lr is not None:
        args.append(f"--optim.lr={lr}")
        args.append(f"--run_name={preset}-{optimizer}-lr{lr:g}-s{seed}")
    summary = finished_run(args)
    if summary is None:
        summary = train.main(args + _continuation(args))
    else:
        print(f"reusing the finished run {summary['run_dir']} (same config)")
    with open(os.path.join(summary["run_dir"], "log.jsonl")) as f:
        summary["curve"] = [{k: r[k] for k in ("step", "val_loss", "train_time_s")}
                            for r in map(json.loads, f) if "val_loss" in r]
    return summary


def finished_run(args) -> dict | None:
    """The summary of the run that train.py `args` describe, when its directory already holds it finished with the
    config those arguments resolve to here (config.json equal, summary.json written at its end); else None. So
    an interrupted bench.speedrun, or one given more --lr-multipliers, does not train a finished run again. The
    options in REUSE_MAY_DIFFER may differ."""
    import train
    from speedrun.config import device_type, resolve, resolve_auto, to_dict

    cfg = resolve(args)
    cfg = resolve_auto(cfg, device_type(cfg.device))
    run_dir = train.run_directory(cfg)
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            saved = json.load(f)
        with open(os.path.join(run_dir, "summary.json")) as f:
            summary = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    now = json.loads(json.dumps(to_dict(cfg)))
    same = {k for k in now if saved.get(k) == now[k]} | REUSE_MAY_DIFFER
    if set(now) - same or set(saved) != set(now) or summary.get("steps") != cfg.max_steps:
        return None
    return summary


def _continuation(args) -> list[str]:
    """What train.py needs besides `args` where the run's directory holds an earlier run that finished_run did not
    reuse: --resume=True where it was interrupted with a checkpoint (train.py checks that it is this run's), so a
    stopped bench.speedrun continues its runs; a finished run made with other options, or a run without a
    checkpoint, is refused here, naming it (it is never overwritten)."""
    import train
    from speedrun import rundir
    from speedrun.config import resolve

    run_dir = train.run_directory(resolve(args))
    state = rundir.earlier_run_state(run_dir)
    if state is None:
        return []
    if state == "interrupted":
        print(f"continuing the interrupted run {run_dir}")
        return ["--resume=True"]
    what = "a finished run made with other options than this command's" if state == "finished" else \
        rundir.earlier_run(run_dir)
    raise cli.UserError(f"{run_dir} already holds {what}; use another --out, or move that folder away")


# Options that change neither a full-budget run's trajectory nor its logged val curve (the target only labels the
# summary: bench.speedrun judges the curves itself). Everything else, the thread count included, must be equal.
REUSE_MAY_DIFFER = frozenset({"target_val_loss", "target_sigma", "checkpoint_every", "memory_check", "dist_timeout_s",
                              "dist_bucket_mb", "resume"})


def tune(preset, optimizer, out, extra, multipliers=LR_MULTIPLIERS):
    from speedrun.config import resolve

    base = resolve([f"--preset={preset}", f"--optimizer={optimizer}", *extra]).optim.lr
    sweep = []
    for m in multipliers:
        s = _run(preset, optimizer, 0, os.path.join(out, "tune"), extra, lr=base * m)
        sweep.append({"lr": base * m, "final_val_loss": s["final_val_loss"]})
    best = min(sweep, key=lambda r: r["final_val_loss"] if math.isfinite(r["final_val_loss"]) else float("inf"))
    return best["lr"], sweep


def _rule_sigma(parser, args, cfg) -> float:
    """σ: the config's target_sigma when the config has that field, else --sigma, else the track's."""
    if hasattr(cfg, "target_sigma"):
        if args.sigma is not None:
            parser.error("this config has a target_sigma field: set σ with --target_sigma=... (the runs record it)")
        return cfg.target_sigma or Rule.sigma
    return args.sigma if args.sigma is not None else Rule.sigma


def run_threads(threads: set) -> dict:
    return {"threads": "/".join(map(str, sorted(threads)))} if threads else {}


def report(results: dict, out: str) -> str:
    """Judge the runs in `results` by its rule; write records.md, results.json and the plots; return the table."""
    if results["rule_params"].get("target") is None:
        raise cli.UsageError("no target val loss recorded for these runs: pass --target VALUE")
    rule = Rule(**results["rule_params"])
    baseline = results.get("baseline")
    rows = aggregate(results["runs"], rule, baseline)
    pairs = pairwise_table(rows, rule, None if results.get("pairs") == "all" else baseline)
    results.update(rule={**results["rule_params"], "threshold": rule.threshold}, aggregate=rows, pairwise=pairs)
    # the runs' own torch thread count (a --threads override), not this process's
    threads = {r.get("threads") for runs in results["runs"].values() for r in runs} - {None}
    where = "; ".join(f"{harness.machine_line(s['machine'] | run_threads(threads))} at start; commit {s['commit']}"
                      for s in results.get("sources") or [results])
    table = records_table(rows, pairs, rule, where, baseline, tuple(results.get("tuning", {})))
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(out, "records.md"), "w") as f:
        f.write(table + "\n")
    plot(rows, rule, out)
    return table


def _target(parser, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        parser.error(f"--target {text!r} is neither a val loss nor 'auto'")


def _make_out(out: str):
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise cli.UserError(f"cannot create --out {out} ({e.strerror}); choose another folder") from e


# train.py options bench.speedrun sets for every run, and what to use instead
OWN_OPTIONS = {
    "seed": "the seeds are chosen here (--seeds N runs seeds 1000..1000+N-1)",
    "optimizer": "use --optimizers", "recipe": "use --optimizers", "optim.name": "use --optimizers",
    "out_dir": "use --out", "run_name": "each run is named here", "stop_at_target": "every seed runs its full budget",
    "target_val_loss": "use --target",
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = cli.ArgumentParser(prog="python -m bench.speedrun", **command_help(__doc__))
    parser.add_argument("--preset", default=None, help="default: cpu; with --from-results, the files' own")
    parser.add_argument("--optimizers", default="adamw,muon,normuon")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--lr-multipliers", default=",".join(f"{m:g}" for m in LR_MULTIPLIERS),
                        help="the tuning sweep: multiples of each tuned optimizer's configured lr (comma list)")
    parser.add_argument("--tune", nargs="?", const="all", default=None,
                        help="the same lr sweep before the runs: for every optimizer (bare --tune) or for a comma "
                             "list (--tune adamw: tune the baseline only)")
    parser.add_argument("--target", default=None,
                        help="a val loss, or 'auto': the final val loss of the tuned AdamW sweep (needs --tune and "
                             "adamw first in --optimizers); default: the preset's target_val_loss")
    parser.add_argument("--sigma", type=float, default=None,
                        help=f"seed noise σ of the val loss (default {Rule.sigma}, the track's; a config with a "
                             "target_sigma field sets it there instead)")
    parser.add_argument("--z", type=float, default=None,
                        help=f"threshold in units of σ (default {Rule.z:.4f} = 0.004/0.0013, the track's)")
    parser.add_argument("--loss-per-100-steps", type=float, default=None,
                        help=f"val loss 100 steps are worth (default {Rule.loss_per_100_steps}, the track's)")
    parser.add_argument("--baseline", default=None, help="ratios against it (default: the first optimizer)")
    parser.add_argument("--pairs", choices=("all", "baseline"), default="all",
                        help="pairwise tests for every pair, or each optimizer against the baseline")
    parser.add_argument("--from-results", default=None,
                        help="re-judge the runs saved in a results.json (no training) with this rule; a comma "
                             "list judges the runs of several files of one preset together")
    parser.add_argument("--out", default="out/speedrun")
    args, extra = parser.parse_known_args(argv)
    for arg in extra:  # train.py options; those this command sets itself would be overridden silently
        key = arg[2:].split("=", 1)[0] if arg.startswith("--") else None
        if key in OWN_OPTIONS:
            parser.error(f"{arg}: {OWN_OPTIONS[key]}")
    rule_params = {"sigma": args.sigma, "z": args.z, "loss_per_100_steps": args.loss_per_100_steps}

    if args.from_results:
        results = load_results(args.from_results.split(","))
        if args.preset is not None and args.preset != results.get("preset"):
            parser.error(f"--preset {args.preset}: {args.from_results} holds {results.get('preset')!r} runs, judged "
                         "against their own target; leave --preset out, or pass --target to judge them against "
                         "another")
        if args.target not in (None, "auto"):
            results["rule_params"]["target"] = _target(parser, args.target)
        elif results["rule_params"].get("target") is not None:
            print(f"target val loss {results['rule_params']['target']} (recorded with the {results.get('preset')} "
                  "runs)")
        results["rule_params"].update({k: v for k, v in rule_params.items() if v is not None})
        results["rejudged"] = {"command": [sys.executable, "-m", "bench.speedrun", *argv],
                               "commit": harness.git_commit(), "from": args.from_results}
        results["pairs"] = args.pairs
        results["baseline"] = args.baseline or results.get("baseline") or next(iter(results["runs"]))
        _make_out(args.out)
        table = report(results, args.out)
        print(table)
        return results

    from speedrun.config import resolve

    args.preset = args.preset or "cpu"
    optimizers = args.optimizers.split(",")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    baseline = args.baseline or optimizers[0]
    if baseline not in optimizers:
        parser.error(f"--baseline {baseline} is not in --optimizers {args.optimizers}")
    tuned = set(optimizers if args.tune == "all" else (args.tune or "").split(",")) - {""}
    try:
        multipliers = tuple(float(m) for m in args.lr_multipliers.split(","))
    except ValueError:
        parser.error(f"--lr-multipliers {args.lr_multipliers!r} is not a comma list of numbers")
    if not all(math.isfinite(m) and m > 0 for m in multipliers) or len(set(multipliers)) != len(multipliers):
        parser.error(f"--lr-multipliers must be distinct positive numbers, got {args.lr_multipliers}")
    if tuned - set(optimizers):
        parser.error(f"--tune {args.tune}: {', '.join(sorted(tuned - set(optimizers)))} not in --optimizers")
    if args.target == "auto" and ("adamw" not in tuned or optimizers[0] != "adamw"):
        parser.error("--target auto needs --tune and adamw first in --optimizers")
    cfg = resolve([f"--preset={args.preset}", *extra])
    for opt in optimizers:  # every run's options resolve before the first one trains
        resolve([f"--preset={args.preset}", f"--optimizer={opt}", *extra])
    rule_params["sigma"] = _rule_sigma(parser, args, cfg)
    for name in ("z", "loss_per_100_steps"):  # the track's unless given
        if rule_params[name] is None:
            rule_params[name] = getattr(Rule, name)
    target = None
    if args.target is None:
        target = cfg.target_val_loss or None
        if target is None:
            parser.error(f"preset {args.preset} has no target_val_loss: pass --target VALUE or --target auto")
    elif args.target != "auto":
        target = _target(parser, args.target)
    if target is not None:
        Rule(target=target, **rule_params)  # bad parameters fail before any training
    _make_out(args.out)
    results = {"command": [sys.executable, "-m", "bench.speedrun", *argv], "commit": harness.git_commit(),
               "machine": harness.machine(), "preset": args.preset, "extra_args": extra, "baseline": baseline,
               "pairs": args.pairs, "rule_params": {"target": target, **rule_params}, "tuning": {}, "runs": {}}
    for opt in optimizers:
        lr = None
        if opt in tuned:
            lr, sweep = tune(args.preset, opt, args.out, extra, multipliers)
            results["tuning"][opt] = {"chosen_lr": lr, "sweep": sweep}
            if target is None:  # --target auto: the tuned AdamW baseline's final val loss (seed 0, full budget)
                target = min(r["final_val_loss"] for r in sweep)
                results["rule_params"]["target"] = target
                print(f"target val loss set by tuned AdamW (lr {lr:g}): {target:.4f}")
        run_args = [*extra, f"--target_val_loss={target}"]
        results["runs"][opt] = [_run(args.preset, opt, 1000 + s, os.path.join(args.out, "runs"), run_args, lr=lr)
                                for s in range(args.seeds)]
    results["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    table = report(results, args.out)
    print(table)
    return results


if __name__ == "__main__":
    cli.run_main(main)
