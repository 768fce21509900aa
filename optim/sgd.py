"""SGD with momentum (torch.optim.SGD); Nesterov per cfg.nesterov; one param group per role.

Each role's lr and weight decay come from optim.role_table (by default lr = cfg.lr everywhere and
cfg.weight_decay on the hidden matrices only, as optim/adamw.py explains). Weight decay is coupled here:
torch's SGD adds wd·W to the gradient.
"""

import torch

from optim.registry import register_optimizer
from optim.roles import role_table, torch_groups


@register_optimizer("sgd")
def build(cfg, groups):
    param_groups = torch_groups(groups, role_table(cfg, cfg.lr))
    for group in param_groups:
        del group["betas"]  # SGD has none
    # torch's Nesterov needs momentum > 0: momentum 0 is plain SGD whatever cfg.nesterov says.
    return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
