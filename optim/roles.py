"""Parameter roles and the role table: which parameters an optimizer treats alike, and with what
hyper-parameters (optim/__init__.py lists the roles). AuxRoles: the fields every optimizer config shares for the
roles other than the hidden matrices."""

import math
from dataclasses import dataclass

import torch

from optim.registry import require

ROLES = ("hidden", "embed", "head", "scalar")
EMBEDDINGS = ("wte.", "wpe.", "value_embeds.")


class RoleGroups(dict):
    """{role: parameters}, and `names`: each parameter's name in the model (for builders that split a role
    further, e.g. gains from biases, or treat one module apart)."""

    def __init__(self, *args, names: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.names: dict[torch.nn.Parameter, str] = names or {}

    def name(self, p: torch.nn.Parameter) -> str:
        return self.names[p]


def param_groups(model: torch.nn.Module) -> RoleGroups:
    """{hidden, embed, head, scalar} -> parameters (requires_grad only), each exactly once, in model order; the
    result's `names` maps each parameter to its name.

    Raises ValueError for a parameter the naming contract does not place (a 2-D or larger tensor outside
    blocks., the embeddings and lm_head.weight, or a tensor of 3+ dims under blocks.).
    """
    groups = RoleGroups({role: [] for role in ROLES})
    for name, p in model.named_parameters():  # a tied head appears once, as wte.weight
        if not p.requires_grad:
            continue
        groups.names[p] = name
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
class AuxRoles:
    """Hyper-parameters of the roles other than the hidden matrices, shared by every optimizer's config: the
    embeddings, the head weight and the scalars (gains, norms, every bias) take their own learning rate when it is
    set, else the optimizer's default for them (its `lr` under AdamW and SGD, `aux_lr` under Muon-like ones)."""

    embed_lr: float = 0.0
    """Learning rate of the embeddings (wte, wpe, value embeddings); 0 = the default of the non-hidden roles."""
    head_lr: float = 0.0
    """Learning rate of the LM head weight; 0 = the default of the non-hidden roles."""
    scalar_lr: float = 0.0
    """Learning rate of gains, norms and every bias (the head's too); 0 = the default of the non-hidden roles."""
    aux_weight_decay: float = 0.0
    """Weight decay of the embed, head and scalar roles, applied as the optimizer applies it."""

    def __post_init__(self):
        check_non_negative(self, "embed_lr", "head_lr", "scalar_lr", "aux_weight_decay")


@dataclass(frozen=True)
class AuxAdamW(AuxRoles):
    """AuxRoles of an optimizer that steps the embed, head and scalar roles with AdamW (optim.muon.adamw_update)
    beside its own method on the hidden matrices: AdamW's default lr, betas and eps there."""

    aux_lr: float = 3e-3
    """Learning rate of the embed, head and scalar roles (AdamW) without their own."""
    aux_betas: tuple = (0.9, 0.95)
    """AdamW's (beta1, beta2) on the embed, head and scalar roles."""
    aux_eps: float = 1e-8
    """AdamW's eps on the embed, head and scalar roles."""

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "aux_lr", "aux_eps")
        check_betas("aux_betas", self.aux_betas)


def check_betas(name: str, value, *, empty_ok: bool = False):
    """A (beta1, beta2) pair in [0, 1), or () where `empty_ok` (the optimizer's other betas)."""
    if empty_ok and value == ():
        return
    require(len(value) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in value),
            f"--optim.{name}={value} must be two numbers in [0, 1)" + (" or ()" if empty_ok else ""))


def check_positive(cfg, *names: str):
    """Each named field of `cfg` a finite number > 0 (an lr of 0 would train nothing without a word)."""
    for name in names:
        value = getattr(cfg, name)
        require(math.isfinite(value) and value > 0, f"--optim.{name}={value} must be a number > 0")


def check_non_negative(cfg, *names: str):
    for name in names:
        value = getattr(cfg, name)
        require(math.isfinite(value) and value >= 0, f"--optim.{name}={value} must be a number >= 0")


def check_fraction(cfg, *names: str):
    """Each named field in [0, 1) (momenta, EMA coefficients)."""
    for name in names:
        value = getattr(cfg, name)
        require(0 <= value < 1, f"--optim.{name}={value} must lie in [0, 1)")


@dataclass(frozen=True)
class RoleHparams:
    """One row of the role table. `weight_decay` is applied as the optimizer applies it (decoupled
    p ← p·(1 − lr·wd) for AdamW, Muon and NorMuon; added to the gradient for SGD)."""

    lr: float
    betas: tuple[float, float]
    weight_decay: float


def role_table(cfg: AuxRoles, hidden: RoleHparams, *, aux_lr: float, aux_betas) -> dict[str, RoleHparams]:
    """role -> RoleHparams: `hidden` for the hidden matrices; embed, head and scalar: cfg.{role}_lr (0 = aux_lr),
    aux_betas and cfg.aux_weight_decay."""
    table = {"hidden": RoleHparams(hidden.lr, tuple(hidden.betas), hidden.weight_decay)}
    for role in ROLES[1:]:
        table[role] = RoleHparams(getattr(cfg, f"{role}_lr") or aux_lr, tuple(aux_betas), cfg.aux_weight_decay)
    for role, row in table.items():
        if row.lr < 0 or row.weight_decay < 0 or len(row.betas) != 2 or not all(0 <= b < 1 for b in row.betas):
            raise ValueError(f"role {role}: lr={row.lr} and weight_decay={row.weight_decay} must be >= 0 and "
                             f"betas={row.betas} two numbers in [0, 1)")
    return table


def torch_groups(groups: dict, table: dict[str, RoleHparams], roles=ROLES) -> list[dict]:
    """torch param groups, one per non-empty role among `roles`, with the table's lr, betas, weight_decay."""
    return [{"params": groups[role], "role": role, "lr": table[role].lr, "betas": table[role].betas,
             "weight_decay": table[role].weight_decay} for role in roles if groups[role]]
