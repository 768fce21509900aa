"""Optimizers for the speedrun and the one place that splits the model's parameters into groups.

    hidden  every 2-D parameter under `blocks.` (attention and MLP matrices) -> Muon / NorMuon
    embed   token, position and value embeddings (wte., wpe., value_embeds.) -> Adam side
    head    the untied LM head (lm_head.)                                    -> Adam side
    scalar  gains, norms, skip weights (fewer than 2 dims)                   -> Adam side

build_optimizer(cfg, model) looks cfg.name up in optim.registry and hands the builder these four lists.
Every param group of the result carries `role` (one of the four names; the registered optimizers keep one
group per role) and `initial_lr`: the trainer's schedule sets lr = initial_lr × factor.
"""

import torch

from optim import adamw, muon, normuon, sgd  # noqa: F401  (each registers its builder)
from optim.registry import OPTIMIZERS, get_optimizer, register_optimizer  # noqa: F401

ROLES = ("hidden", "embed", "head", "scalar")
EMBEDDINGS = ("wte.", "wpe.", "value_embeds.")


def param_groups(model: torch.nn.Module) -> dict[str, list[torch.nn.Parameter]]:
    """{hidden, embed, head, scalar} -> parameters (requires_grad only), each exactly once, in model order.

    Raises ValueError for a parameter the naming contract does not place (a 2-D or larger tensor outside
    blocks., the embeddings and lm_head., or a tensor of 3+ dims under blocks.).
    """
    groups = {role: [] for role in ROLES}
    for name, p in model.named_parameters():  # a tied head appears once, as wte.weight
        if not p.requires_grad:
            continue
        if name.startswith("blocks.") and p.ndim == 2:
            groups["hidden"].append(p)
        elif name.startswith(EMBEDDINGS):
            groups["embed"].append(p)
        elif name.startswith("lm_head."):
            groups["head"].append(p)
        elif p.ndim < 2:
            groups["scalar"].append(p)
        else:
            raise ValueError(f"parameter {name} {tuple(p.shape)} fits no optimizer group: 2-D parameters must be "
                             f"under blocks. (hidden matrices), an embedding ({', '.join(EMBEDDINGS)}) or lm_head.; "
                             f"gains and norms must have fewer than 2 dims")
    return groups


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer cfg.name (KeyError listing the registered names if unknown) over param_groups(model)."""
    optimizer = get_optimizer(cfg.name)(cfg, param_groups(model))
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    return optimizer
