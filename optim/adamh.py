"""AdamH: Adam's bias-corrected moments as the direction of a hyperball step, AdamW on the other roles.

Per hidden matrix W with gradient G, at step t (counted from 1), all in fp32:

    m ← β₁·m + (1-β₁)·G;  v ← β₂·v + (1-β₂)·G²                    (mul then add: not torch's lerp)
    D = (m / (1-β₁ᵗ)) / (sqrt(v / (1-β₂ᵗ)) + eps)                  the second moment corrected before the root
    W' = W - lr·‖W‖·D/max(‖D‖, ε);  W ← W'·‖W‖/max(‖W'‖, ε)         optim.hyperball: ‖W‖ stays its initial value

No weight decay on the hidden matrices. Track 3's result #4 warms the hidden matrices' lr up from 0 (the
matrix_warmup_decay schedule below): at step 0 the step is 0, yet the moments and t advance and W is projected.
The embeddings, the head and the scalars take torch's AdamW (fused where torch has the kernel), in the same
Optimizer, so one state_dict holds everything.
"""

from dataclasses import dataclass

import torch

from optim.hyperball import EPS, TORCH_HYPERBALL_INIT, hyperball_step
from optim.muon import ADAM_ROLES, adamw_groups, adamw_update, closure_loss
from optim.muonh import HYPERBALL_AUX, HYPERBALL_SCHEDULE
from optim.registry import Steps, optimizer, recipe, require, schedule
from optim.roles import AuxAdamW, RoleHparams, check_betas, check_positive, role_table, torch_groups
from optim.schedules import StableDecay, family


class AdamH(torch.optim.Optimizer):
    """AdamH on `hidden` (2-D matrices, role hidden); AdamW on `adam_groups` (torch param-group dicts with lr, betas,
    weight_decay and role, as optim.roles.torch_groups makes them; `aux_eps` their eps)."""

    def __init__(self, hidden, adam_groups=(), *, lr: float, betas=(0.9, 0.95), eps: float = 1e-8,
                 hyperball_eps: float = EPS, aux_eps: float = 1e-8):
        hidden = list(hidden)
        if any(p.ndim != 2 for p in hidden):
            raise ValueError(f"AdamH steps 2-D matrices on their sphere; got shapes {[tuple(p.shape) for p in hidden]}")
        groups = [dict(params=hidden, role="hidden", lr=lr, betas=tuple(betas), eps=eps, hyperball_eps=hyperball_eps,
                       hyperball=True)]
        groups += adamw_groups(adam_groups, eps=aux_eps, hyperball=False)
        super().__init__([g for g in groups if g["params"]], {})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        adamw_update(self, [g for g in self.param_groups if not g["hyperball"]])
        for group in self.param_groups:
            if group["hyperball"]:
                self.hyperball_update(group)
        return loss

    @torch.no_grad()
    def hyperball_update(self, group: dict):
        """Adam's moments and the hyperball step of every matrix of `group` with a gradient."""
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            t, m, v, g = state["step"], state["exp_avg"], state["exp_avg_sq"], p.grad
            m.mul_(beta1).add_(g, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            direction = (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt() + group["eps"])
            hyperball_step(p, direction, group["lr"], eps=group["hyperball_eps"])


@dataclass(frozen=True)
class AdamHConfig(AuxAdamW):
    """AdamH: Adam's bias-corrected direction applied through the hyperball (each hidden matrix keeps its norm),
    AdamW on the other roles."""

    lr: float = 0.018
    """Fraction of each hidden matrix's radius (Frobenius norm) a step moves along its direction, before the
    projection back onto the sphere (about the angle, in radians)."""
    betas: tuple = (0.9, 0.95)
    """Adam's (beta1, beta2) of the hidden matrices."""
    eps: float = 1e-8
    """Added to the root of the bias-corrected second moment of the hidden matrices."""
    hyperball_eps: float = EPS
    """ε of the hyperball's divisions by the direction's and the stepped matrix's norms (clamped to at least ε)."""

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "lr", "eps", "hyperball_eps")
        check_betas("betas", self.betas)


@optimizer("adamh", AdamHConfig)
def build(cfg: AdamHConfig, groups):
    table = role_table(cfg, RoleHparams(cfg.lr, cfg.betas, 0.0), aux_lr=cfg.aux_lr, aux_betas=cfg.aux_betas)
    return AdamH(groups["hidden"], torch_groups(groups, table, ADAM_ROLES), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                 hyperball_eps=cfg.hyperball_eps, aux_eps=cfg.aux_eps)


@schedule("matrix_warmup_decay")
@dataclass(frozen=True)
class MatrixWarmupDecay(StableDecay):
    """stable_decay with a warm-up of the hidden matrices alone, from 0: their lr × step / matrix_warmup_steps for
    step < matrix_warmup_steps (0 at step 0), then stable_decay's; the other roles follow stable_decay from step 0
    (track 3's AdamH, #4)."""

    matrix_warmup_steps: Steps = 250
    """Steps over which the hidden matrices' lr rises linearly from 0 (lr × step / matrix_warmup_steps)."""

    def __post_init__(self):
        super().__post_init__()
        require(self.matrix_warmup_steps >= 0,
                f"--schedule.matrix_warmup_steps={self.matrix_warmup_steps} must be >= 0")

    def factor(self, step: int, horizon: int, role: str) -> float:
        if family(role) == "matrix" and step < self.matrix_warmup_steps:
            return step / self.matrix_warmup_steps
        return super().factor(step, horizon, role)


@recipe("track3-adamh")
def track3_adamh() -> dict:
    """Track-3 result #4, AdamH: 4875 steps, mean val loss 3.2741 (n=5).
    Source: records/track_3_optimization/results/20260430_adamh/ (its logs' script; the folder has no .py).

    AdamH (betas (0.9, 0.95), eps 1e-8, moments by mul and add, bias corrections before the root, then the
    hyperball step in fp32 back onto each matrix's initial norm) on the hidden matrices with lr 0.018: linear from
    0 over the first 250 steps, then linear to 0 at step 4875 (cooldown 1.0). AdamW on the rest, betas (0.8, 0.95),
    eps 1e-10, no weight decay, embedding lr 0.3, head weight 1/320, 1-D parameters 0.01, flat then linear to 0 over
    the last 40%. Init: PyTorch's construction init with attn.proj x1.25, mlp.proj x3, mlp.fc x1.5, the head weight
    and every output-projection bias zero (optim.hyperball.TORCH_HYPERBALL_INIT); RMSNorms in fp32.
    """
    return {"optimizer": "adamh", "optim.lr": 0.018, "optim.betas": (0.9, 0.95), "optim.eps": 1e-8,
            **HYPERBALL_AUX, "max_steps": 4875, **HYPERBALL_SCHEDULE, "schedule": "matrix_warmup_decay",
            "schedule.matrix_warmup_steps": 250, **TORCH_HYPERBALL_INIT, "model.norm_fp32": True}
