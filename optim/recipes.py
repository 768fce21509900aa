"""Named optimizer recipes: published configurations, as dotted overrides of configs.TrainConfig.

`--optimizer NAME` with NAME in RECIPES (e.g. --optimizer track3-muon) applies the recipe's overrides (optimizer
fields and the train-level keys it needs: steps, warm-up, cool-down, schedule horizon, clipping) before the
user's own, which win.
Each recipe is a function so that its docstring can say where the numbers come from and what they reached.

Source of the three track-3 recipes: modded-nanogpt's optimization benchmark ("track 3",
github.com/KellerJordan/modded-nanogpt, records/track_3_optimization: README results table and logs). Its rules:
fixed model, data and batch (12 layers, d=768, 524,288 tokens a step); a run counts when its mean final val
loss over n seeds is below 3.28 with (3.28 - mean)·sqrt(n) >= 0.004; the score is the step count. Shared
schedule: no warm-up (except #2), lr × 1 until (1 - 0.7) of the horizon, then linear to 0 at the horizon; no
gradient clipping; every 2-D parameter under blocks. on the matrix optimizer, the embedding, the head weight
and the 1-D parameters (gains, every bias) on AdamW with their own lrs. The Newton-Schulz there is bf16: the
recipes ask for bf16 explicitly (emulated at fp32 speed on CPUs without native bf16).
"""

from typing import Callable

_TRACK3_SCHEDULE = {"warmup_steps": 0, "cooldown_frac": 0.7, "schedule_steps": 0, "grad_clip": 0.0}
_TRACK3_NEWTON_SCHULZ = {"optim.ns_coefficients": "cubic", "optim.ns_steps": 12, "optim.ns_dtype": "bf16",
                         "optim.momentum": 0.95, "optim.nesterov": True, "optim.muon_lr_scaling": "original"}


def track3_muon() -> dict:
    """Track-3 result #36, the benchmark's tuned baseline: 3250 steps, mean val loss 3.2787 (n=10).

    Muon (momentum 0.95, Nesterov, 12 cubic Newton-Schulz steps in bf16, sqrt(max(1, rows/cols)) scale) on the
    hidden matrices with lr 0.025 and decoupled weight decay 0.05. AdamW on the rest, betas (0.8, 0.95),
    eps 1e-10, weight decay 0.001: embedding lr 0.7, head weight 0.004, 1-D parameters 0.015.
    """
    return {"optim.name": "muon", "optim.lr": 0.025, "optim.weight_decay": 0.05, **_TRACK3_NEWTON_SCHULZ,
            "optim.embed_lr": 0.7, "optim.head_lr": 0.004, "optim.scalar_lr": 0.015, "optim.betas": (0.8, 0.95),
            "optim.adam_betas": (), "optim.eps": 1e-10, "optim.adam_weight_decay": 0.001,
            "max_steps": 3250, **_TRACK3_SCHEDULE}


def track3_adam() -> dict:
    """Track-3 result #2, AdamW everywhere: 5625 steps, val loss 3.2790 (n=1; the README calls it most likely
    undertuned).

    Hidden matrices: lr 0.0015, betas (0.9, 0.95), eps 1e-10, decoupled weight decay 0.1. The rest: betas
    (0.8, 0.95), eps 1e-10, no weight decay; embedding lr 0.3, head weight 1/320, 1-D parameters 0.01.
    250 warm-up steps on every group (lr × min(1, (step+1)/250)), then the shared schedule.
    Its log ran an older script whose initialization only zeroed the parameters named "proj" (the block
    output projections and the head, weights and biases) and otherwise kept torch's default initialization.
    """
    return {"optim.name": "adamw", "optim.lr": 0.0015, "optim.betas": (0.9, 0.95), "optim.eps": 1e-10,
            "optim.weight_decay": 0.1, "optim.embed_lr": 0.3, "optim.head_lr": 1 / 320, "optim.scalar_lr": 0.01,
            "optim.adam_betas": (0.8, 0.95), "optim.adam_weight_decay": 0.0,
            "max_steps": 5625, **_TRACK3_SCHEDULE, "warmup_steps": 250}


def track3_normuon() -> dict:
    """Track-3 result #10, NorMuon: 3250 steps, mean val loss 3.2789 (n=20).

    Muon as in #36 followed by modded-nanogpt's NorMuon normalization (normuon_axis="longer": one second
    moment per row if rows >= cols, else per column; beta2 0.95, v^(-1/2) with v >= 1e-10, Frobenius norm
    kept), lr 0.035, weight decay 0.025. AdamW as in #2's non-hidden groups: betas (0.8, 0.95), eps 1e-10, no
    weight decay; embedding lr 0.3, head weight 1/320, 1-D parameters 0.01. The schedule's horizon is 3300
    steps and the run stops (and is scored) at 3250 ("end 50 steps early").
    """
    return {"optim.name": "normuon", "optim.lr": 0.035, "optim.weight_decay": 0.025, **_TRACK3_NEWTON_SCHULZ,
            "optim.normuon_axis": "longer", "optim.normuon_beta2": 0.95, "optim.embed_lr": 0.3,
            "optim.head_lr": 1 / 320, "optim.scalar_lr": 0.01, "optim.betas": (0.8, 0.95), "optim.adam_betas": (),
            "optim.eps": 1e-10, "optim.adam_weight_decay": 0.0,
            "max_steps": 3250, **_TRACK3_SCHEDULE, "schedule_steps": 3300}


RECIPES: dict[str, Callable[[], dict]] = {
    "track3-muon": track3_muon,
    "track3-adam": track3_adam,
    "track3-normuon": track3_normuon,
}
