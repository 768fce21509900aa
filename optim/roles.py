"""Parameter roles and the role table: which parameters an optimizer treats alike, and with what
hyper-parameters (optim/__init__.py lists the roles)."""

from dataclasses import dataclass

import torch

ROLES = ("hidden", "embed", "head", "scalar")
EMBEDDINGS = ("wte.", "wpe.", "value_embeds.")


def param_groups(model: torch.nn.Module) -> dict[str, list[torch.nn.Parameter]]:
    """{hidden, embed, head, scalar} -> parameters (requires_grad only), each exactly once, in model order.

    Raises ValueError for a parameter the naming contract does not place (a 2-D or larger tensor outside
    blocks., the embeddings and lm_head.weight, or a tensor of 3+ dims under blocks.).
    """
    groups = {role: [] for role in ROLES}
    for name, p in model.named_parameters():  # a tied head appears once, as wte.weight
        if not p.requires_grad:
            continue
        if name.startswith("blocks.") and p.ndim == 2:
            groups["hidden"].append(p)
        elif name.startswith(EMBEDDINGS):
            groups["embed"].append(p)
        elif name == "lm_head.weight":
            groups["head"].append(p)
        elif p.ndim < 2:
            groups["scalar"].append(p)
        else:
            raise ValueError(f"parameter {name} {tuple(p.shape)} fits no optimizer group: 2-D parameters must be "
                             f"under blocks. (hidden matrices), an embedding ({', '.join(EMBEDDINGS)}) or the "
                             f"lm_head. weight; gains, norms and biases must have fewer than 2 dims")
    return groups


@dataclass(frozen=True)
class RoleHparams:
    """One row of the role table. `weight_decay` is applied as the optimizer applies it (decoupled
    p ← p·(1 − lr·wd) for AdamW, Muon and NorMuon; added to the gradient for SGD)."""

    lr: float
    betas: tuple[float, float]
    weight_decay: float


def role_table(cfg, default_lr: float) -> dict[str, RoleHparams]:
    """role -> RoleHparams for an OptimConfig. hidden: cfg.lr, cfg.betas, cfg.weight_decay. embed, head and
    scalar: cfg.{role}_lr (0 = `default_lr`: cfg.lr under AdamW/SGD, cfg.adam_lr under Muon/NorMuon),
    cfg.adam_betas (() = cfg.betas), cfg.adam_weight_decay."""
    adam_betas = tuple(cfg.adam_betas or cfg.betas)
    table = {"hidden": RoleHparams(cfg.lr, tuple(cfg.betas), cfg.weight_decay)}
    for role in ROLES[1:]:
        table[role] = RoleHparams(getattr(cfg, f"{role}_lr") or default_lr, adam_betas, cfg.adam_weight_decay)
    for role, row in table.items():
        if row.lr < 0 or row.weight_decay < 0 or len(row.betas) != 2 or not all(0 <= b < 1 for b in row.betas):
            raise ValueError(f"role {role}: lr={row.lr} and weight_decay={row.weight_decay} must be >= 0 and "
                             f"betas={row.betas} two numbers in [0, 1)")
    return table


def torch_groups(groups: dict, table: dict[str, RoleHparams], roles=ROLES) -> list[dict]:
    """torch param groups, one per non-empty role among `roles`, with the table's lr, betas, weight_decay."""
    return [{"params": groups[role], "role": role, "lr": table[role].lr, "betas": table[role].betas,
             "weight_decay": table[role].weight_decay} for role in roles if groups[role]]

