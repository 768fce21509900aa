"""The track-3 record (recipe track3-record) with one technique taken away: one recipe per variant, raced on
track3-cpu against the record itself (results not yet measured).

    python -m bench.speedrun --preset track3-cpu --optimizers docs/track3_record_ablation.py:record-no-soap \
        --seeds 4 --threads=1 --max_steps=143 --out out/ablation/no-soap

Each variant is track3-record with the options in VARIANTS set (the option that switches that part off alone);
`record` is the recipe itself, so that every variant (and the record) runs from this file under the same options.
"""

from optim.registry import recipe
from optim.soap_muon import track3_record

# variant -> (what is taken away, the options that take it away)
VARIANTS = {
    "record": ("nothing (the recipe as published)", {}),
    "no-soap": ("SOAP preconditioning (with it the trust gate and the blend)", {"optim.soap": False}),
    "no-trust-gate": ("the attn.c_proj trust gate (SOAP fully, as q, k, v)", {"optim.trust_gate": False}),
    "no-blend-norm": ("the blend's rescale to the raw direction's norm", {"optim.blend_norm": False}),
    "no-soap-resort": ("the eigenvalue re-sorting before each QR refresh", {"optim.soap_resort": False}),
    "frobenius-ns": ("the Schatten-4 normalisation (Muon's Frobenius instead)", {"optim.ns_norm": "frobenius"}),
    "no-radial-brake": ("the radial brake (outward component x 1)", {"optim.radial_outward": 1.0}),
    "no-row-floor": ("the per-row update floor (no floor)", {"optim.update_floor": "none"}),
    "matrix-floor": ("the per-row update floor (the whole-matrix floor it replaced)", {"optim.update_floor": "matrix"}),
    "no-radius-pin": ("the radius pin", {"optim.radius_pin": False}),
    "no-cautious-wd": ("cautious weight decay", {"optim.cautious_wd": 0.0}),
    "adam-1d-bias-correction": ("the 1-D Adam without bias correction (torch's AdamW instead)",
                                {"optim.adam_1d_bias_correction": True}),
    "no-beta2-per-family": ("beta2 per 1-D family (0.99 for all)", {"optim.aux_beta2_per_family": False}),
    "no-momentum-ramp": ("the momentum warm-up and cool-down (0.95 throughout)",
                         {"schedule.momentum.warmup_steps": 0, "schedule.momentum.cooldown_steps": 0}),
    "linear-cool": ("PowerCool's power (linear from the same points)",
                    {"schedule.coefficients": False, "schedule.power": 1.0}),
    "no-ema-nesterov": ("the EMA-Nesterov look-ahead", {"wrapper": "none"}),
    "no-tail-ema": ("the Tail-EMA readout (the raw weights are scored)", {"readout": "none"}),
    "no-zero-init-proj": ("zeroed output projections and head at init",
                          {"model.zero_init_proj": False, "model.zero_init_proj_bias": False}),
    "no-fc-depth-scale": ("the depth-scaled mlp.c_fc init", {"model.init_fc_depth_scale": 0.0}),
    "no-gain-split": ("the ±0.125 norm-gain split at init", {"model.init_gain_split": 0.0}),
}


def _variant(name: str, removed: str, options: dict):
    def make() -> dict:
        overrides = track3_record()
        if options.get("wrapper") == "none":
            overrides = {k: v for k, v in overrides.items() if not k.startswith("wrapper.")}
        if options.get("readout") == "none":
            overrides = {k: v for k, v in overrides.items() if not k.startswith("readout.")}
        return {**overrides, **options}

    make.__doc__ = (f"track3-record without {removed}: an ablation of result #46's recipe.\n"
                    "Source: our own (docs/track3_record_ablation.py).")
    return recipe(f"record-{name}" if name != "record" else "record")(make)


for _name, (_removed, _options) in VARIANTS.items():
    _variant(_name, _removed, _options)


# --- the ablation's tables, from bench.speedrun's results ------------------------------------------------------------


def raw_results(path: str, out: str):
    """A results.json whose runs are `path`'s record runs scored on their raw weights (val_loss_raw from each run's
    log.jsonl): the record without the Tail-EMA readout, from the same training runs (the readout never changes
    training). Written to `out` under the name record-no-tail-ema."""
    import json
    import os

    with open(path) as f:
        results = json.load(f)
    name = next(iter(results["runs"]))
    runs = []
    for run in results["runs"][name]:
        with open(os.path.join(run["run_dir"], "log.jsonl")) as f:
            curve = [{"step": r["step"], "val_loss": r.get("val_loss_raw", r["val_loss"]),
                      "train_time_s": r["train_time_s"]} for r in map(json.loads, f) if "val_loss" in r]
        runs.append({**run, "curve": curve, "final_val_loss": curve[-1]["val_loss"]})
    results["runs"] = {name.replace(":record", ":record-no-tail-ema"): runs}
    results["command"] = [*results["command"], "# scored on val_loss_raw (docs/track3_record_ablation.py raw_results)"]
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)


def paired(path: str, baseline: str, steps: tuple = (112, 143)) -> str:
    """Per variant of the judged results.json at `path`: the seed-by-seed differences of the val loss to the
    baseline's at `steps` (variant minus baseline; the same seeds, so the same data order and, but for the init
    variants, the same init), their mean, std and t = mean/(std/sqrt(n)). Descriptive: the track's rule is the
    unpaired test of bench.speedrun."""
    import json
    import math
    import statistics

    with open(path) as f:
        runs = json.load(f)["runs"]

    def at(run, step):
        return next((r["val_loss"] for r in run["curve"] if r["step"] == step), None)

    base = {r["seed"]: r for r in runs[baseline]}
    lines = ["| variant | n | " + " | ".join(f"Δ val at {s} (mean ± std) | t" for s in steps) + " |",
             "|---|---|" + "---|---|" * len(steps)]
    for name, variant in runs.items():
        if name == baseline:
            continue
        cells = []
        for step in steps:
            d = [at(r, step) - at(base[r["seed"]], step) for r in variant if r["seed"] in base]
            n = len(d)
            mean = statistics.fmean(d)
            std = statistics.stdev(d) if n > 1 else float("nan")
            t = mean / (std / math.sqrt(n)) if n > 1 and std > 0 else float("nan")
            cells += [f"{mean:+.4f} ± {std:.4f}", f"{t:+.1f}"]
        lines.append(f"| {name.split(':')[-1]} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    if sys.argv[1] == "raw":
        raw_results(sys.argv[2], sys.argv[3])
    else:
        print(paired(sys.argv[2], sys.argv[3]))
