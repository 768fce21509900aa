"""Spectral descent on track 3: Muon without momentum, the steepest descent under the spectral norm.

With momentum 0 Muon's buffer is the current gradient (lerp(B, G, 1) = G exactly) and without Nesterov the update
is the orthogonal polar factor of the gradient alone, approximated by Newton-Schulz:

    W ← W·(1 - lr·wd) - lr·s·NewtonSchulz(G)

the minimiser of <G, ΔW> over ‖ΔW‖_2 <= lr·s (spectral norm). Equivalent descriptions: Muon(mu=0) and Shampoo with
betas (0, 0), preconditioning every step and power -1/4. It is optim.muon's optimizer with these settings, so this
file holds only the recipe.
"""

from optim.muon import TRACK3_NEWTON_SCHULZ
from optim.registry import recipe
from optim.schedules import TRACK3_SCHEDULE


@recipe("track3-spectral-descent")
def track3_spectral_descent() -> dict:
    """Track-3 result #22, spectral descent (Muon with momentum 0): 8225 steps, mean val loss 3.2774 (n=4).
    Source: records/track_3_optimization/results/20260517_ortho/ (its log; no .py).

    Muon without momentum and without Nesterov (12 cubic Newton-Schulz steps in bf16 of the raw gradient,
    sqrt(max(1, rows/cols)) scale) on the hidden matrices with lr 0.03 and decoupled weight decay 0.015 (with the
    scheduled lr). AdamW on the rest, betas (0.8, 0.95), eps 1e-10, no weight decay: embedding lr 0.3, head weight
    1/320, 1-D parameters 0.01; the track's baseline init. The schedule's horizon is 8500 steps; the published 8225
    is read from the dense late validation (every 25 steps from 90% of the horizon), so the run stops (and is
    scored) at 8225.
    """
    return {"optimizer": "muon", "optim.lr": 0.03, "optim.weight_decay": 0.015, **TRACK3_NEWTON_SCHULZ,
            "optim.momentum": 0.0, "optim.nesterov": False, "optim.embed_lr": 0.3, "optim.head_lr": 1 / 320,
            "optim.scalar_lr": 0.01, "optim.aux_betas": (0.8, 0.95), "optim.aux_eps": 1e-10,
            "optim.aux_weight_decay": 0.0, "max_steps": 8225, **TRACK3_SCHEDULE, "schedule_steps": 8500}
