"""Muon (momentum orthogonalized by Newton-Schulz) for the hidden matrices, Adam for everything else.

Per hidden matrix W (rows × cols) with gradient G, following Keller Jordan's Muon as used in the speedrun
(and torch.optim.Muon, which computes the same thing one matrix at a time):

    B ← β·B + (1-β)·G                       momentum buffer (lerp form)
    U ← (1-β)·G + β·B  (Nesterov) or B
    O ← NewtonSchulz(U in bf16)             ≈ the orthogonal polar factor of U
    W ← W·(1 - lr·wd) - lr·s·O              s = sqrt(max(1, rows/cols))  ("original", Keller)
                                            s = 0.2·sqrt(max(rows, cols)) ("match_rms_adamw", Moonshot)

Same-shape matrices are stacked and orthogonalized in one batched call (the Triton kernel's batch axis).
Embeddings, the head and the gains use Adam (torch.optim.Adam's arithmetic, no weight decay by default)
in the same Optimizer, so one state_dict holds everything.

Param groups: every group has `role` (hidden | embed | head | scalar) and `use_muon` (True only for
hidden). `_muon_update(group, params)` updates any subset of a Muon group's matrices, so the distributed
optimizer can give each rank its share and all-gather the results.
"""

from collections import defaultdict

import torch

from kernels import reference, registry
from optim.registry import register_optimizer

LR_SCALINGS = ("original", "match_rms_adamw")


def lr_scale(shape, scaling: str) -> float:
    """Multiplier of the learning rate for a (rows, cols) matrix."""
    rows, cols = shape[-2], shape[-1]
    if scaling == "original":
        return max(1.0, rows / cols) ** 0.5
    if scaling == "match_rms_adamw":
        return 0.2 * max(rows, cols) ** 0.5
    raise ValueError(f"unknown Muon lr scaling {scaling!r}; choose from {LR_SCALINGS}")


class Muon(torch.optim.Optimizer):
    """Muon on `hidden` (2-D matrices) and Adam on `other` (a list, or a dict role -> list: one group per role)."""

    def __init__(self, hidden, other=(), *, lr: float, adam_lr: float, momentum: float = 0.95,
                 nesterov: bool = True, weight_decay: float = 0.0, betas=(0.9, 0.95), eps: float = 1e-8,
                 ns_impl: str = "eager", ns_coefficients: str = "quintic", ns_steps: int = 5,
                 lr_scaling: str = "original"):
        hidden = list(hidden)
        if any(p.ndim != 2 for p in hidden):
            raise ValueError(f"Muon orthogonalizes 2-D matrices; got shapes {[tuple(p.shape) for p in hidden]}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Muon momentum must be in [0, 1), got {momentum}")
        lr_scale((1, 1), lr_scaling)  # validate the names now, not at the first step
        reference.ns_coefficients(ns_coefficients, ns_steps)
        self.orthogonalize = registry.get("newton_schulz", ns_impl)  # KeyError listing the registered impls
        other = dict(other) if isinstance(other, dict) else {"other": list(other)}
        groups = [dict(params=hidden, role="hidden", use_muon=True, lr=lr, momentum=momentum, nesterov=nesterov,
                       weight_decay=weight_decay, ns_coefficients=ns_coefficients, ns_steps=ns_steps,
                       lr_scaling=lr_scaling)]
        groups += [dict(params=list(params), role=role, use_muon=False, lr=adam_lr, betas=tuple(betas), eps=eps,
                        weight_decay=0.0) for role, params in other.items()]
        super().__init__([g for g in groups if g["params"]], {})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_update(group)
            else:
                self._adam_update(group)
        return loss

    # --- Muon side ---------------------------------------------------------------------------------

    @torch.no_grad()
    def _muon_update(self, group: dict, params=None):
        """Momentum, one batched orthogonalization per shape, and the update, for `params` (default: all)
        of a Muon group. Parameters without a gradient are skipped."""
        by_shape = defaultdict(list)
        for p in group["params"] if params is None else params:
            if p.grad is not None:
                by_shape[tuple(p.shape)].append(p)
        for same_shape in by_shape.values():
            directions = self._orthogonalized_momentum(group, same_shape)  # (B, rows, cols) bf16
            for p, direction in zip(same_shape, directions):
                self._apply_update(group, p, direction)

    def _orthogonalized_momentum(self, group: dict, params) -> torch.Tensor:
        """Update the momentum buffers of same-shape `params`; return NS(U) stacked, (B, rows, cols) bf16."""
        beta = group["momentum"]
        updates = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - beta)
            updates.append(p.grad.lerp(buf, beta) if group["nesterov"] else buf)
        stacked = torch.stack([u.bfloat16() for u in updates])  # (B, rows, cols)
        return self.orthogonalize(stacked, steps=group["ns_steps"], coefficients=group["ns_coefficients"])

    def _normalize(self, group: dict, p: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        """Hook between orthogonalization and the update: identity for Muon; NorMuon overrides it."""
        return direction

    def _apply_update(self, group: dict, p: torch.Tensor, direction: torch.Tensor):
        direction = self._normalize(group, p, direction)
        lr = group["lr"]
        if group["weight_decay"]:
            p.mul_(1 - lr * group["weight_decay"])  # decoupled, by the unscaled lr (as torch.optim.Muon)
        p.add_(direction.to(p.dtype), alpha=-lr * lr_scale(p.shape, group["lr_scaling"]))

    # --- Adam side (embeddings, head, gains) -------------------------------------------------------

    @torch.no_grad()
    def _adam_update(self, group: dict):
        """Adam with decoupled weight decay, in torch.optim.Adam's order of operations (foreach=False)."""
        beta1, beta2 = group["betas"]
        lr = group["lr"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            if group["weight_decay"]:
                p.mul_(1 - lr * group["weight_decay"])
            state["exp_avg"].lerp_(p.grad, 1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            bias1 = 1 - beta1 ** state["step"]
            bias2_sqrt = (1 - beta2 ** state["step"]) ** 0.5
            denom = (state["exp_avg_sq"].sqrt() / bias2_sqrt).add_(group["eps"])
            p.addcdiv_(state["exp_avg"], denom, value=-lr / bias1)


def adam_roles(groups: dict) -> dict:
    """The Adam side of param_groups(model): {embed, head, scalar} -> params."""
    return {role: groups[role] for role in ("embed", "head", "scalar")}


def muon_kwargs(cfg) -> dict:
    return dict(lr=cfg.lr, adam_lr=cfg.adam_lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                weight_decay=cfg.weight_decay, betas=cfg.betas, eps=cfg.eps, ns_impl=cfg.ns_impl,
                ns_coefficients=cfg.ns_coefficients, ns_steps=cfg.ns_steps, lr_scaling=cfg.muon_lr_scaling)


@register_optimizer("muon")
def build(cfg, groups):
    return Muon(groups["hidden"], adam_roles(groups), **muon_kwargs(cfg))
