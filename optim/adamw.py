"""AdamW (torch.optim.AdamW), lr = cfg.lr for every parameter.

Weight decay (cfg.weight_decay, decoupled) applies to the hidden matrices only: embeddings, the head and the
gains/norms are not decayed. Gains and norms are never decayed (nanoGPT, minGPT). Embeddings are exempt as in
minGPT (nanoGPT's later version decays every 2-D tensor); the head follows them here so that AdamW decays
exactly the parameters Muon/NorMuon decay and a comparison between optimizers changes only the update rule.
One param group per role (hidden, embed, head, scalar), each carrying `role`.
"""

import torch

from optim.registry import register_optimizer


def role_groups(groups: dict, weight_decay: float) -> list[dict]:
    """torch param groups, one per non-empty role; weight decay on the hidden matrices only."""
    return [{"params": params, "role": role, "weight_decay": weight_decay if role == "hidden" else 0.0}
            for role, params in groups.items() if params]


@register_optimizer("adamw")
def build(cfg, groups):
    return torch.optim.AdamW(role_groups(groups, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
