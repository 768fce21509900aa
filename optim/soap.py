"""SOAP (Vyas et al. 2025, "SOAP: Improving and Stabilizing Shampoo using Adam", ICLR) on the hidden matrices, as track
3's SOAPH (result #27) runs it: an Adam-like step in the eigenbasis of the gradient's Kronecker factors, without bias
correction, applied through the hyperball; AdamW on the other roles.

For each hidden matrix W (m × n) with gradient G, at its step t = 1, 2, ...:

    at t = 1:   Q_L, Q_R = eigenvectors of sym(G·Gᵀ), sym(Gᵀ·G) (+ 1e-30·I), by decreasing eigenvalue   the first basis
    M ← lerp(M, G, 1 - μ)                                        momentum, kept in W's own coordinates
    L ← β·L + (1-β)·G·Gᵀ,   R ← β·R + (1-β)·Gᵀ·G                 Kronecker factors (from 0: the first G included)
    M̃ = Q_Lᵀ·M·Q_R,   G̃ = Q_Lᵀ·G·Q_R                            both projected into the current basis
    S ← β·S + (1-β)·G̃²                                           second moment in the basis (elementwise)
    U = Q_L · (M̃ / (sqrt(S) + ε)) · Q_Rᵀ                          bias_correction: M̃/(1-μ^t), S/(1-β^t)
    if t % f == 0:  Q_L ← QR(L·Q_L).Q,  Q_R ← QR(R·Q_R).Q         one power-iteration step, after U (f: the frequency)
    hyperball:  W' = W - lr·‖W‖·U/max(‖U‖, ε_h);  W ← W'·‖W‖/max(‖W'‖, ε_h)      (optim.hyperball.hyperball_step)
    else:       W ← W·(1 - lr·wd) - lr·U

sym(A) = (A + Aᵀ)/2. Unlike the paper's SOAP, the basis is refreshed by one QR step of the current factors without
re-sorting by eigenvalue and without rotating S into the new basis (S keeps accumulating in whichever basis each step
uses), the first basis comes from the first gradient alone, and (as SOAPH) nothing is bias corrected by default and
there is no grafting. Each matrix keeps its momentum, S, L, R, Q_L and Q_R (fp32; float64 for float64 weights).

The statistics G·Gᵀ and Gᵀ·G (the first basis's and the factors') are one call of kernels.registry's gram op per
shape for every matrix of that shape (KroneckerOptimizer.statistic, `gram_impl`); the projections, the
eigendecompositions and QR factorizations are batched the same way, in fp32 (eigh retried in fp64 where fp32 fails)
or as eigh_dtype says.

The hidden matrices' lr under SOAPH follows its own schedule, matrix_power_decay below: (1 - step/3200)^1.25 from
step 0 on a 3200-step horizon while the run stops at 3125, the other roles track 3's stable-then-linear decay.
"""

from dataclasses import dataclass

import torch

from optim.hyperball import TORCH_HYPERBALL_INIT, hyperball_step
from optim.kronecker import (
    EIGH_DTYPES,
    KroneckerConfig,
    KroneckerOptimizer,
    add_to_diagonal,
    check_unit_interval,
    eigh,
)
from optim.muon import ADAM_ROLES
from optim.muonh import HYPERBALL_AUX
from optim.registry import Steps, optimizer, recipe, require, schedule
from optim.roles import RoleHparams, check_non_negative, check_positive, role_table, torch_groups
from optim.schedules import TRACK3_SCHEDULE, StableDecay, family


def first_basis(gram_matrices: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The eigenvectors of the symmetrized Gram matrices (B, s, s) + 1e-30·I, as columns by decreasing eigenvalue,
    from an eigendecomposition in `dtype`; in the Gram matrices' dtype."""
    symmetric = 0.5 * (gram_matrices + gram_matrices.mT)
    _, vectors = eigh(add_to_diagonal(symmetric, 1e-30), dtype)
    return vectors.flip(-1).to(gram_matrices.dtype)


class SOAP(KroneckerOptimizer):
    """SOAP on `hidden` (2-D matrices) and AdamW on `adam_groups` (torch param-group dicts with lr, betas,
    weight_decay and role). The hidden group's hyper-parameters: SOAPConfig's fields of the same names."""

    def __init__(self, hidden, adam_groups=(), *, lr: float, momentum: float = 0.95, beta2: float = 0.9,
                 eps: float = 1e-8, precondition_frequency: int = 1, bias_correction: bool = False,
                 hyperball: bool = True, hyperball_eps: float = 1e-10, weight_decay: float = 0.0,
                 eigh_dtype: str = "fp32", adam_eps: float = 1e-8, gram_impl: str = "eager"):
        if precondition_frequency < 1:
            raise ValueError(f"precondition_frequency={precondition_frequency} must be >= 1")
        if hyperball and weight_decay:
            raise ValueError("the hyperball keeps each matrix's norm: weight_decay must be 0 with it")
        super().__init__(hidden, adam_groups, adam_eps=adam_eps, gram_impl=gram_impl, hidden_defaults=dict(
            lr=lr, momentum=momentum, beta2=beta2, eps=eps, precondition_frequency=precondition_frequency,
            bias_correction=bias_correction, hyperball=hyperball, hyperball_eps=hyperball_eps,
            weight_decay=weight_decay, eigh_dtype=eigh_dtype))

    def update_batch(self, group: dict, params: list, grads: torch.Tensor, step: int):
        _, m, n = grads.shape
        t = step
        momentum, beta, eps = group["momentum"], group["beta2"], group["eps"]
        dtype = torch.promote_types(grads.dtype, torch.float32)  # of the state: fp32 (float64 for float64)
        solver_dtype = torch.promote_types(dtype, EIGH_DTYPES[group["eigh_dtype"]])
        grads = grads.to(dtype)

        # the first basis, from each new matrix's first gradient
        new = [i for i, p in enumerate(params) if "basis_left" not in self.state[p]]
        if new:
            for side, name in (("left", "basis_left"), ("right", "basis_right")):
                basis = first_basis(self.statistic(grads[new], side=side), solver_dtype)
                for j, i in enumerate(new):
                    self.state[params[i]][name] = basis[j]

        def zeros(*shape):
            return lambda p: torch.zeros(shape, dtype=dtype, device=p.device)

        moment = self.stacked(params, "momentum_buffer", zeros(m, n)).lerp_(grads, 1 - momentum)
        left = self.statistic(grads, side="left", out=self.stacked(params, "left", zeros(m, m)), alpha=1 - beta,
                              beta=beta)
        right = self.statistic(grads, side="right", out=self.stacked(params, "right", zeros(n, n)), alpha=1 - beta,
                               beta=beta)
        basis_left = self.stacked(params, "basis_left", None)
        basis_right = self.stacked(params, "basis_right", None)
        projected_moment = basis_left.mT @ moment @ basis_right
        projected_grad = basis_left.mT @ grads @ basis_right
        second = self.stacked(params, "second_moment", zeros(m, n))
        second.mul_(beta).addcmul_(projected_grad, projected_grad, value=1 - beta)
        if group["bias_correction"]:
            projected_moment = projected_moment / (1 - momentum ** t)
            denominator = (second / (1 - beta ** t)).sqrt_().add_(eps)
        else:
            denominator = second.sqrt().add_(eps)
        directions = basis_left @ (projected_moment / denominator) @ basis_right.mT

        if t % group["precondition_frequency"] == 0:  # after the direction: the next step's basis
            for factor, basis in ((left, basis_left), (right, basis_right)):
                q, _ = torch.linalg.qr(factor.to(solver_dtype) @ basis.to(solver_dtype), mode="reduced")
                basis.copy_(q)

        lr = group["lr"]
        if group["hyperball"]:
            for p, direction in zip(params, directions.unbind(0)):
                hyperball_step(p, direction, lr, eps=group["hyperball_eps"])
            return
        if group["weight_decay"]:
            torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
        torch._foreach_add_(params, list(directions.to(params[0].dtype).unbind(0)), alpha=-lr)


@dataclass(frozen=True)
class SOAPConfig(KroneckerConfig):
    """SOAP on the hidden matrices (Adam in the eigenbasis of the gradient's Kronecker factors; with the hyperball by
    default: track 3's SOAPH), AdamW on the other roles."""

    lr: float = 0.018
    """Learning rate of the hidden matrices: with the hyperball, the step's length as a fraction of each matrix's
    norm."""
    momentum: float = 0.95
    """EMA coefficient of the momentum (kept in the weights' coordinates, projected into the basis each step)."""
    beta2: float = 0.9
    """EMA coefficient of the Kronecker factors and of the second moment in the basis."""
    eps: float = 1e-8
    """Added to the root of the second moment in the basis."""
    precondition_frequency: int = 1
    """Steps between refreshes of the basis (each one QR step of the factors times the basis)."""
    bias_correction: bool = False
    """Adam's bias corrections of the projected momentum (1 - momentum^t) and second moment (1 - beta2^t)."""
    hyperball: bool = True
    """Apply the direction through the hyperball (each matrix kept at its initial norm, the step lr·‖W‖; no weight
    decay); False: W <- W·(1 - lr·wd) - lr·U."""
    hyperball_eps: float = 1e-10
    """The hyperball's floor on the direction's and the new weights' norms."""
    weight_decay: float = 0.0
    """Decoupled weight decay of the hidden matrices without the hyperball: W <- W·(1 - lr·wd)."""

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "lr", "eps", "hyperball_eps")
        check_non_negative(self, "weight_decay")
        check_unit_interval("momentum", self.momentum)
        check_unit_interval("beta2", self.beta2)
        require(self.precondition_frequency >= 1,
                f"--optim.precondition_frequency={self.precondition_frequency} must be >= 1")
        require(not (self.hyperball and self.weight_decay),
                f"--optim.weight_decay={self.weight_decay}: the hyperball keeps each hidden matrix's norm and takes "
                "no weight decay (0), or set --optim.hyperball=False")


@optimizer("soap", SOAPConfig)
def build(cfg: SOAPConfig, groups):
    table = role_table(cfg, RoleHparams(cfg.lr, (0.0, 0.0), cfg.weight_decay), aux_lr=cfg.aux_lr,
                       aux_betas=cfg.aux_betas)
    return SOAP(groups["hidden"], torch_groups(groups, table, ADAM_ROLES), lr=cfg.lr, momentum=cfg.momentum,
                beta2=cfg.beta2, eps=cfg.eps, precondition_frequency=cfg.precondition_frequency,
                bias_correction=cfg.bias_correction, hyperball=cfg.hyperball, hyperball_eps=cfg.hyperball_eps,
                weight_decay=cfg.weight_decay, eigh_dtype=cfg.eigh_dtype, adam_eps=cfg.aux_eps,
                gram_impl=cfg.gram_impl)


@schedule("matrix_power_decay")
@dataclass(frozen=True)
class MatrixPowerDecay(StableDecay):
    """stable_decay for the embed, head and scalar roles; the hidden matrices flat, then decaying as a power over
    their own horizon to a floor: lr × (floor + (1 - floor)·x^matrix_power), x = max(0, (1 - step/H)/cooldown_frac)
    once step/H >= 1 - cooldown_frac, H = matrix_horizon (track 3's SOAPH, #27)."""

    matrix_horizon: Steps = 0
    """The hidden matrices' horizon H (may exceed the run's: the lr then never reaches the floor); 0 = the run's."""
    matrix_power: float = 1.0
    """Exponent of the hidden matrices' decay (1 = linear)."""
    matrix_floor: float = 0.0
    """Fraction of the initial lr the hidden matrices' decay ends at."""

    def __post_init__(self):
        super().__post_init__()
        require(self.matrix_horizon >= 0, f"--schedule.matrix_horizon={self.matrix_horizon} must be >= 0")
        require(self.matrix_power > 0, f"--schedule.matrix_power={self.matrix_power} must be > 0")
        require(0 <= self.matrix_floor <= 1, f"--schedule.matrix_floor={self.matrix_floor} must lie in [0, 1]")

    def factor(self, step: int, horizon: int, role: str) -> float:
        if family(role) != "matrix":
            return super().factor(step, horizon, role)
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = step / (self.matrix_horizon or horizon)
        if progress < 1 - self.cooldown_frac:
            return 1.0
        x = max(0.0, (1 - progress) / self.cooldown_frac)
        return self.matrix_floor + (1 - self.matrix_floor) * x ** self.matrix_power


@recipe("track3-soaph")
def track3_soaph() -> dict:
    """Track-3 result #27, SOAPH: 3125 steps, mean val loss 3.2782 (n=6).
    Source: records/track_3_optimization/results/20260518_soaph/ (its train_gpt_simple_soaph.py, the script its six
    logs ran).

    SOAP without bias correction through the hyperball on the hidden matrices: lr 0.018, momentum 0.95, beta2 0.9
    (factors and second moment), eps 1e-8, the basis refreshed every step (one QR step, after the direction), the
    hyperball's eps 1e-10. Their lr: (1 - step/3200)^1.25 from step 0 (a 3200-step horizon while the run stops at
    3125). AdamW on the rest, betas (0.8, 0.95), eps 1e-10, no weight decay: embedding lr 0.3, head weight 1/320,
    1-D parameters 0.01, flat then linear to 0 over the last 40% of the 3125 steps. Init: PyTorch's construction
    init with attn.proj x1.25, mlp.proj x3, mlp.fc x1.5, the head weight and every output-projection bias zero
    (optim.hyperball.TORCH_HYPERBALL_INIT; q/k/v/fc biases keep their uniform draw).
    """
    return {"optimizer": "soap", "optim.lr": 0.018, "optim.momentum": 0.95, "optim.beta2": 0.9, "optim.eps": 1e-8,
            "optim.precondition_frequency": 1, "optim.bias_correction": False, "optim.hyperball": True,
            "optim.hyperball_eps": 1e-10, "optim.weight_decay": 0.0, "optim.eigh_dtype": "fp32", **HYPERBALL_AUX,
            "max_steps": 3125, **TRACK3_SCHEDULE, "schedule": "matrix_power_decay", "schedule.cooldown_frac": 1.0,
            "schedule.aux_cooldown_frac": 0.4, "schedule.matrix_horizon": 3200, "schedule.matrix_power": 1.25,
            "schedule.matrix_floor": 0.0, **TORCH_HYPERBALL_INIT}
