"""Optimizers for the speedrun; optim.roles is the one place that splits the model's parameters into roles:

    role    parameters                                                        under Muon / NorMuon
    hidden  every 2-D parameter under blocks. (attention and MLP matrices)    Muon / NorMuon
    embed   token, position and value embeddings (wte., wpe., value_embeds.)  the AdamW side
    head    the untied LM head's weight (lm_head.weight)                      the AdamW side
    scalar  every tensor with fewer than 2 dims: gains, norms, skip weights,  the AdamW side
            and all biases (the head's bias too)

AdamW and SGD apply their own rule to every role, one param group per role.
role_table(cfg, default_lr) gives each role its hyper-parameters (lr, betas, weight decay) from the OptimConfig;
build_optimizer(cfg, model) looks cfg.name up in optim.registry and hands the builder cfg and the role lists.
Every param group of the result carries `role` (the registered optimizers keep one group per role) and
`initial_lr`: the trainer's schedule sets lr = initial_lr × factor.
"""

import torch

from optim import adamw, muon, normuon, sgd  # noqa: F401  (each registers its builder)
from optim.registry import OPTIMIZERS, get_optimizer, register_optimizer  # noqa: F401
from optim.roles import ROLES, RoleHparams, param_groups, role_table  # noqa: F401


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer cfg.name (KeyError listing the registered names if unknown) over param_groups(model)."""
    optimizer = get_optimizer(cfg.name)(cfg, param_groups(model))
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    return optimizer
