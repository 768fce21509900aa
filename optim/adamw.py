"""AdamW (torch.optim.AdamW, fused where torch has a fused kernel for the device), one param group per role.

Each role's lr, betas and decoupled weight decay come from optim.role_table: by default lr = cfg.lr for every
role and weight decay on the hidden matrices only (cfg.weight_decay; cfg.adam_weight_decay = 0 for the
embeddings, the head and the gains). Gains and norms are never decayed by default (nanoGPT, minGPT);
embeddings are exempt as in minGPT (nanoGPT's later version decays every 2-D tensor); the head follows them so
that AdamW decays exactly the parameters Muon/NorMuon decay and a comparison between optimizers changes only
the update rule. Per-role lrs, separate betas and decay for the non-hidden roles are what the optimization
benchmark's AdamW baseline needs (optim/recipes.py, track3-adam).
"""

import torch

from optim.registry import register_optimizer
from optim.roles import role_table, torch_groups


def fused_adamw_available(params) -> bool:
    """torch has a fused AdamW (one multi-tensor kernel per device and dtype, computing in fp32) for these
    parameters: floating point, on the CPU or a CUDA GPU. It is ~3x faster than the per-tensor loop on the CPU."""
    return bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)


@register_optimizer("adamw")
def build(cfg, groups):
    fused = fused_adamw_available([p for ps in groups.values() for p in ps])
    return torch.optim.AdamW(torch_groups(groups, role_table(cfg, cfg.lr)), lr=cfg.lr, eps=cfg.eps,
                             fused=fused or None)
