"""SGD with (Nesterov) momentum on the hidden matrices, AdamW on everything else.

The hidden matrices take torch.optim.SGD's update (its functional form, so the same numbers) with decoupled
weight decay; the embeddings, the head and the 1-D parameters take AdamW exactly as under Muon (optim.roles:
`aux_*` and the per-role learning rates). Comparing it with Muon under the same auxiliary AdamW changes only the
matrix optimizer: what Muon's orthogonalization buys over plain momentum SGD.

    B ← μ·B + G                     torch's momentum (dampening 0; B = G at the first step)
    D ← G + μ·B  (Nesterov) or B
    W ← W·(1 - lr·wd) - lr·D

SGD is not invariant to the gradient's scale: track 3 back-propagates the loss *summed* over the step's tokens,
so the gradient, and the lr that suits it, depend on the tokens per step (1,024 on track3-cpu, 524,288 on track3).
"""

from dataclasses import dataclass

import torch
from torch.optim.sgd import sgd

from optim.muon import adamw_groups, adamw_update, closure_loss
from optim.registry import optimizer, recipe
from optim.roles import (
    AuxAdamW,
    RoleHparams,
    check_fraction,
    check_non_negative,
    check_positive,
    role_table,
    torch_groups,
)
from optim.schedules import TRACK3_SCHEDULE

AUX_ROLES = ("embed", "head", "scalar")


class SGDAux(torch.optim.Optimizer):
    """SGD with momentum on `hidden`, AdamW on `adam_groups` (torch param-group dicts with lr, betas, weight_decay)."""

    def __init__(self, hidden, adam_groups=(), *, lr: float, momentum: float = 0.9, nesterov: bool = True,
                 weight_decay: float = 0.0, eps: float = 1e-8):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"SGD momentum must be in [0, 1), got {momentum}")
        groups = [dict(params=list(hidden), role="hidden", use_sgd=True, lr=lr, momentum=momentum,
                       nesterov=nesterov and momentum > 0, weight_decay=weight_decay)]
        groups += adamw_groups(adam_groups, eps=eps, use_sgd=False)
        super().__init__([g for g in groups if g["params"]], {})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            if group["use_sgd"]:
                self._sgd(group)
        adamw_update(self, [g for g in self.param_groups if not g["use_sgd"]])
        return loss

    def _sgd(self, group):
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        lr, wd = group["lr"], group["weight_decay"]
        if wd:
            torch._foreach_mul_(params, 1 - lr * wd)  # decoupled
        buffers = [self.state[p].get("momentum_buffer") for p in params]
        sgd(params, [p.grad for p in params], buffers, weight_decay=0.0, momentum=group["momentum"], lr=lr,
            dampening=0.0, nesterov=group["nesterov"], maximize=False, foreach=True)
        if group["momentum"]:
            for p, buf in zip(params, buffers):
                self.state[p]["momentum_buffer"] = buf  # sgd() creates them at the first step


@dataclass(frozen=True)
class SGDAuxConfig(AuxAdamW):
    """SGD with (Nesterov) momentum on the hidden matrices, AdamW on the embed, head and scalar roles."""

    lr: float = 1e-3
    """Learning rate of the hidden matrices (the gradient is that of the run's loss: summed over tokens on track 3)."""
    momentum: float = 0.9
    """Momentum of the hidden matrices, torch's form: B <- momentum·B + G (no dampening)."""
    nesterov: bool = True
    """Step along G + momentum·B instead of B (ignored when momentum is 0)."""
    weight_decay: float = 0.0
    """Decoupled weight decay of the hidden matrices: W <- W·(1 - lr·wd)."""

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "lr")
        check_non_negative(self, "weight_decay")
        check_fraction(self, "momentum")


@optimizer("sgd_aux", SGDAuxConfig)
def build(cfg: SGDAuxConfig, groups):
    table = role_table(cfg, RoleHparams(cfg.lr, (0.0, 0.0), cfg.weight_decay), aux_lr=cfg.aux_lr,
                       aux_betas=cfg.aux_betas)
    return SGDAux(groups["hidden"], torch_groups(groups, table, AUX_ROLES), lr=table["hidden"].lr,
                  momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=table["hidden"].weight_decay,
                  eps=cfg.aux_eps)


@recipe("track3-sgd")
def track3_sgd() -> dict:
    """SGD with Nesterov momentum on track 3's hidden matrices, the baseline's AdamW on the rest (no published
    result). Source: our own.

    SGD (momentum 0.9, Nesterov, no weight decay) on the hidden matrices with lr 7.5e-5; AdamW as in #36 on the
    other roles (embedding lr 0.7, head weight 0.004, 1-D parameters 0.015, betas (0.8, 0.95), eps 1e-10, weight
    decay 0.001); the track's schedule, 3250 steps.

    The hidden lr is tuned on track3-cpu only (the summed loss of its 1,024-token step), from a starting 3e-4, one
    seed (0) per point, final val loss after 160 steps:
        1.875e-5 4.4306, 3.75e-5 4.4334, 7.5e-5 4.4259, 1.5e-4 4.4270, 3e-4 4.4897, 6e-4 5.1543, 1.2e-3 5.8329
    The best point is interior, but the loss is flat from 1.9e-5 to 1.5e-4 (within the preset's σ 0.0304): at this
    scale the AdamW roles carry most of what the run learns. Seed 1000 at 7.5e-5: 4.4296, target 4.77 reached at
    step 112 (AMD EPYC, AVX2, one thread per run):
        python -m bench.speedrun --preset track3-cpu --optimizers track3-sgd --tune --seeds 1 --threads=1 \\
            --lr-multipliers 0.25,0.5,1,2,4,8,16
    It does not carry over to track3 unchanged, whose step sums 512 times as many tokens: not yet tuned there (the
    same sweep with --preset track3 on 8 GPUs; not yet measured on a GPU).
    """
    return {"optimizer": "sgd_aux", "optim.lr": 7.5e-5, "optim.momentum": 0.9, "optim.nesterov": True,
            "optim.weight_decay": 0.0, "optim.embed_lr": 0.7, "optim.head_lr": 0.004, "optim.scalar_lr": 0.015,
            "optim.aux_betas": (0.8, 0.95), "optim.aux_eps": 1e-10, "optim.aux_weight_decay": 0.001,
            "max_steps": 3250, **TRACK3_SCHEDULE}
