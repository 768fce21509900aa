"""Muon²: Muon whose update is divided elementwise by the root of an Adam second moment before Newton-Schulz.

Per hidden matrix W with gradient G (B the momentum buffer, v an elementwise second moment, both from zero):

    B ← β·B + (1-β)·G                          Muon's momentum (lerp form)
    v ← β₂·v + (1-β₂)·G⊙G                      of the raw gradient; no bias correction
    U ← (1-β)·G + β·B  (Nesterov) or B
    U ← U / (sqrt(v) + eps)                    elementwise, in the parameters' dtype (fp32), before the cast
    O ← NewtonSchulz(U in ns_dtype)
    W ← W·(1 - lr·wd) - lr·s·O                 Muon's step and shape scale s

Newton-Schulz then orthogonalizes an Adam-preconditioned direction: at the first step U/(sqrt(v)+eps) is
(1-β²)/sqrt(1-β₂)·sign(G) (0.436·sign(G) for β = β₂ = 0.95). Everything else (batched same-shape matrices, the
compiled per-shape update, sharding across ranks, the AdamW side) is optim.muon's: the division is muon_shape_update's
`precondition` step.
"""

from dataclasses import dataclass
from functools import partial

import torch

from optim.muon import TRACK3_NEWTON_SCHULZ, Muon, MuonConfig, muon_kwargs
from optim.registry import optimizer, recipe, require
from optim.roles import check_fraction
from optim.schedules import TRACK3_SCHEDULE


def precondition(updates: torch.Tensor, grads: list, second_moments: list, *, beta2: float, eps: float):
    """updates (B, rows, cols) / (sqrt(v) + eps) per matrix, after advancing each matrix's v in `second_moments`
    (like the matrix, fp32) by v <- β₂·v + (1-β₂)·g⊙g. Part of optim.muon.muon_shape_update."""
    torch._foreach_mul_(second_moments, beta2)
    torch._foreach_addcmul_(second_moments, grads, grads, 1 - beta2)
    return updates / (torch.stack(second_moments).sqrt() + eps)


class Muon2(Muon):
    def __init__(self, hidden, adam_groups=(), *, beta2: float = 0.95, precondition_eps: float = 1e-10, **kwargs):
        if not 0.0 <= beta2 < 1.0:
            raise ValueError(f"Muon² beta2 must be in [0, 1), got {beta2}")
        super().__init__(hidden, adam_groups, **kwargs)
        for group in self.param_groups:
            if group["use_muon"]:
                group.update(beta2=beta2, precondition_eps=precondition_eps)

    def _preconditioner(self, group, params):
        """precondition() with this group's settings, and the second moments of same-shape `params` (created at 0,
        fp32)."""
        moments = self._state_tensors(params, "second_moment", lambda p: torch.zeros_like(
            p, dtype=torch.float32, memory_format=torch.preserve_format))
        return partial(precondition, beta2=group["beta2"], eps=group["precondition_eps"]), moments


@dataclass(frozen=True)
class Muon2Config(MuonConfig):
    """Muon²: Muon's Nesterov momentum divided elementwise by the root of an Adam second moment of the gradient before
    Newton-Schulz; AdamW on the other roles."""

    beta2: float = 0.95
    """EMA coefficient of the elementwise second moment of the raw gradient: v <- beta2·v + (1-beta2)·G⊙G."""
    precondition_eps: float = 1e-10
    """Added to sqrt(v) in the division before Newton-Schulz."""

    def __post_init__(self):
        super().__post_init__()
        check_fraction(self, "beta2")
        require(self.precondition_eps > 0, f"--optim.precondition_eps={self.precondition_eps} must be > 0")


@optimizer("muon2", Muon2Config)
def build(cfg: Muon2Config, groups):
    return Muon2(**muon_kwargs(cfg, groups), beta2=cfg.beta2, precondition_eps=cfg.precondition_eps)


# The published run's init: PyTorch's construction init (each Linear's uniform weight and bias, the embedding's
# N(0, 1) rounded to bf16), then every parameter named "proj" zeroed: the attention and MLP output projections and
# the head, weights and biases.
TORCH_INIT_PROJ_ZEROED = {"model.init": "torch", "model.init_embed_bf16": True, "model.zero_init_proj": True,
                          "model.zero_init_head": True, "model.zero_init_proj_bias": True}


@recipe("track3-muon2")
def track3_muon2() -> dict:
    """Track-3 result #7, Muon² with aux AdamW: 3325 steps, val loss 3.2752 (n=1).
    Source: records/track_3_optimization/results/20260501_muonsq/ (the run's log, bb903816-....txt).

    Muon (momentum 0.95, Nesterov, 12 cubic Newton-Schulz steps in bf16, sqrt(max(1, rows/cols)) scale) with its
    update divided by sqrt(v) + 1e-10 before Newton-Schulz, v the second moment of the raw gradient (beta2 0.95,
    no bias correction); lr 0.10, decoupled weight decay 0.0125 with the scheduled lr. AdamW on the rest, betas
    (0.8, 0.95), eps 1e-10, no weight decay: embedding lr 0.3, head weight 1/320, 1-D parameters 0.01. The track's
    schedule on a 3325-step horizon, validation every 125 steps.

    Init: the published run's. Its log's script keeps PyTorch's construction init (uniform Linear weights and
    biases, the embedding's N(0, 1) rounded to bf16) and zeroes every parameter named "proj" (attention and MLP
    output projections and the head, weights and biases); the folder's train_gpt_simple_muonsq.py, rebased later,
    uses the baseline's init instead (that is --model.init=track3 --model.zero_init_proj_bias=False, the track3
    preset's default init) with the same optimizer. The recipe reproduces the run that was published.
    The published run validated every 125 steps and at its end, without the track's dense late validation; its
    score is its final step's loss, which either cadence reads.
    """
    return {"optimizer": "muon2", "optim.lr": 0.10, "optim.weight_decay": 0.0125, **TRACK3_NEWTON_SCHULZ,
            "optim.beta2": 0.95, "optim.precondition_eps": 1e-10, "optim.embed_lr": 0.3, "optim.head_lr": 1 / 320,
            "optim.scalar_lr": 0.01, "optim.aux_betas": (0.8, 0.95), "optim.aux_eps": 1e-10,
            "optim.aux_weight_decay": 0.0, "max_steps": 3325, **TRACK3_SCHEDULE, **TORCH_INIT_PROJ_ZEROED}
