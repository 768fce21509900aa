"""AdamW (torch's): weight decay on the hidden matrices only; embeddings, head and gains are not decayed."""

import torch

from optim.registry import register_optimizer


@register_optimizer("adamw")
def build(cfg, groups):
    no_decay = groups["embed"] + groups["head"] + groups["scalar"]
    return torch.optim.AdamW(
        [{"params": groups["hidden"], "weight_decay": cfg.weight_decay, "kind": "hidden"},
         {"params": no_decay, "weight_decay": 0.0, "kind": "other"}],
        lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
