"""SGD with (Nesterov) momentum (torch's), weight decay on the hidden matrices only."""

import torch

from optim.registry import register_optimizer


@register_optimizer("sgd")
def build(cfg, groups):
    no_decay = groups["embed"] + groups["head"] + groups["scalar"]
    return torch.optim.SGD(
        [{"params": groups["hidden"], "weight_decay": cfg.weight_decay, "kind": "hidden"},
         {"params": no_decay, "weight_decay": 0.0, "kind": "other"}],
        lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
