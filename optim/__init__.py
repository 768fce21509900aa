"""Optimizers for the speedrun and the one place that splits the model's parameters into groups.

    hidden  every 2-D parameter under `blocks.` (attention and MLP matrices) -> Muon / NorMuon
    embed   token, position and value embeddings                           -> Adam side
    head    the untied LM head                                             -> Adam side
    scalar  gains, norms, skip weights (fewer than 2 dims)                 -> Adam side

Every param group carries `initial_lr`; the trainer's schedule sets lr = initial_lr × factor.
"""

import torch

from optim import adamw, muon, normuon, sgd  # noqa: F401  (each registers its builder)
from optim.registry import OPTIMIZERS, get_optimizer, register_optimizer  # noqa: F401

EMBEDDINGS = ("wte.", "wpe.", "value_embeds.")


def param_groups(model: torch.nn.Module) -> dict[str, list[torch.nn.Parameter]]:
    groups = {"hidden": [], "embed": [], "head": [], "scalar": []}
    for name, p in model.named_parameters():
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
                             f"under blocks. (hidden matrices), an embedding ({', '.join(EMBEDDINGS)}) or lm_head.")
    return groups


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    optimizer = get_optimizer(cfg.name)(cfg, param_groups(model))
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    return optimizer
