"""The optimization track's verdict: whether n seeds reach the target val loss, which result is significantly
better than which, and the rule parameters (target, σ, z, loss per 100 steps) those tests are judged with.

The statistics (Rule, Point, group_curve, target_step, aggregate, pairwise_table, records_table, plot) are the
track's rules as bench.speedrun's --help states them; they take logged curves and return rows and tables, and write
nothing but the plots. The parameters come from a config (config_rule), from flags over them (override_rule) or
from what saved results files recorded (recorded_rule); each carries where it came from, so every report can say
whose σ it used. bench.speedrun, bench.leaderboard, bench.calibrate and bench.agreement judge with these.
"""

import dataclasses
import itertools
import math
import os
import statistics

from speedrun import cli


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


# ----------------------------------------------------------------------------------------------- rule parameters

# Rule parameter -> the TrainConfig field that carries it, the flag that overrides it, its name in messages.
RULE_FIELDS = {"target": "target_val_loss", "sigma": "target_sigma", "z": "target_z",
               "loss_per_100_steps": "loss_per_100_steps"}
RULE_FLAGS = {"target": "--target", "sigma": "--sigma", "z": "--z", "loss_per_100_steps": "--loss-per-100-steps"}
RULE_WORDS = {"target": "target", "sigma": "σ", "z": "z", "loss_per_100_steps": "loss per 100 steps"}


def config_rule(cfg) -> tuple[dict, dict]:
    """The rule parameters a config carries (its preset's, with any --key=value override), and where each comes
    from. A target or σ of 0 means the preset has none: the target stays None (the command needs --target), σ
    falls back to the track's, saying so."""
    params, sources = {}, {}
    for name, field in RULE_FIELDS.items():
        value = getattr(cfg, field, 0) or None
        if value is None and name != "target":
            params[name], sources[name] = getattr(Rule, name), f"track 3's (preset {cfg.preset} sets no {field})"
        else:
            params[name], sources[name] = value, f"preset {cfg.preset}"
    return params, sources


def override_rule(params: dict, sources: dict, flags: dict, what: str) -> list[str]:
    """Put the explicitly given flags (None: not given) over `params`; returns a line for each value it changed."""
    notes = []
    for name, value in flags.items():
        if value is None:
            continue
        before = params.get(name)
        if before is not None and before != value:
            notes.append(f"{RULE_FLAGS[name]} {value:g} overrides the {RULE_WORDS[name]} of {what} ({before:g})")
        params[name], sources[name] = value, RULE_FLAGS[name]
    return notes


def rule_line(params: dict, sources: dict) -> str:
    """'rule: target 4.77, σ 0.0304, z 3.077 (z·σ 0.0935), loss per 100 steps 0.62; from preset track3-cpu'."""
    def value(name):
        v = params.get(name)
        return "not set" if v is None else f"{v:.4g}"

    parts = [f"{RULE_WORDS[n]} {value(n)}" for n in RULE_FIELDS]
    if params.get("sigma") and params.get("z"):
        parts[2] += f" (z·σ {params['z'] * params['sigma']:.4g})"
    return f"rule: {', '.join(parts)} ({rule_sources_text(sources)})"


def rule_sources_text(sources: dict) -> str:
    """'target, σ from preset track3-cpu; z from --z': where each rule parameter came from."""
    by_source = {}
    for name in RULE_FIELDS:
        by_source.setdefault(sources.get(name, "?"), []).append(RULE_WORDS[name])
    return "; ".join(f"{', '.join(names)} from {source}" for source, names in by_source.items())



def recorded_rule(results: dict, flags: dict, preset: str | None = None) -> tuple[dict, dict, list[str]]:
    """The rule to judge saved runs with: each parameter as the files recorded it, unless its flag is given. Files
    that recorded different values must be told which to use (the flag); a parameter no file recorded comes from
    the files' preset's config, saying so. `preset` (--preset) must be the files' own. Returns the parameters,
    where each came from, and notes (what was overridden, where the recorded value and the preset's config
    now disagree)."""
    file_preset = results.get("preset")
    if preset is not None and preset != file_preset:
        raise cli.UsageError(f"--preset {preset} disagrees with the runs' preset {file_preset!r} (recorded in "
                             f"{', '.join(s['file'] for s in results['sources'])}); leave --preset out to judge "
                             "them with the rule they recorded")
    params, sources, notes = {}, {}, []
    for name in RULE_FIELDS:
        seen = {s["file"]: s["rule_params"].get(name) for s in results["sources"]}
        values = {v for v in seen.values() if v is not None}
        if len(values) > 1 and flags.get(name) is None:
            raise cli.UserError(f"the files recorded different {RULE_WORDS[name]}: "
                                + ", ".join(f"{v:g} in {f}" for f, v in seen.items() if v is not None)
                                + f"; pass {RULE_FLAGS[name]} to judge them together")
        if values:
            params[name] = values.pop()
            sources[name] = "the rule recorded in " + ", ".join(f for f, v in seen.items() if v is not None)
    now = None
    if file_preset:
        from speedrun.config import resolve

        try:
            now = resolve([f"--preset={file_preset}"])
        except cli.UsageError:
            now = None  # a preset this checkout does not have
    if now is not None:
        preset_params, preset_sources = config_rule(now)
        for name in RULE_FIELDS:
            if name not in params:
                params[name] = preset_params[name]
                sources[name] = f"{preset_sources[name]} (not recorded in the files)"
            elif flags.get(name) is None and preset_params[name] is not None and preset_params[name] != params[name]:
                notes.append(f"note: the files were judged with {RULE_WORDS[name]} {params[name]:g}; preset "
                             f"{file_preset}'s config now says {preset_params[name]:g} (pass {RULE_FLAGS[name]} "
                             "to judge with it)")
    for name in RULE_FIELDS:
        if name not in params:
            params[name] = getattr(Rule, name) if name != "target" else None
            sources[name] = "track 3's (neither recorded nor in a preset here)"
    notes += override_rule(params, sources, flags, "the files")
    return params, sources, notes
