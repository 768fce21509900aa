"""Shampoo (Gupta, Koren, Singer 2018; Anil et al. 2020, arXiv:2002.09018) with Adam grafting and decoupled weight
decay on the hidden matrices, AdamW on the other roles: the configuration of track 3's result #21.

For each hidden matrix W (m × n) with gradient G, the step t = 1, 2, ... (counted per matrix):

    L ← β2·L + (1-β2)·G·Gᵀ,   R ← β2·R + (1-β2)·Gᵀ·G          Kronecker factors (β2 = 1: plain sums)
    V ← gβ2·V + (1-gβ2)·G²                                    the grafting's second moment (elementwise)
    if t == s, or t > s and t % f == 0:                        f = precondition_frequency, s = its start step
        for X in L, R:  A = X/(1-β2^t) + ε·I;  λ, Q = eigh(A)
                        if min λ < ε: λ ← (λ - min λ) + ε      (a spectrum shifted to start at ε)
                        X⁻ᵉ = Q·diag(λ^-e)·Qᵀ                   kept until the next computation
    F ← lerp(F, G, 1-β1);  Ḡ = F/(1 - β1^t)                    filtered gradient (β1 = 0: Ḡ = G)
    P_g = Ḡ / (sqrt(V/(1-gβ2^t)) + g_eps)                       Adam's direction (the graft)
    P = P_g                                                      while t < s (the graft alone)
    P = L⁻ᵉ·Ḡ·R⁻ᵉ · ‖P_g‖ / (‖L⁻ᵉ·Ḡ·R⁻ᵉ‖ + 1e-16)             from t = s (Shampoo's direction, the graft's norm)
    W ← W - lr·(P + wd·W)                                      decoupled weight decay

e = `exponent` (1/4: the inverse fourth root, 1/(2·order) for a matrix); the bias corrections are fp32 numbers of
the integer step, as are lr and the Adam-side ones; without bias_correction the factors and F are used as they are.
The factors accumulate from the first step, before the first preconditioned one. Before any inverse root is
computed (no grafting and t < s) L⁻ᵉ and R⁻ᵉ are identities.

This is the arithmetic of Meta's distributed_shampoo package in the configuration result #21 runs (vendored in
its result folder; its `DistributedShampoo(..., grafting_config=AdamPreconditionerConfig(...))` with the root
inverse preconditioner, the eigendecomposition root with its perturbation before the eigendecomposition,
fp32 factors and roots, β3 = β1). That package does much more that this configuration does not use, and that is not
here: blocking of large dimensions and merging of small ones (max_preconditioner_dim; no track-3 matrix is
blocked), preconditioners of other kinds (eigendecomposed, eigenvalue-corrected i.e. SOAP-like, KL-Shampoo, sign and
spectral descent, AdaGrad / RMSprop / SGD), other inverse-root methods (coupled Newton, higher-order iterations),
pseudo-inverses and trace scaling, per-order exponent overrides, a separate β3 (NAdam-like), L2 / "corrected" /
"independent" weight decay, iterate averaging (generalized primal averaging, schedule-free), quantized or
low-precision factors, PT2 compilation of its step, its DDP / FSDP / HSDP / fully-sharded distributors, and
tolerating up to three failed root computations by keeping the previous roots (here an eigendecomposition
retried in fp64 that still fails is an error). Its host reads of min λ and of the factors' finiteness are
replaced by device-side arithmetic (the same numbers; a non-finite factor gives non-finite weights, which the
trainer's guard reports).

The statistics G·Gᵀ and Gᵀ·G are one call of kernels.registry's gram op per shape for every matrix of that shape
(KroneckerOptimizer.statistic, `gram_impl`); the eigendecompositions and products are batched the same way.
"""

from dataclasses import dataclass

import torch

from optim.kronecker import (
    EIGH_DTYPES,
    KroneckerConfig,
    KroneckerOptimizer,
    add_to_diagonal,
    check_unit_interval,
    eigh,
    fp32,
    power_correction,
)
from optim.muon import ADAM_ROLES
from optim.registry import optimizer, recipe, require
from optim.roles import RoleHparams, check_non_negative, check_positive, role_table, torch_groups
from optim.schedules import TRACK3_SCHEDULE

GRAFTINGS = ("adam", "none")


def inverse_root(factor: torch.Tensor, exponent: float, eps: float, dtype: torch.dtype) -> torch.Tensor:
    """factor^(-exponent) of a batch of symmetric PSD matrices (…, s, s) by eigendecomposition in `dtype`: eigh of
    factor + eps·I; where the smallest eigenvalue is below eps the spectrum is shifted to start at eps; result in
    factor's dtype."""
    values, vectors = eigh(add_to_diagonal(factor.to(dtype), eps), dtype)
    smallest = values.min(dim=-1, keepdim=True).values
    values = torch.where(smallest < eps, (values - smallest) + eps, values)
    return ((vectors * values.pow(-exponent).unsqueeze(-2)) @ vectors.mT).to(factor.dtype)


class Shampoo(KroneckerOptimizer):
    """Shampoo on `hidden` (2-D matrices) and AdamW on `adam_groups` (torch param-group dicts with lr, betas,
    weight_decay and role). The hidden group's hyper-parameters: ShampooConfig's fields of the same names."""

    def __init__(self, hidden, adam_groups=(), *, lr: float, betas=(0.9, 0.95), epsilon: float = 1e-12,
                 exponent: float = 0.25, weight_decay: float = 0.0, precondition_frequency: int = 5,
                 start_preconditioning_step: int = 0, bias_correction: bool = True, grafting: str = "adam",
                 grafting_beta2: float = 0.95, grafting_eps: float = 1e-10, eigh_dtype: str = "fp32",
                 adam_eps: float = 1e-8, gram_impl: str = "eager"):
        if grafting not in GRAFTINGS:
            raise ValueError(f"unknown grafting {grafting!r}; choose from {GRAFTINGS}")
        if precondition_frequency < 1 or start_preconditioning_step < 0:
            raise ValueError(f"precondition_frequency={precondition_frequency} must be >= 1 and "
                             f"start_preconditioning_step={start_preconditioning_step} >= 0")
        start = start_preconditioning_step or precondition_frequency
        super().__init__(hidden, adam_groups, adam_eps=adam_eps, gram_impl=gram_impl, hidden_defaults=dict(
            lr=lr, betas=tuple(betas), epsilon=epsilon, exponent=exponent, weight_decay=weight_decay,
            precondition_frequency=precondition_frequency, start_preconditioning_step=start,
            bias_correction=bias_correction, grafting=grafting, grafting_beta2=grafting_beta2,
            grafting_eps=grafting_eps, eigh_dtype=eigh_dtype))

    def update_batch(self, group: dict, params: list, grads: torch.Tensor, step: int):
        _, m, n = grads.shape
        beta1, beta2 = group["betas"]
        t, f, s = step, group["precondition_frequency"], group["start_preconditioning_step"]
        graft = group["grafting"] == "adam"

        dtype = torch.promote_types(grads.dtype, torch.float32)  # of the statistics: fp32 (float64 for float64)

        def zeros(*shape):
            return lambda p: torch.zeros(shape, dtype=dtype, device=p.device)

        def eye(size):
            return lambda p: torch.eye(size, dtype=dtype, device=p.device)

        # 1. statistics of the raw gradient
        # factor ← β2·factor, then + (1-β2)·G·Gᵀ (two roundings, as the reference: not gram's fused alpha·G + beta·out)
        weight = 1.0 if beta2 == 1 else 1 - beta2
        left, right = self.stacked(params, "left", zeros(m, m)), self.stacked(params, "right", zeros(n, n))
        for factor, side in ((left, "left"), (right, "right")):
            if beta2 != 1:
                factor.mul_(beta2)
            factor.add_(self.statistic(grads, side=side), alpha=weight)
        if graft:
            gbeta2 = group["grafting_beta2"]
            second = self.stacked(params, "graft_second_moment", zeros(m, n))
            second.mul_(gbeta2).addcmul_(grads, grads, value=1 - gbeta2)
        left_root = self.stacked(params, "left_root", eye(m))
        right_root = self.stacked(params, "right_root", eye(n))
        if t == s or (t > s and t % f == 0):
            correction = power_correction(beta2, t) if group["bias_correction"] and beta2 < 1 else 1.0
            eigh_dtype = torch.promote_types(dtype, EIGH_DTYPES[group["eigh_dtype"]])
            for factor, root in ((left, left_root), (right, right_root)):
                root.copy_(inverse_root(factor / correction, group["exponent"], group["epsilon"], eigh_dtype))

        # 2. the filtered gradient
        if beta1 > 0:
            filtered = self.stacked(params, "filtered_grad", zeros(m, n)).lerp_(grads, 1 - beta1)
            if group["bias_correction"]:
                # 1 - β1^t as the reference writes it with β3 = β1, β1·β1^(t-1): fp32 numbers of the integer step
                filtered = filtered / (1.0 - beta1 * beta1 ** torch.tensor(t - 1, dtype=torch.int64))
        else:
            filtered = grads

        # 3. the direction: the graft alone before the start step, then Shampoo's with the graft's norm
        if graft:
            denominator = (second / power_correction(gbeta2, t)).sqrt_().add_(group["grafting_eps"])
            grafted = filtered / denominator
        if graft and t < s:
            direction = grafted
        else:
            direction = left_root.mT @ filtered @ right_root
            if graft:
                norms = torch.linalg.vector_norm(grafted, dim=(-2, -1), keepdim=True)
                direction.mul_(norms / (torch.linalg.vector_norm(direction, dim=(-2, -1), keepdim=True) + 1e-16))

        # 4. decoupled weight decay, the lr (rounded to fp32), the update
        directions = list(direction.unbind(0))
        if group["weight_decay"]:
            torch._foreach_add_(directions, params, alpha=group["weight_decay"])
        torch._foreach_mul_(directions, -fp32(group["lr"]))
        torch._foreach_add_(params, directions)


@dataclass(frozen=True)
class ShampooConfig(KroneckerConfig):
    """Shampoo on the hidden matrices (Kronecker-factored inverse roots, Adam grafting, decoupled weight decay),
    AdamW on the other roles."""

    lr: float = 0.0015
    """Learning rate of the hidden matrices."""
    betas: tuple = (0.9, 0.95)
    """(beta1, beta2): the filtered gradient's EMA (0 = the raw gradient) and the Kronecker factors' (1 = sums)."""
    epsilon: float = 1e-12
    """Added to the factors' diagonal before their eigendecomposition; the smallest eigenvalue used."""
    exponent: float = 0.25
    """Inverse-root exponent e of each factor: the direction is L^-e·Ḡ·R^-e (1/4: the matrix case of 1/(2·order))."""
    weight_decay: float = 0.0
    """Decoupled weight decay of the hidden matrices, added to the direction: W <- W - lr·(P + wd·W)."""
    precondition_frequency: int = 5
    """Steps between recomputations of the inverse roots (from the start step on)."""
    start_preconditioning_step: int = 0
    """The step (counted from 1) of the first inverse roots and Shampoo direction, grafting alone before it;
    0 = precondition_frequency."""
    bias_correction: bool = True
    """Divide the factors by 1 - beta2^t before the roots and the filtered gradient by 1 - beta1^t."""
    grafting: str = "adam"
    """adam: the Shampoo direction takes the Frobenius norm of Adam's direction (and is Adam's before the start
    step) | none: the Shampoo direction as it is (the filtered gradient before the start step)."""
    grafting_beta2: float = 0.95
    """EMA coefficient of the grafting's elementwise second moment (bias corrected)."""
    grafting_eps: float = 1e-10
    """Added to the root of the grafting's second moment."""

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "lr", "epsilon", "exponent", "grafting_eps")
        check_non_negative(self, "weight_decay")
        require(len(self.betas) == 2, f"--optim.betas={self.betas} must be two numbers (beta1, beta2)")
        check_unit_interval("betas[0]", self.betas[0])
        check_unit_interval("betas[1]", self.betas[1], closed=True)
        check_unit_interval("grafting_beta2", self.grafting_beta2)
        require(self.precondition_frequency >= 1,
                f"--optim.precondition_frequency={self.precondition_frequency} must be >= 1")
        require(self.start_preconditioning_step == 0
                or self.start_preconditioning_step >= self.precondition_frequency,
                f"--optim.start_preconditioning_step={self.start_preconditioning_step} must be 0 (= the frequency) "
                f"or >= precondition_frequency={self.precondition_frequency}")
        require(self.grafting in GRAFTINGS, f"--optim.grafting={self.grafting!r}; choose from {', '.join(GRAFTINGS)}")


@optimizer("shampoo", ShampooConfig)
def build(cfg: ShampooConfig, groups):
    table = role_table(cfg, RoleHparams(cfg.lr, (0.0, 0.0), cfg.weight_decay), aux_lr=cfg.aux_lr,
                       aux_betas=cfg.aux_betas)
    return Shampoo(groups["hidden"], torch_groups(groups, table, ADAM_ROLES), lr=cfg.lr, betas=cfg.betas,
                   epsilon=cfg.epsilon, exponent=cfg.exponent, weight_decay=cfg.weight_decay,
                   precondition_frequency=cfg.precondition_frequency,
                   start_preconditioning_step=cfg.start_preconditioning_step, bias_correction=cfg.bias_correction,
                   grafting=cfg.grafting, grafting_beta2=cfg.grafting_beta2, grafting_eps=cfg.grafting_eps,
                   eigh_dtype=cfg.eigh_dtype, adam_eps=cfg.aux_eps, gram_impl=cfg.gram_impl)


@recipe("track3-shampoo")
def track3_shampoo() -> dict:
    """Track-3 result #21, Shampoo: 4100 steps, mean val loss 3.2776 (n=4).
    Source: records/track_3_optimization/results/20260513_shampoo_1_4_power/ (its train_gpt_shampoo.py and the
    distributed_shampoo package vendored beside it).

    Shampoo on the hidden matrices: lr 0.0015, betas (0.9, 0.95), inverse fourth roots (exponent 1/4) of the bias-
    corrected factors recomputed every 5 steps from step 5 (the first 4 steps are Adam's direction), epsilon 1e-12,
    Adam grafting (beta2 0.95, eps 1e-10), decoupled weight decay 0.2 (W <- W - lr·(P + 0.2·W)). AdamW on the rest,
    betas (0.8, 0.95), eps 1e-10, no weight decay: embedding lr 0.3, head weight 1/320, 1-D parameters 0.01.
    The baseline's init; track 3's stable-then-linear schedule (cooldown 0.7) on a 4150-step horizon for every
    group, scored at step 4100 (its late validations every 25 steps).
    """
    return {"optimizer": "shampoo", "optim.lr": 0.0015, "optim.betas": (0.9, 0.95), "optim.epsilon": 1e-12,
            "optim.exponent": 0.25, "optim.weight_decay": 0.2, "optim.precondition_frequency": 5,
            "optim.start_preconditioning_step": 0, "optim.bias_correction": True, "optim.grafting": "adam",
            "optim.grafting_beta2": 0.95, "optim.grafting_eps": 1e-10, "optim.eigh_dtype": "fp32",
            "optim.embed_lr": 0.3, "optim.head_lr": 1 / 320, "optim.scalar_lr": 0.01,
            "optim.aux_betas": (0.8, 0.95), "optim.aux_eps": 1e-10, "optim.aux_weight_decay": 0.0,
            "max_steps": 4100, **TRACK3_SCHEDULE, "schedule_steps": 4150}
