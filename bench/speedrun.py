"""End-to-end records: the step at which each optimizer reaches the target val loss over seeds, and which
optimizers are significantly better than which, by the rules of modded-nanogpt's optimization track.

    python -m bench.speedrun --preset cpu --optimizers adamw,muon,normuon --seeds 3 --tune
    torchrun --nproc_per_node=8 -m bench.speedrun --preset gpt2-124m --optimizers muon --seeds 5   # 8×H100
    python -m bench.speedrun --from-results out/speedrun/results.json --sigma 0.01   # re-judge saved runs
    python -m bench.speedrun --from-results out/a/results.json,out/b/results.json    # judge two runs' files together
    python -m bench.speedrun --preset track3-cpu --optimizers track3-muon,track3-adam --seeds 8 --jobs 2 \
        --out out/t3c     # 2 one-thread train.py processes at a time; the rule is the preset's

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

The rule's parameters (target, σ, z, loss_per_100_steps) come from the preset's config, where a preset that was
calibrated states them with the command that measured each (speedrun.config.presets; TrainConfig's target_val_loss,
target_sigma, target_z, loss_per_100_steps); a preset without a σ falls back to the track's, saying so. --target,
--sigma, --z and --loss-per-100-steps override them, and the command says what each overrode. results.json records
the values the runs were judged with ("rule_params") and where each came from ("rule_sources"); --from-results
judges with the recorded values unless a flag overrides one, refuses a --preset other than the files' own, and
notes where a recorded value and the preset's config now disagree. The report also gives each optimizer's
observed seed spread beside σ: a spread well above σ means the z-test is overconfident.

Each optimizer gets the same tuning budget (`--tune`: one seed over the same learning-rate multipliers of
its configured lr, --lr-multipliers, default 0.5,1,2; best final val loss wins, a diverged point loses; the sweep
is recorded; a sweep whose best point sits at an edge should be widened). A run whose directory already holds it
finished with the same config is reused, not trained again, and one stopped with its checkpoint is resumed (an
interrupted command, or a widened sweep, resumes cheaply; bench.jobs.finished_run and bench.jobs.continuation); a
directory holding a run made with other options is refused, never overwritten. `--tune adamw` tunes the baseline
only; the comparison is then tuned AdamW against untuned others, and the report says so. Then every optimizer runs
every seed on the same data order.

Runs (bench.jobs): `--jobs N` trains N `python train.py` processes at a time, one thread each, tuning points and
seeds alike (a tuned optimizer's seeds start once its sweep is done); without it the runs train one after another
in this process. Before training, the command prints the plan and an estimate in CPU-hours and wall-clock,
measured by a few calibration steps of each optimizer here; while training, each run's start and end with runs
done/running/left and the ETA. A run that crashes is reported with the end of its log (LOG under OUT/logs) and
the others go on; the optimizers whose every seed finished are judged, and the command ends with an error naming
what failed (running it again retries only that: finished runs are reused). `--dry-run` prints the rule and the
plan and trains nothing. Writes results.json (with the command line, commit and machine), records.md, curves.png
and steps.png. Remaining arguments are train.py overrides (e.g. --max_steps=200).
"""

import json
import math
import os
import re
import sys

from bench import command_help, harness, jobs
from bench.results import load_results, use_val_slices
from bench.verdict import (
    RULE_FLAGS,
    Rule,
    aggregate,
    config_rule,
    override_rule,
    pairwise_table,
    plot,
    recorded_rule,
    records_table,
    rule_line,
)
from speedrun import cli

LR_MULTIPLIERS = (0.5, 1.0, 2.0)
finished_run, REUSE_MAY_DIFFER = jobs.finished_run, jobs.REUSE_MAY_DIFFER  # the reuse rule lives in bench.jobs


def run_label(optimizer: str) -> str:
    """A folder-safe name for an --optimizers entry (FILE.py:NAME -> NAME)."""
    name = optimizer.rsplit(":", 1)[-1] if ".py:" in optimizer else optimizer
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def run_args(preset: str, optimizer: str, seed: int, out: str, extra: list, lr: float | None = None,
             target: float | None = None) -> list[str]:
    """train.py arguments of one run: its own folder (named by the --optimizers entry, the lr when tuned, the
    seed), the full budget whatever the val loss (the target step is chosen afterwards, the same for every seed)."""
    name = f"{preset}-{run_label(optimizer)}" + (f"-lr{lr:g}" if lr is not None else "") + f"-s{seed}"
    args = [f"--preset={preset}", f"--optimizer={optimizer}", f"--seed={seed}", f"--out_dir={out}", *extra,
            "--stop_at_target=False", f"--run_name={name}"]
    if lr is not None:
        args.append(f"--optim.lr={lr}")
    if target is not None:
        args.append(f"--target_val_loss={target}")
    return args


def _best(sweep: list[dict]) -> dict:
    return min(sweep, key=lambda r: r["final_val_loss"] if math.isfinite(r["final_val_loss"]) else float("inf"))


def _sweep_point(outcome: jobs.Outcome) -> dict:
    lr = outcome.job.tag[2]
    if outcome.ok:
        return {"lr": lr, "final_val_loss": outcome.summary["final_val_loss"]}
    return {"lr": lr, "final_val_loss": float("inf"), "diverged": True}


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
    "target_val_loss": "use --target", "target_sigma": "use --sigma", "target_z": "use --z",
    "loss_per_100_steps": "use --loss-per-100-steps",
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = cli.ArgumentParser(prog="python -m bench.speedrun", **command_help(__doc__))
    parser.add_argument("--preset", default=None, help="the preset the runs start from (default cpu); with "
                        "--from-results it must be the files' own, if given")
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
                        help="seed noise σ of the val loss (default: the preset's target_sigma, else the track's "
                             f"{Rule.sigma})")
    parser.add_argument("--z", type=float, default=None,
                        help="threshold in units of σ (default: the preset's target_z; the track's is "
                             f"{Rule.z:.4f} = 0.004/0.0013)")
    parser.add_argument("--loss-per-100-steps", type=float, default=None,
                        help="val loss 100 steps are worth (default: the preset's loss_per_100_steps; the track's "
                             f"is {Rule.loss_per_100_steps})")
    parser.add_argument("--baseline", default=None, help="ratios against it (default: the first optimizer)")
    parser.add_argument("--pairs", choices=("all", "baseline"), default="all",
                        help="pairwise tests for every pair, or each optimizer against the baseline")
    parser.add_argument("--from-results", default=None,
                        help="re-judge the runs saved in a results.json (no training) with the rule it recorded "
                             "(flags override); a comma list judges the runs of several files of one preset together")
    parser.add_argument("--val-slices", type=int, default=0,
                        help="with --from-results: judge on the mean of the first K val slices the runs logged "
                             "(--val_slice_tokens) instead of their whole val set; the rule must then be given "
                             "(--target, --sigma, --loss-per-100-steps): the recorded one is for the whole set")
    parser.add_argument("--jobs", type=int, default=0,
                        help="run N `python train.py` processes at a time, each --threads=1 unless --threads is "
                             "given (0, the default: the runs one after another in this process)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the rule and the runs (to train or reused) and stop: nothing is trained")
    parser.add_argument("--out", default="out/speedrun")
    args, extra = parser.parse_known_args(argv)
    for arg in extra:  # train.py options; those this command sets itself would be overridden silently
        key = arg[2:].split("=", 1)[0] if arg.startswith("--") else None
        if key in OWN_OPTIONS:
            parser.error(f"{arg}: {OWN_OPTIONS[key]}")
    flags = {"sigma": args.sigma, "z": args.z, "loss_per_100_steps": args.loss_per_100_steps}
    if args.target not in (None, "auto"):
        flags["target"] = _target(parser, args.target)

    if args.val_slices and not args.from_results:
        parser.error("--val-slices re-judges saved runs: use it with --from-results")
    if args.from_results:
        results = load_results(args.from_results.split(","))
        if args.val_slices:
            missing = [RULE_FLAGS[n] for n in ("target", "sigma", "loss_per_100_steps") if flags.get(n) is None]
            if missing:
                parser.error(f"--val-slices {args.val_slices} judges another val set than the recorded rule's: "
                             f"give {', '.join(missing)}")
            use_val_slices(results, args.val_slices)
        params, sources, notes = recorded_rule(results, flags, args.preset)
        if params["target"] is None:
            raise cli.UsageError("no target val loss recorded for these runs: pass --target VALUE")
        Rule(**params)
        results["rule_params"], results["rule_sources"] = params, sources
        results["rejudged"] = {"command": [sys.executable, "-m", "bench.speedrun", *argv],
                               "commit": harness.git_commit(), "from": args.from_results}
        results["pairs"] = args.pairs
        results["baseline"] = args.baseline or results.get("baseline") or next(iter(results["runs"]))
        for line in [*notes, rule_line(params, sources)]:
            print(line)
        _make_out(args.out)
        table = report(results, args.out)
        print(table)
        return results

    from speedrun.config import resolve

    preset = args.preset or "cpu"
    optimizers = args.optimizers.split(",")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.jobs < 0:
        parser.error(f"--jobs must be >= 0, got {args.jobs}")
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
    threads_note = None
    if args.jobs >= 1 and not any(a.startswith("--threads=") for a in extra):
        extra = [*extra, "--threads=1"]
        threads_note = f"{args.jobs} processes at a time, one thread each (--threads=1)"
    cfg = resolve([f"--preset={preset}", *extra])
    for opt in optimizers:  # every run's options resolve before the first one trains
        resolve([f"--preset={preset}", f"--optimizer={opt}", *extra])
    params, sources = config_rule(cfg)
    notes = override_rule(params, sources, flags, f"preset {preset}")
    if params["target"] is None and args.target != "auto":
        parser.error(f"preset {preset} has no target_val_loss: pass --target VALUE or --target auto")
    if args.target == "auto":
        params["target"], sources["target"] = None, "--target auto (the tuned AdamW sweep's best final val loss)"
    Rule(**(params | {"target": params["target"] or 0.0}))  # bad parameters fail before any training
    for line in [*notes, rule_line(params, sources)]:
        print(line)
    if threads_note:
        print(threads_note)
    threads = [int(a.split("=", 1)[1]) for a in extra if a.startswith("--threads=")]
    if args.jobs >= 1 and threads and args.jobs * threads[-1] > (os.cpu_count() or 1):
        print(f"warning: {args.jobs} processes × {threads[-1]} threads exceed the {os.cpu_count()} cores: every run "
              "slows down and its step times say nothing")

    results = {"command": [sys.executable, "-m", "bench.speedrun", *argv], "commit": harness.git_commit(),
               "machine": harness.machine(), "preset": preset, "extra_args": extra, "baseline": baseline,
               "pairs": args.pairs, "rule_params": params, "rule_sources": sources, "tuning": {}, "runs": {},
               "jobs": args.jobs}
    out_runs, out_tune = os.path.join(args.out, "runs"), os.path.join(args.out, "tune")
    base_lr = {opt: resolve([f"--preset={preset}", f"--optimizer={opt}", *extra]).optim.lr for opt in tuned}
    first = []  # the tuning points, and the seeds of every optimizer not tuned
    for opt in optimizers:
        if opt in tuned:
            first += [jobs.Job(f"{opt} lr {base_lr[opt] * m:g} (tuning, seed 0)",
                               run_args(preset, opt, 0, out_tune, extra, lr=base_lr[opt] * m), kind=opt,
                               tag=("tune", opt, base_lr[opt] * m)) for m in multipliers]
        else:
            first += [jobs.Job(f"{opt} seed {1000 + s}",
                               run_args(preset, opt, 1000 + s, out_runs, extra, target=params["target"]), kind=opt,
                               tag=("seed", opt, 1000 + s)) for s in range(args.seeds)]
    reused = [j for j in first if jobs.finished_run(j.args) is not None]
    to_train = [j for j in first if j not in reused]
    later = len(tuned) * args.seeds
    print(f"plan: {len(first) + later} runs ({len(optimizers)} optimizers × {args.seeds} seeds"
          + (f", {len(multipliers)} tuning points each for {', '.join(sorted(tuned))}" if tuned else "")
          + f"): {len(reused)} reused, {len(to_train)} to train"
          + (f", then {later} seeds of the tuned optimizers at their chosen lr" if later else ""))
    if args.dry_run:
        for job in first:
            print(f"  {'reuse' if job in reused else 'train'}  {job.label}: train.py {' '.join(job.args)}")
        return results
    _make_out(args.out)
    estimate = None
    if to_train or later:
        kinds = {}
        for job in to_train + first:  # a run of each kind still to train (the first of its kind)
            kinds.setdefault(job.kind, job)
        estimate = jobs.calibrate(list(kinds.values()), args.out)
        seeds_later = [jobs.Job(o, run_args(preset, o, 1000, out_runs, extra, lr=base_lr[o]), kind=o)
                       for o in sorted(tuned) for _ in range(args.seeds)]  # their lr is not known yet
        line = jobs.cpu_hours_line(to_train + seeds_later, estimate, args.jobs)
        results["estimate"] = line
        print("estimate: " + line)

    sweeps = {opt: {} for opt in tuned}

    def then(outcome: jobs.Outcome):
        kind, opt, value = outcome.job.tag
        if kind != "tune":
            return []
        sweeps[opt][value] = outcome
        if len(sweeps[opt]) < len(multipliers):
            return []
        points = [sweeps[opt][base_lr[opt] * m] for m in multipliers]
        crashed = [p for p in points if not p.ok and not p.diverged]
        if crashed:
            return []  # reported below; its seeds wait for a complete sweep
        sweep = [_sweep_point(p) for p in points]
        best = _best(sweep)
        if not math.isfinite(best["final_val_loss"]):
            return []
        results["tuning"][opt] = {"chosen_lr": best["lr"], "sweep": sweep}
        print(f"{opt}: tuned lr {best['lr']:g} (final val loss {best['final_val_loss']:.4f} on seed 0)")
        if args.target == "auto" and opt == "adamw":
            params["target"] = best["final_val_loss"]
            print(f"target val loss set by tuned AdamW (lr {best['lr']:g}): {params['target']:.4f}")
        return [jobs.Job(f"{opt} lr {best['lr']:g} seed {1000 + s}",
                         run_args(preset, opt, 1000 + s, out_runs, extra, lr=best["lr"], target=params["target"]),
                         kind=opt, tag=("seed", opt, 1000 + s)) for s in range(args.seeds)]

    runner = jobs.Runner(args.jobs, os.path.join(args.out, "logs"))
    outcomes = runner.run(first, then=then, estimate=estimate, expected=len(first) + later)
    failed = [o for o in outcomes if not o.ok and not (o.diverged and o.job.tag[0] == "tune")]
    for opt in optimizers:
        seeds = sorted((o for o in outcomes if o.job.tag[:2] == ("seed", opt) and o.ok), key=lambda o: o.job.tag[2])
        if len(seeds) == args.seeds:
            results["runs"][opt] = [o.summary for o in seeds]
    missing = [opt for opt in optimizers if opt not in results["runs"]]
    results["failed"] = [{"run": o.job.label, "error": o.error, "log": o.log} for o in failed]
    results["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    if params["target"] is None:
        raise cli.UserError("--target auto: the AdamW sweep did not finish, so there is no target to judge against")
    if results["runs"]:
        results["baseline"] = baseline if baseline in results["runs"] else next(iter(results["runs"]))
        table = report(results, args.out)
        print(table)
    if missing:
        why = "; ".join(f"{f['run']}: {f['error']}" + (f" (log {f['log']})" if f["log"] else "")
                        for f in results["failed"]) or "a tuning sweep in which every point diverged"
        raise cli.UserError(f"{', '.join(missing)} not judged: {why}. "
                            + (f"The other optimizers are judged in {args.out}. " if results["runs"] else "")
                            + "Run the same command again to retry: finished runs are reused")
    return results


if __name__ == "__main__":
    cli.run_main(main)
