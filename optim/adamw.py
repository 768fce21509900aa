"""AdamW (torch.optim.AdamW, fused where torch has a fused kernel for the device), one param group per role.

The hidden matrices take `lr`, `betas` and `weight_decay`; the embeddings, the head weight and the scalars take
their own lr when set (optim.roles.AuxRoles; default `lr`), `aux_betas` and `aux_weight_decay`. Gains and norms are
never decayed by default (nanoGPT, minGPT); embeddings are exempt as in minGPT (nanoGPT's later version decays every
2-D tensor); the head follows them, so that AdamW decays exactly the parameters Muon/NorMuon decay and a comparison
between optimizers changes only the update rule. Per-role lrs, separate betas and decay for the non-hidden roles are
what the optimization benchmark's AdamW baseline needs (track3-adam below).
"""

from dataclasses import dataclass

import torch

from optim.registry import optimizer, recipe
from optim.roles import AuxRoles, RoleHparams, check_betas, check_non_negative, check_positive, role_table, torch_groups
from optim.schedules import TRACK3_SCHEDULE


@dataclass(frozen=True)
class AdamWConfig(AuxRoles):
    """AdamW on every parameter, one param group per role."""

    lr: float = 3e-3
    """Learning rate of the hidden matrices, and of every other role without its own."""
    betas: tuple = (0.9, 0.95)
    """Adam's (beta1, beta2) on the hidden matrices."""
    eps: float = 1e-8
    """Added to the root of the second moment (every role)."""
    weight_decay: float = 0.0
    """Decoupled weight decay of the hidden matrices: p <- p·(1 - lr·wd)."""
    aux_betas: tuple = ()
    """(beta1, beta2) of the embed, head and scalar roles; () = betas."""

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "lr", "eps")
        check_non_negative(self, "weight_decay")
        check_betas("betas", self.betas)
        check_betas("aux_betas", self.aux_betas, empty_ok=True)


def fused_adamw_available(params) -> bool:
    """torch has a fused AdamW (one multi-tensor kernel per device and dtype, computing in fp32) for these
    parameters: floating point, on the CPU or a CUDA GPU. It is ~3x faster than the per-tensor loop on the CPU."""
    return bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)


@optimizer("adamw", AdamWConfig)
def build(cfg: AdamWConfig, groups):
    table = role_table(cfg, RoleHparams(cfg.lr, cfg.betas, cfg.weight_decay), aux_lr=cfg.lr,
                       aux_betas=cfg.aux_betas or cfg.betas)
    fused = fused_adamw_available([p for ps in groups.values() for p in ps])
    return torch.optim.AdamW(torch_groups(groups, table), lr=cfg.lr, eps=cfg.eps, fused=fused or None)


@recipe("track3-adam")
def track3_adam() -> dict:
    """Track-3 result #2, AdamW everywhere: 5625 steps, val loss 3.2790 (n=1; the README calls it most likely
    undertuned). Source: records/track_3_optimization/results/a63a68d1-24aa-4a22-af9a-224e43209ea4.txt.

    Hidden matrices: lr 0.0015, betas (0.9, 0.95), eps 1e-10, decoupled weight decay 0.1. The rest: betas
    (0.8, 0.95), eps 1e-10, no weight decay; embedding lr 0.3, head weight 1/320, 1-D parameters 0.01.
    250 warm-up steps on every group (lr × min(1, (step+1)/250)), then the shared schedule.
    Its log ran an older script whose initialization only zeroed the parameters named "proj" (the block
    output projections and the head, weights and biases) and otherwise kept torch's default initialization.
    """
    return {"optimizer": "adamw", "optim.lr": 0.0015, "optim.betas": (0.9, 0.95), "optim.eps": 1e-10,
            "optim.weight_decay": 0.1, "optim.embed_lr": 0.3, "optim.head_lr": 1 / 320, "optim.scalar_lr": 0.01,
            "optim.aux_betas": (0.8, 0.95), "optim.aux_weight_decay": 0.0,
            "max_steps": 5625, **TRACK3_SCHEDULE, "schedule.warmup_steps": 250}
