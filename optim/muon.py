"""Muon (momentum orthogonalized by Newton-Schulz) for the hidden matrices, AdamW for everything else.

Per hidden matrix W (rows × cols) with gradient G, following Keller Jordan's Muon as used in the speedrun
(and torch.optim.Muon, which computes the same thing one matrix at a time):

    B ← β·B + (1-β)·G                       momentum buffer (lerp form)
    U ← (1-β)·G + β·B  (Nesterov) or B
    O ← NewtonSchulz(U in ns_dtype)         ≈ the orthogonal polar factor of U
    W ← W·(1 - lr·wd) - lr·s·O              s = sqrt(max(1, rows/cols))  ("original", Keller)
                                            s = 0.2·sqrt(max(rows, cols)) ("match_rms_adamw", Moonshot)

s multiplies the fp32 step (alpha = -lr·s). The optimization benchmark's reference multiplies the bf16 O by s
in place instead; when s is a power of two (rows <= cols or rows/cols = 4^k: every matrix of the 124M model)
the two give the same numbers bit for bit; otherwise the bf16 product rounds (tests/optim/test_muon.py).

Same-shape matrices are stacked and orthogonalized in one batched call (the Triton kernel's batch axis); the
momentum, decay and update are foreach ops over them. ns_dtype "auto" is bf16 where the device multiplies bf16
natively (kernels.device.native_bf16) and fp32 elsewhere; the choice is `optimizer.ns_dtype`.

The whole update of one shape (momentum, stack, Newton-Schulz, NorMuon's normalization, decay, step) is one pure
function, muon_shape_update, which runs eagerly by default. optimizer.compile_update() (the trainer calls it when
--compile resolves to fullgraph: on CUDA by default) runs it as torch.compile(fullgraph=True, dynamic=False)
instead: one graph per shape (a Triton Newton-Schulz stays one opaque custom op inside it; the eager one is traced
and fused). The hyper-parameters a schedule changes reach that graph as 0-D fp32 tensors on the parameters'
device, refilled with fill_ each step (no host sync), so new values do not recompile; eagerly they are python
floats (the foreach ops' Scalar overloads, the numbers of a plain eager Muon). Compiled, the momentum
buffers and NorMuon's moments are the eager ones bit for bit under aot_eager, and the weights differ by the
rounding of the fused step (tests/optim/test_muon.py). NorMuon's beta2, eps and axis, nesterov, the coefficient
set and the shape are constants of the graph. The graphs count against torch._dynamo's recompile limit (8 per
function by default): one per (shape, number of matrices of that shape a rank updates), 3 for the gpt2-124m and
track3 models.

The embeddings, the head and the gains take AdamW (torch's functional AdamW: the fused kernel on CPU and CUDA,
foreach elsewhere) in the same Optimizer, so one state_dict holds everything; each Adam group carries its
own lr, betas and decoupled weight decay (optim.role_table).

Param groups: every group has `role` (hidden | embed | head | scalar) and `use_muon` (True only for hidden).
muon_update(group, params) updates any subset of a Muon group's matrices and adam_update() every Adam group:
optim/distributed.py gives each rank its share of the matrices and all-gathers the results.
"""

from collections import defaultdict
from dataclasses import dataclass, replace

import torch
from torch.optim.adamw import adamw

from kernels import reference, registry
from kernels.device import native_bf16
from optim.adamw import fused_adamw_available
from optim.registry import optimizer, recipe, require
from optim.roles import (
    AuxAdamW,
    RoleHparams,
    check_fraction,
    check_non_negative,
    check_positive,
    role_table,
    torch_groups,
)
from optim.schedules import TRACK3_SCHEDULE

LR_SCALINGS = ("original", "match_rms_adamw")
NS_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def lr_scale(shape, scaling: str) -> float:
    """Multiplier of the learning rate for a (rows, cols) matrix."""
    rows, cols = shape[-2], shape[-1]
    if scaling == "original":
        return max(1.0, rows / cols) ** 0.5
    if scaling == "match_rms_adamw":
        return 0.2 * max(rows, cols) ** 0.5
    raise ValueError(f"unknown Muon lr scaling {scaling!r}; choose from {LR_SCALINGS}")


def resolve_ns_dtype(ns_dtype: str, device) -> str:
    """'auto' -> 'bf16' where `device` multiplies bf16 natively, else 'fp32'; 'bf16' and 'fp32' stay."""
    if ns_dtype == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if ns_dtype not in NS_DTYPES:
        raise ValueError(f"unknown ns_dtype {ns_dtype!r}; choose from auto, {', '.join(NS_DTYPES)}")
    return ns_dtype


def _per_matrix(weight, n: int):
    """A lerp weight for n matrices: a python float as is (the Scalar overload), a 0-D tensor once per matrix."""
    return [weight] * n if torch.is_tensor(weight) else weight


def momentum_directions(grads, buffers, *, momentum, lerp_weight, nesterov: bool) -> list:
    """Muon's momentum step for matrices `grads` with momentum `buffers` (advanced in place):
    buffers ← lerp(buffers, grads, lerp_weight), lerp_weight = 1 - momentum; returns the directions
    lerp(grads, buffers, momentum) (Nesterov, new tensors: the gradients are left as they are) or the buffers."""
    n = len(grads)
    torch._foreach_lerp_(buffers, grads, _per_matrix(lerp_weight, n))
    return torch._foreach_lerp(grads, buffers, _per_matrix(momentum, n)) if nesterov else buffers


def muon_shape_update(params, grads, buffers, *, momentum, lerp_weight, decay, alpha, nesterov: bool,
                      ns_dtype: torch.dtype, orthogonalize, ns_steps: int, ns_coefficients: str, normalize=None,
                      moments=None, apply=None, precondition=None, precondition_state=None):
    """One Muon step of same-shape matrices `params` (B of them, with `grads` and momentum `buffers`), in place.

    The whole update of one shape, in one function so that it runs eagerly or as one torch.compile graph:

        buffers ← lerp(buffers, grads, lerp_weight)                       lerp_weight = 1 - momentum
        U ← lerp(grads, buffers, momentum) if nesterov else buffers
        U ← precondition(stack(U), grads, precondition_state) when given  Muon²; in the params' dtype, before the
                                                                          cast; advances precondition_state
        O ← orthogonalize(stack(U) in ns_dtype)                           (B, rows, cols)
        O ← normalize(O, moments) when given                              NorMuon; advances `moments`
        params ← params·decay + alpha·O                                   decay = 1 - lr·wd (None: no decay),
                                                                          alpha = -lr·s (lr_scale)
    or, when `apply` is given, apply(params, O.unbind(0), alpha) instead of the last line (a hyperball step,
    optim.hyperball: `alpha` is then the lr it takes, O in its own dtype).

    momentum, lerp_weight, decay and alpha are python floats (eager: the foreach ops' Scalar overloads, the
    numbers Muon has always used) or 0-D fp32 tensors on the parameters' device (compiled: a new value is new
    data, not a new graph). The others are static: a change recompiles.
    """
    updates = momentum_directions(grads, buffers, momentum=momentum, lerp_weight=lerp_weight, nesterov=nesterov)
    stacked = torch.stack(updates)
    if precondition is not None:
        stacked = precondition(stacked, grads, precondition_state)
    directions = orthogonalize(stacked.to(ns_dtype), steps=ns_steps, coefficients=ns_coefficients)
    if normalize is not None:
        directions = normalize(directions, moments)
    if apply is not None:
        apply(params, directions.unbind(0), alpha)
        return
    if decay is not None:
        torch._foreach_mul_(params, decay)  # decoupled
    steps = directions.to(params[0].dtype).unbind(0)
    if torch.is_tensor(alpha):  # foreach add's alpha is a Scalar: a tensor would be read back to the host
        torch._foreach_add_(params, torch._foreach_mul(steps, alpha))
    else:
        torch._foreach_add_(params, steps, alpha=alpha)


class Muon(torch.optim.Optimizer):
    """Muon on `hidden` (2-D matrices) and AdamW on `adam_groups`.

    adam_groups: parameters (one group) or torch param-group dicts; a dict's missing lr, betas and
    weight_decay default to adam_lr, betas and adam_weight_decay, its missing role to "other".
    """

    def __init__(self, hidden, adam_groups=(), *, lr: float, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, adam_lr: float | None = None, betas=(0.9, 0.95), eps: float = 1e-8,
                 adam_weight_decay: float = 0.0, ns_impl: str = "eager", ns_coefficients: str = "quintic",
                 ns_steps: int | None = None, ns_dtype: str = "auto", lr_scaling: str = "original"):
        hidden = list(hidden)
        if any(p.ndim != 2 for p in hidden):
            raise ValueError(f"Muon orthogonalizes 2-D matrices; got shapes {[tuple(p.shape) for p in hidden]}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Muon momentum must be in [0, 1), got {momentum}")
        lr_scale((1, 1), lr_scaling)  # validate the names now, not at the first step
        ns_steps = len(reference.ns_coefficients(ns_coefficients, ns_steps or None))  # 0/None: the set's default
        adam_groups = list(adam_groups)
        if adam_groups and not isinstance(adam_groups[0], dict):
            adam_groups = [{"params": adam_groups}]
        groups = [dict(params=hidden, role="hidden", use_muon=True, lr=lr, momentum=momentum, nesterov=nesterov,
                       weight_decay=weight_decay, ns_coefficients=ns_coefficients, ns_steps=ns_steps,
                       lr_scaling=lr_scaling)]
        adam_groups = [{"role": "other", "lr": adam_lr, "betas": tuple(betas), "weight_decay": adam_weight_decay, **g}
                       for g in adam_groups]
        for g in adam_groups:
            if g["lr"] is None:
                raise ValueError(f"Adam group {g['role']!r} has no lr: give it one or set adam_lr")
        groups += adamw_groups(adam_groups, eps=eps, use_muon=False)
        params = [p for g in groups for p in g["params"]]
        device = params[0].device if params else torch.device("cpu")
        self.ns_dtype = resolve_ns_dtype(ns_dtype, device)  # what the run uses; the trainer prints it
        if ns_impl == "auto":  # as the trainer resolves it (MuonConfig.resolve_auto): Triton on CUDA
            ns_impl = "triton" if device.type == "cuda" else "eager"
        self.orthogonalize = registry.get("newton_schulz", ns_impl)  # KeyError listing the registered impls
        super().__init__([g for g in groups if g["params"]], {})
        self._shape_update = muon_shape_update  # compile_update() swaps in its compiled version
        self._scalars = {}  # (name, device) -> the 0-D tensor the compiled update reads that hyper-parameter from

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            if group["use_muon"]:
                self.muon_update(group)
        self.adam_update()
        return loss

    # --- Muon side ---------------------------------------------------------------------------------

    def compile_update(self, backend="inductor"):
        """Run each shape's update (muon_shape_update) as torch.compile(fullgraph=True, dynamic=False) from now on.

        lr, momentum and weight decay then reach the graph as 0-D fp32 tensors (momentum, 1 - momentum,
        1 - lr·wd, -lr·s) refilled every step, so a schedule changes them without a recompile (a weight decay
        going to or from 0 does: no decay is no op in the graph). One graph per (shape, matrices of that shape)
        of the share a rank updates: 3 for the gpt2-124m and track3 models, within torch._dynamo's default
        recompile limit of 8. `backend` is torch.compile's (the trainer: inductor)."""
        self._shape_update = torch.compile(muon_shape_update, fullgraph=True, dynamic=False, backend=backend)

    @torch.no_grad()
    def muon_update(self, group: dict, params=None):
        """Momentum, one batched orthogonalization per shape, and the update, for `params` (default: all) of
        a Muon group. Parameters without a gradient are skipped (their momentum is not advanced)."""
        by_shape = defaultdict(list)
        for p in group["params"] if params is None else params:
            if p.grad is not None:
                by_shape[tuple(p.shape)].append(p)
        beta = group["momentum"]
        compiled = self._shape_update is not muon_shape_update
        for shape, same_shape in by_shape.items():
            buffers = self._state_tensors(same_shape, "momentum_buffer",
                                          lambda p: torch.zeros_like(p, memory_format=torch.preserve_format))
            normalize, moments = self._normalizer(group, same_shape)
            apply, alpha, decay = self._application(group, shape)
            precondition, precondition_state = self._preconditioner(group, same_shape)
            # Python floats eagerly (the numbers the update always used); 0-D tensors when compiled, filled from
            # the same floats (fp32 of the same double, as the eager ops take them).
            scalars = dict(momentum=beta, lerp_weight=1 - beta, decay=decay, alpha=alpha)
            if compiled:
                scalars = {name: value if value is None else self._scalar(name, value, same_shape[0].device)
                           for name, value in scalars.items()}
            self._shape_update(same_shape, [p.grad for p in same_shape], buffers, **scalars,
                               nesterov=group["nesterov"], ns_dtype=NS_DTYPES[self.ns_dtype],
                               orthogonalize=self.orthogonalize, ns_steps=group["ns_steps"],
                               ns_coefficients=group["ns_coefficients"], normalize=normalize, moments=moments,
                               apply=apply, precondition=precondition,
                               precondition_state=precondition_state)

    def _application(self, group: dict, shape) -> tuple:
        """(apply, alpha, decay) of muon_shape_update for a group's matrices of `shape`: Muon's own, no `apply`, the
        step alpha = -lr·s (lr_scale) and the decoupled decay 1 - lr·wd with the unscaled lr (None without weight
        decay). A subclass that applies its own update (MuonH's hyperball) returns its apply and the alpha it
        takes."""
        lr, wd = group["lr"], group["weight_decay"]
        return None, -lr * lr_scale(shape, group["lr_scaling"]), (1 - lr * wd if wd else None)

    def _scalar(self, name: str, value: float, device) -> torch.Tensor:
        """The 0-D fp32 tensor `name` on `device`, refilled with `value` (fill_ does not wait for the device)."""
        key = (name, device)
        if key not in self._scalars:
            self._scalars[key] = torch.zeros((), dtype=torch.float32, device=device)
        return self._scalars[key].fill_(value)

    def _state_tensors(self, params, name: str, init) -> list:
        """State `name` of each of `params`, created as init(p) where it has none yet (the first step, or a
        state_dict without it)."""
        tensors = []
        for p in params:
            state = self.state[p]
            if name not in state:
                state[name] = init(p)
            tensors.append(state[name])
        return tensors

    def _normalizer(self, group: dict, params):
        """(normalize, its per-matrix state) for muon_shape_update: (None, None) for Muon; NorMuon overrides it."""
        return None, None

    def _preconditioner(self, group: dict, params):
        """(precondition, its per-matrix state) for muon_shape_update, applied to the update before Newton-Schulz:
        (None, None) for Muon; Muon² (optim.muon2) overrides it."""
        return None, None

    # --- Adam side (embeddings, head, gains) -------------------------------------------------------

    @torch.no_grad()
    def adam_update(self):
        """AdamW on every Adam group (adamw_update)."""
        adamw_update(self, [group for group in self.param_groups if not group["use_muon"]])


def adamw_groups(adam_groups, *, eps: float, **marks) -> list[dict]:
    """The AdamW side's param groups of a hybrid optimizer: each of `adam_groups` (dicts with params, lr, betas,
    weight_decay) with its own list of params, `eps`, `marks` (the keys that tell the optimizer's step which update
    a group takes) and `fused`, as adamw_update reads them."""
    groups = [{**g, "params": list(g["params"]), "eps": eps, **marks} for g in adam_groups]
    fused = fused_adamw_available([p for g in groups for p in g["params"]])
    for g in groups:
        g["fused"] = fused  # also tells Optimizer.load_state_dict to put the step count on the param's device
    return groups


def closure_loss(closure):
    """What torch.optim's step(closure) returns: the closure's loss, evaluated with autograd on (step runs under
    no_grad), or None without a closure."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


@torch.no_grad()
def adamw_update(optimizer: torch.optim.Optimizer, groups):
    """torch's functional AdamW (fused on CPU/CUDA, foreach elsewhere) on `groups` of `optimizer`, each with lr,
    betas, eps, weight_decay and fused; the state in optimizer.state as torch.optim.AdamW keeps it. Parameters
    without a gradient are skipped."""
    for group in groups:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        for p in params:
            state = optimizer.state[p]
            if not state:  # torch.optim.AdamW's state: fp32 step count, moments like p
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device if group["fused"] else "cpu")
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        states = [optimizer.state[p] for p in params]
        beta1, beta2 = group["betas"]
        adamw(params, [p.grad for p in params], [s["exp_avg"] for s in states],
              [s["exp_avg_sq"] for s in states], [], [s["step"] for s in states],
              foreach=not group["fused"], fused=group["fused"] or None, amsgrad=False, beta1=beta1,
              beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
              maximize=False)


ADAM_ROLES = ("embed", "head", "scalar")


@dataclass(frozen=True)
class MuonConfig(AuxAdamW):
    """Muon on the hidden matrices (momentum orthogonalized by Newton-Schulz), AdamW on the other roles."""

    lr: float = 0.02
    """Learning rate of the hidden matrices (times the shape scale, lr_scaling)."""
    momentum: float = 0.95
    """Momentum of the hidden matrices (lerp form: B <- momentum·B + (1-momentum)·G)."""
    nesterov: bool = True
    """Orthogonalize (1-momentum)·G + momentum·B instead of B."""
    weight_decay: float = 0.0
    """Decoupled weight decay of the hidden matrices: W <- W·(1 - lr·wd)."""
    newton_schulz_impl: str = "auto"
    """kernels.registry implementation of newton_schulz: eager | triton | auto (triton on CUDA, eager elsewhere)."""
    ns_coefficients: str = "quintic"
    """Newton-Schulz coefficient set: quintic | polar_express | cubic."""
    ns_steps: int = 0
    """Newton-Schulz iterations; 0 = the coefficient set's own (5 quintic, 5 polar_express, 12 cubic)."""
    ns_dtype: str = "auto"
    """Newton-Schulz precision: auto (bf16 where the device multiplies bf16 natively, else fp32) | bf16 | fp32;
    bf16 on a CPU without native bf16 runs each product as an fp32 matmul of the bf16 operands, rounded."""
    lr_scaling: str = "original"
    """Shape scale of the step: original sqrt(max(1, rows/cols)) | match_rms_adamw 0.2·sqrt(max(rows, cols))."""

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "lr")
        check_non_negative(self, "weight_decay")
        check_fraction(self, "momentum")
        require(self.ns_steps >= 0, f"--optim.ns_steps={self.ns_steps} must be >= 0 (0 = the coefficient set's own)")
        for name, allowed in (("newton_schulz_impl", (*registry.names("newton_schulz"), "auto")),
                              ("ns_coefficients", tuple(reference.NS_DEFAULT_STEPS)),
                              ("ns_dtype", ("auto", *NS_DTYPES)), ("lr_scaling", LR_SCALINGS)):
            value = getattr(self, name)
            require(value in allowed, f"--optim.{name}={value!r}; choose from {', '.join(allowed)}")

    def resolve_auto(self, device, *, native_bf16: bool):
        """The config on `device`: newton_schulz_impl auto -> triton on CUDA, eager elsewhere; ns_dtype auto -> bf16
        where the device multiplies bf16 natively, else fp32."""
        impl = self.newton_schulz_impl
        if impl == "auto":
            impl = "triton" if torch.device(device).type == "cuda" else "eager"
        ns_dtype = ("bf16" if native_bf16 else "fp32") if self.ns_dtype == "auto" else self.ns_dtype
        return replace(self, newton_schulz_impl=impl, ns_dtype=ns_dtype)

    def implementations(self) -> dict:
        return {"ns": self.newton_schulz_impl}


def muon_kwargs(cfg: MuonConfig, groups: dict) -> dict:
    """Muon/NorMuon constructor arguments from a MuonConfig and param_groups(model)."""
    table = role_table(cfg, RoleHparams(cfg.lr, (0.0, 0.0), cfg.weight_decay), aux_lr=cfg.aux_lr,
                       aux_betas=cfg.aux_betas)
    return dict(hidden=groups["hidden"], adam_groups=torch_groups(groups, table, ADAM_ROLES), lr=table["hidden"].lr,
                momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=table["hidden"].weight_decay,
                eps=cfg.aux_eps, ns_impl=cfg.newton_schulz_impl, ns_coefficients=cfg.ns_coefficients,
                ns_steps=cfg.ns_steps, ns_dtype=cfg.ns_dtype, lr_scaling=cfg.lr_scaling)


@optimizer("muon", MuonConfig)
def build(cfg: MuonConfig, groups):
    return Muon(**muon_kwargs(cfg, groups))


# The Newton-Schulz and Muon settings shared by track 3's Muon-family recipes: 12 cubic Newton-Schulz steps in
# bf16 (the reference's; emulated at fp32 speed on CPUs without native bf16), momentum 0.95 with Nesterov, the
# sqrt(max(1, rows/cols)) shape scale.
TRACK3_NEWTON_SCHULZ = {"optim.ns_coefficients": "cubic", "optim.ns_steps": 12, "optim.ns_dtype": "bf16",
                        "optim.momentum": 0.95, "optim.nesterov": True, "optim.lr_scaling": "original"}


@recipe("track3-muon")
def track3_muon() -> dict:
    """Track-3 result #36, the benchmark's tuned baseline: 3250 steps, mean val loss 3.2787 (n=10).
    Source: records/track_3_optimization/results/20260610_tuned_baseline_3250/ (its log; the track's own
    train_gpt_simple.py with these values).

    Muon (momentum 0.95, Nesterov, 12 cubic Newton-Schulz steps in bf16, sqrt(max(1, rows/cols)) scale) on the
    hidden matrices with lr 0.025 and decoupled weight decay 0.05. AdamW on the rest, betas (0.8, 0.95),
    eps 1e-10, weight decay 0.001: embedding lr 0.7, head weight 0.004, 1-D parameters 0.015.
    """
    return {"optimizer": "muon", "optim.lr": 0.025, "optim.weight_decay": 0.05, **TRACK3_NEWTON_SCHULZ,
            "optim.embed_lr": 0.7, "optim.head_lr": 0.004, "optim.scalar_lr": 0.015, "optim.aux_betas": (0.8, 0.95),
            "optim.aux_eps": 1e-10, "optim.aux_weight_decay": 0.001, "max_steps": 3250, **TRACK3_SCHEDULE}
