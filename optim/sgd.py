"""SGD with momentum (torch.optim.SGD), Nesterov by default, one param group per role.

The hidden matrices take `lr` and `weight_decay`; the other roles their own lr when set (optim.roles.AuxRoles;
default `lr`) and `aux_weight_decay`. Weight decay is coupled here: torch's SGD adds wd·W to the gradient.
"""

from dataclasses import dataclass

import torch

from optim.registry import optimizer
from optim.roles import (
    AuxRoles,
    RoleHparams,
    check_fraction,
    check_non_negative,
    check_positive,
    role_table,
    torch_groups,
)


@dataclass(frozen=True)
class SGDConfig(AuxRoles):
    """SGD with (Nesterov) momentum on every parameter, one param group per role."""

    lr: float = 0.1
    """Learning rate of the hidden matrices, and of every other role without its own."""
    momentum: float = 0.95
    """Heavy-ball momentum (0 = plain SGD)."""
    nesterov: bool = True
    """Nesterov's form of the momentum (ignored when momentum is 0)."""
    weight_decay: float = 0.0
    """Weight decay of the hidden matrices, added to the gradient (coupled)."""

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "lr")
        check_non_negative(self, "weight_decay")
        check_fraction(self, "momentum")


@optimizer("sgd", SGDConfig)
def build(cfg: SGDConfig, groups):
    table = role_table(cfg, RoleHparams(cfg.lr, (0.0, 0.0), cfg.weight_decay), aux_lr=cfg.lr, aux_betas=(0.0, 0.0))
    param_groups = torch_groups(groups, table)
    for group in param_groups:
        del group["betas"]  # SGD has none
    # torch's Nesterov needs momentum > 0: momentum 0 is plain SGD whatever cfg.nesterov says.
    return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
