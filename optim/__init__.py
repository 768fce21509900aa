"""Optimizers for the speedrun; optim.roles is the one place that splits the model's parameters into roles:

    role    parameters                                                        under Muon / NorMuon
    hidden  every 2-D parameter under blocks. (attention and MLP matrices)    Muon / NorMuon
    embed   token, position and value embeddings (wte., wpe., value_embeds.)  the AdamW side
    head    the untied LM head's weight (lm_head.weight)                      the AdamW side
    scalar  every tensor with fewer than 2 dims: gains, norms, skip weights,  the AdamW side
            and all biases (the head's bias too)

An optimizer is one file of this package (or a file of your own, `--optimizer PATH.py:NAME`): its hyper-parameters
as a frozen dataclass with a docstring under every field, its builder registered with @optim.registry.optimizer,
and its named recipes (@optim.registry.recipe); optim.registry finds every file of the package by itself.
build_optimizer(cfg, model) calls the builder of cfg's class with param_groups(model); every param group of the
result carries `role` (hidden when the builder set none) and `initial_lr` (and `initial_momentum` where it has a
momentum): the trainer's schedule (optim.schedules) sets lr (and momentum) from them each step. Wrappers
(optim.wrappers) and readouts (optim.readouts) are parts of the same registry.
"""

import torch

from optim import registry
from optim.roles import ROLES, AuxAdamW, AuxRoles, RoleHparams, param_groups, role_table  # noqa: F401


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The registered optimizer whose hyper-parameter class `cfg` is, over param_groups(model)."""
    optimizer = registry.entry_of(cfg).factory(cfg, param_groups(model))
    for group in optimizer.param_groups:
        group.setdefault("role", "hidden")
        group["initial_lr"] = group["lr"]
        if "momentum" in group:
            group["initial_momentum"] = group["momentum"]
    return optimizer


def wrap_optimizer(cfg, optimizer, model: torch.nn.Module):
    """`optimizer` inside the registered wrapper whose hyper-parameter class `cfg` is (None: as it is)."""
    return optimizer if cfg is None else registry.entry_of(cfg).factory(cfg, optimizer, model)


def make_readout(cfg, model: torch.nn.Module):
    """The registered readout whose hyper-parameter class `cfg` is (None: the trained weights as they are)."""
    from optim.readouts import Readout

    return Readout(model) if cfg is None else registry.entry_of(cfg).factory(cfg, model)
