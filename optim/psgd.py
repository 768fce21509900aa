"""PSGD Kron: each hidden matrix preconditioned by two triangular Kronecker factors fitted from random probes,
applied through the hyperball; AdamW on the other roles.

Per hidden matrix W (m × n) with gradient G, at step t (counted from 1), all in fp32:

    M ← lerp(M, G, 1-β);  u = M / (1 - βᵗ)                   momentum, bias-corrected (β = momentum)
    P = (Q₀ᵀQ₀) ⊗ (Q₁ᵀQ₁)                                    the preconditioner: Q₀ (m × m), Q₁ (n × n) upper
                                                             triangular, started at s·I (init_scale)

The factors are fitted so that P whitens the momentum: P·E[h hᵀ]·P = I, the minimiser over P of
E[hᵀ P h + vᵀ P⁻¹ v] with v ~ N(0, I) (Li's PSGD criterion, the "whitening" form: h is the momentum itself, not a
Hessian-vector product). Each preconditioner step draws two probes, v then ν, from the global generator
(torch.randn_like: on a CUDA parameter, the device's generator), and moves each factor by one step of a
natural-gradient descent on its triangular Lie group, normalised by a spectral-norm estimate:

    r = sqrt(max|Q₁| / max|Q₀|);  Q₀ ← r·Q₀;  Q₁ ← Q₁/r     balance the factors (P is unchanged)
    A = Q₀ U Q₁ᵀ                                             U = u + damping·|u|⊙ν (the probed direction)
    B = Q₀⁻ᵀ v Q₁⁻¹                                          two triangular solves
    Q₀ ← Q₀ - precond_lr / σ(AAᵀ + BBᵀ) · triu(AAᵀ - BBᵀ) Q₀
    Q₁ ← Q₁ - precond_lr / σ(AᵀA + BᵀB) · triu(AᵀA - BᵀB) Q₁  (A and B from before Q₀'s step)

(the four Gram matrices through kernels.registry's "gram" op, gram_impl; eager is one matmul each).

σ(X) estimates the largest eigenvalue of the symmetric PSD X by one and a half power iterations (spectral_norm):
c = max|Xᵢⱼ|, X̂ = X/c, x = the column of X̂ of largest norm, x ← X̂x/‖X̂x‖, σ = c·‖X̂x‖ (0 for X = 0). The step's
direction is then the preconditioned momentum (the clean u, not U):

    D = (Q₀ᵀQ₀) u (Q₁ᵀQ₁)
    W' = W - lr·D·(‖W‖/(‖D‖ + ε));  W ← W'·‖W‖/(‖W'‖ + ε)    optim.hyperball's "+ ε" form (clamp=False)

so each hidden matrix keeps its initial Frobenius norm and lr is about the angle a step turns it by (no weight
decay). With hyperball=False the step is plain: W ← W·(1 - lr·weight_decay) - lr·D.

Init of the factors (init_scale 0, the default): s = mean(G⁴)^(-1/32) from the matrix's first gradient (clamped
below at 1e-24 before the power), so that P = s⁴·I starts at about the inverse square root of the gradient's
scale; the value is read to the host once per matrix. The matrices are stepped in order of size, largest first
(a stable sort by element count): that order, and the two probes per matrix per preconditioner step, fix how the
generator is consumed, so a seeded run is reproducible and resumes bit for bit (checkpoints hold the generator).
Every rank of a data-parallel run holds the whole optimizer and draws the same probes.

The embeddings, the head and the scalars take torch's AdamW (fused where torch has the kernel) in the same
Optimizer, stepped first, so one state_dict holds everything.
"""

from dataclasses import dataclass, replace

import torch

from kernels import registry as kernels
from optim.hyperball import EPS, HYPERBALL_MULTIPLIERS, hyperball_step
from optim.muon import ADAM_ROLES, adamw_groups, adamw_update, closure_loss
from optim.muonh import HYPERBALL_AUX
from optim.registry import optimizer, recipe, require, schedule
from optim.roles import (
    AuxAdamW,
    RoleHparams,
    check_fraction,
    check_non_negative,
    check_positive,
    role_table,
    torch_groups,
)
from optim.schedules import Schedule, family

DAMPING = torch.finfo(torch.float32).eps  # 1.1920928955078125e-07
INIT_SCALE_FLOOR = 1e-24


GRAM_IMPLS = ("auto", "eager", "triton")


@torch.no_grad()
def initial_scale(grad: torch.Tensor) -> float:
    """The factors' initial scale s = mean(G⁴)^(-1/32) of a first gradient (fp32, clamped at 1e-24), as a float."""
    return grad.float().abs().pow(4).mean().clamp(min=INIT_SCALE_FLOOR).pow(-1 / 32).item()


@torch.no_grad()
def spectral_norm(x: torch.Tensor) -> torch.Tensor:
    """A 0-D estimate of the largest eigenvalue of the symmetric PSD matrix x: one and a half power iterations from
    the column of largest norm, on x scaled by its largest absolute entry (module docstring); 0 for x = 0. Reads
    nothing to the host."""
    scale = x.abs().amax()
    nonzero = scale != 0
    xs = x / torch.where(nonzero, scale, torch.ones_like(scale))
    column = xs.index_select(1, (xs * xs).sum(0).argmax().view(1)).view(-1)
    y = xs @ column
    y = y / torch.linalg.vector_norm(y)
    return torch.where(nonzero, scale * torch.linalg.vector_norm(xs @ y), scale)


@torch.no_grad()
def precond_update(q0: torch.Tensor, q1: torch.Tensor, u: torch.Tensor, v: torch.Tensor, precond_lr: float, *,
                   gram=None):
    """One step of the factors Q₀ (m × m) and Q₁ (n × n), in place, from the probed direction u (m × n) and the
    probe v (m × n) (module docstring: balance, A, B, the two normalised triangular steps). `gram`: the
    kernels.registry "gram" implementation forming AAᵀ, BBᵀ, AᵀA, BᵀB (default eager: one matmul each)."""
    gram = gram or kernels.get("gram", "eager")
    r = (q1.abs().amax() / q0.abs().amax()).sqrt()
    q0.mul_(r)
    q1.div_(r)
    a = q0 @ u @ q1.mT
    b = torch.linalg.solve_triangular(q0.mT, v, upper=False, left=True)
    b = torch.linalg.solve_triangular(q1, b, upper=True, left=False)
    aa, bb = gram(a, side="left"), gram(b, side="left")
    q0.sub_(precond_lr / spectral_norm(aa + bb) * torch.triu(aa - bb) @ q0)
    aa, bb = gram(a, side="right"), gram(b, side="right")
    q1.sub_(precond_lr / spectral_norm(aa + bb) * torch.triu(aa - bb) @ q1)


def precondition(q0: torch.Tensor, q1: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(Q₀ᵀQ₀) u (Q₁ᵀQ₁)."""
    return (q0.mT @ q0) @ u @ (q1.mT @ q1)


class PSGDKron(torch.optim.Optimizer):
    """PSGD Kron on `hidden` (2-D matrices, role hidden), stepped largest first; AdamW on `adam_groups` (torch
    param-group dicts with lr, betas, weight_decay and role, as optim.roles.torch_groups makes them; `aux_eps`
    their eps). Arguments as PSGDConfig's fields."""

    def __init__(self, hidden, adam_groups=(), *, lr: float, momentum: float = 0.95, precond_lr: float = 1.0,
                 precond_every: int = 1, init_scale: float = 0.0, damping: float = DAMPING, hyperball: bool = True,
                 hyperball_eps: float = EPS, weight_decay: float = 0.0, aux_eps: float = 1e-8,
                 gram_impl: str = "eager"):
        hidden = list(hidden)
        if any(p.ndim != 2 for p in hidden):
            raise ValueError(f"PSGD Kron preconditions 2-D matrices; got shapes {[tuple(p.shape) for p in hidden]}")
        if precond_every < 1:
            raise ValueError(f"precond_every={precond_every} must be >= 1")
        if hyperball and weight_decay:
            raise ValueError("the hyperball keeps each hidden matrix's norm: weight_decay must be 0 with it")
        if gram_impl == "auto":  # as the trainer resolves it (PSGDConfig.resolve_auto): Triton on CUDA
            gram_impl = "triton" if hidden and hidden[0].device.type == "cuda" else "eager"
        self.gram = kernels.get("gram", gram_impl)  # KeyError listing the registered implementations
        hidden = sorted(hidden, key=lambda p: p.numel(), reverse=True)  # stable: ties keep the model's order
        groups = [dict(params=hidden, role="hidden", lr=lr, momentum=momentum, precond_lr=precond_lr,
                       precond_every=precond_every, init_scale=init_scale, damping=damping, hyperball=hyperball,
                       hyperball_eps=hyperball_eps, weight_decay=weight_decay, psgd=True)]
        groups += adamw_groups(adam_groups, eps=aux_eps, psgd=False)
        super().__init__([g for g in groups if g["params"]], {})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        adamw_update(self, [g for g in self.param_groups if not g["psgd"]])
        for group in self.param_groups:
            if group["psgd"]:
                self.psgd_update(group)
        return loss

    @torch.no_grad()
    def psgd_update(self, group: dict):
        """Momentum, the factors' step (two probes each) and the step of every matrix of `group` with a gradient,
        in the group's order."""
        beta, lr = group["momentum"], group["lr"]
        for p in group["params"]:
            if p.grad is None:
                continue
            g = p.grad.float()
            state = self.state[p]
            if not state:
                s = group["init_scale"] or initial_scale(g)
                state["step"] = 0
                state["Q0"] = torch.eye(g.size(0), dtype=torch.float32, device=g.device) * s
                state["Q1"] = torch.eye(g.size(1), dtype=torch.float32, device=g.device) * s
                state["exp_avg"] = torch.zeros_like(g)
            state["step"] += 1
            t, m = state["step"], state["exp_avg"]
            m.lerp_(g, 1 - beta)
            u = m / (1 - beta**t)
            if (t - 1) % group["precond_every"] == 0:
                v = torch.randn_like(u)
                nu = torch.randn_like(u)
                precond_update(state["Q0"], state["Q1"], u + group["damping"] * u.abs() * nu, v, group["precond_lr"],
                               gram=self.gram)
            d = precondition(state["Q0"], state["Q1"], u)
            if group["hyperball"]:
                hyperball_step(p, d, lr, eps=group["hyperball_eps"], clamp=False)
            else:
                if group["weight_decay"]:
                    p.mul_(1 - lr * group["weight_decay"])
                p.sub_(d.to(p.dtype), alpha=lr)


@dataclass(frozen=True)
class PSGDConfig(AuxAdamW):
    """PSGD Kron: the momentum of each hidden matrix whitened by two triangular Kronecker factors fitted from random
    probes, applied through the hyperball (each hidden matrix keeps its norm); AdamW on the other roles."""

    lr: float = 0.025
    """With the hyperball: the fraction of each hidden matrix's radius (Frobenius norm) a step moves along its
    preconditioned direction, before the projection back onto the sphere (about the angle, in radians); without:
    the step size of W ← W - lr·D."""
    momentum: float = 0.95
    """β of the hidden matrices' momentum M ← lerp(M, G, 1-β), bias-corrected by 1 - βᵗ before preconditioning."""
    precond_lr: float = 1.0
    """Step size of the factors' update (normalised by the spectral-norm estimate: 1 is the largest stable)."""
    precond_every: int = 1
    """Update the factors every this many steps of each matrix, from its first (1 = every step); a step without an
    update draws no probes."""
    init_scale: float = 0.0
    """The factors' initial value s·I; 0 = s = mean(G⁴)^(-1/32) of each matrix's first gradient."""
    damping: float = DAMPING
    """Relative noise added to the momentum before it probes the factors: U = u + damping·|u|⊙ν, ν ~ N(0, I)
    (fp32's machine epsilon by default)."""
    hyperball: bool = True
    """Step each hidden matrix on the sphere of its initial norm (optim.hyperball, the "+ ε" form); False = the
    plain step W ← W·(1 - lr·weight_decay) - lr·D."""
    hyperball_eps: float = EPS
    """ε added to the direction's and the stepped matrix's norms in the hyperball's divisions."""
    weight_decay: float = 0.0
    """Decoupled weight decay of the hidden matrices without the hyperball (must be 0 with it)."""
    gram_impl: str = "auto"
    """kernels.registry implementation of the factors' Gram matrices AAᵀ, BBᵀ, AᵀA, BᵀB: eager (one matmul each) |
    triton | auto (triton on CUDA, eager elsewhere)."""

    def __post_init__(self):
        super().__post_init__()
        require(self.gram_impl in GRAM_IMPLS,
                f"--optim.gram_impl={self.gram_impl!r}; choose from {', '.join(GRAM_IMPLS)}")
        check_positive(self, "lr", "precond_lr", "hyperball_eps")
        check_non_negative(self, "init_scale", "damping", "weight_decay")
        check_fraction(self, "momentum")
        require(isinstance(self.precond_every, int) and self.precond_every >= 1,
                f"--optim.precond_every={self.precond_every} must be an integer >= 1")
        require(not (self.hyperball and self.weight_decay),
                f"--optim.weight_decay={self.weight_decay}: the hyperball keeps each hidden matrix's norm and takes "
                "no weight decay (0, or --optim.hyperball=False)")

    def resolve_auto(self, device, *, native_bf16: bool):
        """The config on `device`: gram_impl auto -> triton on CUDA, eager elsewhere."""
        if self.gram_impl != "auto":
            return self
        return replace(self, gram_impl="triton" if torch.device(device).type == "cuda" else "eager")

    def implementations(self) -> dict:
        return {"gram": self.gram_impl}


@optimizer("psgd", PSGDConfig)
def build(cfg: PSGDConfig, groups):
    table = role_table(cfg, RoleHparams(cfg.lr, (cfg.momentum, 0.0), cfg.weight_decay), aux_lr=cfg.aux_lr,
                       aux_betas=cfg.aux_betas)
    return PSGDKron(groups["hidden"], torch_groups(groups, table, ADAM_ROLES), lr=cfg.lr, momentum=cfg.momentum,
                    precond_lr=cfg.precond_lr, precond_every=cfg.precond_every, init_scale=cfg.init_scale,
                    damping=cfg.damping, hyperball=cfg.hyperball, hyperball_eps=cfg.hyperball_eps,
                    weight_decay=cfg.weight_decay, aux_eps=cfg.aux_eps, gram_impl=cfg.gram_impl)


@schedule("cooldown_to_floor")
@dataclass(frozen=True)
class CooldownToFloor(Schedule):
    """Flat, then linear from the initial lr down to floor × it at the horizon, per role family: the fall starts at
    step int(horizon·(1 - cooldown_frac)) and the factor is 1 - (1 - floor)·(step - start)/(horizon - start)
    (track 3's PSGD: the hidden matrices over the whole run to 0, the other roles over the second half to 0.1)."""

    cooldown_frac: float = 1.0
    """Fraction of the horizon over which the hidden matrices' lr falls linearly to floor × its initial value."""
    floor: float = 0.0
    """The hidden matrices' lr factor reached at the horizon."""
    aux_cooldown_frac: float | None = None
    """The same fraction for the embed, head and scalar roles; None = cooldown_frac."""
    aux_floor: float | None = None
    """The factor the embed, head and scalar roles reach at the horizon; None = floor."""

    def __post_init__(self):
        for name in ("cooldown_frac", "aux_cooldown_frac", "floor", "aux_floor"):
            value = getattr(self, name)
            require(value is None or 0 <= value <= 1, f"--schedule.{name}={value} must lie in [0, 1]"
                    + (" or be None" if name.startswith("aux") else ""))

    def factor(self, step: int, horizon: int, role: str) -> float:
        frac, floor = self.cooldown_frac, self.floor
        if family(role) == "aux":
            frac = frac if self.aux_cooldown_frac is None else self.aux_cooldown_frac
            floor = floor if self.aux_floor is None else self.aux_floor
        start = int(horizon * (1 - frac))
        if step < start or start >= horizon:
            return 1.0
        t = min(1.0, (step - start) / (horizon - start))
        return 1 - t * (1 - floor)

    def lr(self, initial_lr: float, step: int, horizon: int, role: str) -> float:
        return initial_lr * self.factor(step, horizon, role)


# The init of track 3's PSGD (#33): PyTorch's construction init (uniform Linear weights and biases, the bf16-rounded
# N(0,1) embedding), then every hidden matrix re-drawn from N(0, s/sqrt(3·fan_in)) with the hyperball multipliers;
# nothing zeroed (the head weight and every bias keep their uniform draw).
PSGD_INIT = {"model.init": "torch", "model.init_redraw_hidden": True, "model.zero_init_proj": False,
             "model.zero_init_head": False, "model.zero_init_proj_bias": False, **HYPERBALL_MULTIPLIERS}


@recipe("track3-psgd")
def track3_psgd() -> dict:
    """Track-3 result #33, PSGD Kron with the hyperball: 3375 steps, mean val loss 3.2779 (n=5).
    Source: records/track_3_optimization/results/20260527_psgd/ (train_psgd.py, which its logs ran).

    PSGD Kron (momentum 0.95 bias-corrected, the factors fitted every step with precond_lr 1.0 from the
    data-dependent initial scale, fp32, the hyperball step in its "+ ε" form) on the hidden matrices, with lr 0.025
    falling linearly from step 0 to 0 at the horizon, 3400 steps: the published 3375 is the validation at step 3375
    of that 3400-step schedule. AdamW on the rest: betas (0.8, 0.95), eps 1e-10, no weight decay, embedding lr 0.3,
    head weight 1/320, 1-D parameters 0.01, flat for the first half, then linear to 0.1× at the horizon. The loss is
    the mean over tokens (gradients of the mean over the batch, validation the mean of the micro-batches' means).
    Init: PyTorch's construction init, then the hidden matrices re-drawn from N(0, s/sqrt(3·fan_in)) with attn.proj
    x1.25, mlp.proj x3, mlp.fc x1.5; nothing zeroed (PSGD_INIT).
    """
    return {"optimizer": "psgd", "optim.lr": 0.025, "optim.momentum": 0.95, "optim.precond_lr": 1.0,
            "optim.precond_every": 1, "optim.init_scale": 0.0, "optim.hyperball": True, **HYPERBALL_AUX,
            "max_steps": 3375, "schedule_steps": 3400, "grad_clip": 0.0, "schedule": "cooldown_to_floor",
            "schedule.cooldown_frac": 1.0, "schedule.floor": 0.0, "schedule.aux_cooldown_frac": 0.5,
            "schedule.aux_floor": 0.1, "model.loss_reduction": "mean", **PSGD_INIT}
