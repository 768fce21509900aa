"""SGD with momentum (torch.optim.SGD), lr = cfg.lr for every parameter; Nesterov per cfg.nesterov.

Weight decay (cfg.weight_decay, coupled: added to the gradient, as torch's SGD does) on the hidden matrices
only, the same parameters the other optimizers decay (see optim/adamw.py). One param group per role.
"""

import torch

from optim.adamw import role_groups
from optim.registry import register_optimizer


@register_optimizer("sgd")
def build(cfg, groups):
    # torch's Nesterov needs momentum > 0: momentum 0 is plain SGD whatever cfg.nesterov says.
    return torch.optim.SGD(role_groups(groups, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.nesterov and cfg.momentum > 0)
