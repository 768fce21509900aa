"""What the Kronecker-factored preconditioners (optim.shampoo, optim.soap) share: their statistics, batched over
same-shape matrices, the symmetric eigendecomposition, their state, the AdamW side, and their common config fields.

Both methods keep, for each hidden matrix W (m × n) with gradient G, Kronecker factors of its gradient's second
moment: a left m × m statistic built from G·Gᵀ and a right n × n one from Gᵀ·G. Those products go through the gram op
of kernels.registry (the eager GEMM, or the Triton kernel that computes one triangle of tiles and mirrors it), one
call per shape for every matrix of that shape (a (B, m, n) batch: track 3's q, k, v and attention output matrices
are one batch, the MLP's two matrices one each); an EMA can be in the call: L ← β·L + (1-β)·G·Gᵀ is gram(G,
side="left", out=L, alpha=1-β, beta=β). `gram_impl` names the implementation (KroneckerOptimizer.statistic); float64
weights (the tests' float64 statements) take the eager one in float64.
Eigendecompositions (eigh, QR) stay in torch.linalg, batched over the same matrices, in fp32 unless configured
otherwise, retried in fp64 when the fp32 one fails (as the methods' published code does).

State: every matrix's tensors are in optimizer.state[p] under their names, as any torch optimizer's, so state_dict()
and load_state_dict() round-trip them; while training, the tensors of one batch are slices of one stacked tensor
(KroneckerOptimizer.stacked), so the batched ops update them in place without copies. A loaded state is stacked again
(one copy) at its first step.

The AdamW side (embeddings, head, 1-D parameters) is Muon's (optim.muon.adamw_update), in the same Optimizer:
one state_dict holds everything. Param groups: the hidden matrices' group has role "hidden" and `kronecker` True;
every other group an AdamW group of its role (optim.roles).
"""

import math
import struct
from collections import defaultdict
from dataclasses import dataclass, replace

import torch

from kernels import registry
from optim.muon import adamw_groups, adamw_update, closure_loss
from optim.registry import require
from optim.roles import AuxAdamW

EIGH_DTYPES = {"fp32": torch.float32, "fp64": torch.float64}


# --- the statistics: G·Gᵀ and Gᵀ·G of same-shape matrices ------------------------------------------------------


def gram_impls() -> tuple[str, ...]:
    """The implementations of the statistics that gram_impl may name (besides "auto"): kernels.registry's gram op."""
    return tuple(registry.names("gram"))


def gram_function(impl: str):
    """The implementation of the gram op named `impl` ("auto" must be resolved first: KroneckerConfig.resolve_auto)."""
    return registry.get("gram", impl)


# --- the eigendecomposition --------------------------------------------------------------------------------------


def eigh(a: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.linalg.eigh of the symmetric matrices `a` (…, s, s) computed in `dtype`, retried in float64 where that
    fails; (eigenvalues ascending, eigenvectors as columns) in `dtype`."""
    try:
        return torch.linalg.eigh(a.to(dtype))
    except torch.linalg.LinAlgError:
        if dtype == torch.float64:
            raise
    values, vectors = torch.linalg.eigh(a.double())
    return values.to(dtype), vectors.to(dtype)


def add_to_diagonal(a: torch.Tensor, value: float) -> torch.Tensor:
    """a + value·I for a batch of square matrices (a new tensor; each diagonal entry rounded once)."""
    a = a.clone()
    a.diagonal(dim1=-2, dim2=-1).add_(value)
    return a


# --- the optimizer ----------------------------------------------------------------------------------------------


class KroneckerOptimizer(torch.optim.Optimizer):
    """A Kronecker-factored method on the hidden matrices and AdamW on the other roles, in one Optimizer.

    Subclasses give update_batch(group, params, grads, step): one step of the matrices `params` (same shape, same
    step count), `grads` their stacked gradients (B, m, n), `step` their step count after this step (1 at the first;
    a Python int in each matrix's state, so nothing waits for the device). hidden_defaults: the hidden group's
    hyper-parameters."""

    def __init__(self, hidden, adam_groups=(), *, hidden_defaults: dict, adam_eps: float, gram_impl: str = "eager"):
        hidden = list(hidden)
        if any(p.ndim != 2 for p in hidden):
            raise ValueError(f"{type(self).__name__} preconditions 2-D matrices; got shapes "
                             f"{[tuple(p.shape) for p in hidden]}")
        groups = [dict(params=hidden, role="hidden", kronecker=True, **hidden_defaults)]
        groups += adamw_groups(adam_groups, eps=adam_eps, kronecker=False)
        super().__init__([g for g in groups if g["params"]], {})
        self._gram = gram_function(gram_impl)
        self._stacks = {}  # (state name, ids of a batch's params) -> the stacked tensor its slices are

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            if group["kronecker"]:
                for params in self.batches(group):
                    for p in params:
                        self.state[p]["step"] += 1
                    self.update_batch(group, params, torch.stack([p.grad for p in params]),
                                      self.state[params[0]]["step"])
        self.adam_update()
        return loss

    def update_batch(self, group: dict, params: list, grads: torch.Tensor, step: int):
        raise NotImplementedError

    def statistic(self, x: torch.Tensor, *, side: str, out: torch.Tensor | None = None, alpha: float = 1.0,
                  beta: float = 0.0) -> torch.Tensor:
        """alpha·(x·xᵀ or xᵀ·x) + beta·out for the batch x (B, m, n) through the configured gram implementation
        (fp32 result); float64 x through the eager one in float64."""
        if x.dtype == torch.float64:
            return gram_function("eager")(x, side=side, out=out, alpha=alpha, beta=beta, upcast=True)
        return self._gram(x, side=side, out=out, alpha=alpha, beta=beta)

    def batches(self, group: dict) -> list[list]:
        """The group's matrices with a gradient, by (shape, dtype, device, step count): each list one batch."""
        by_key = defaultdict(list)
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            state.setdefault("step", 0)
            by_key[(tuple(p.shape), p.dtype, p.device, state["step"])].append(p)
        return list(by_key.values())

    def stacked(self, params: list, name: str, init) -> torch.Tensor:
        """State `name` of the same-shape matrices `params` as one (B, ...) tensor whose slice i is
        state[params[i]][name] (created by init(p) where missing). Stacked once (a copy) when a slice is not a view
        of the stack: at the first step, after load_state_dict, or when the batch changed."""
        key = (name, *map(id, params))
        stack = self._stacks.get(key)
        if stack is not None and all(
                (t := self.state[p].get(name)) is not None and t._base is stack
                and t.storage_offset() == stack.storage_offset() + i * stack.stride(0) for i, p in enumerate(params)):
            return stack
        members = set(key[1:])
        for other in [k for k in self._stacks if k[0] == name and members.intersection(k[1:])]:
            del self._stacks[other]  # a stack these matrices have left
        stack = torch.stack([self.state[p][name] if name in self.state[p] else init(p) for p in params])
        for i, p in enumerate(params):
            self.state[p][name] = stack[i]
        self._stacks[key] = stack
        return stack

    @torch.no_grad()
    def adam_update(self):
        """AdamW on every non-Kronecker group (optim.muon.adamw_update: torch's functional AdamW)."""
        adamw_update(self, [g for g in self.param_groups if not g["kronecker"]])




def fp32(value: float) -> float:
    """`value` rounded to fp32 (a Python float exactly representable there), as a 0-D fp32 tensor holds it; computed
    on the host (no tensor: also under FakeTensorMode)."""
    return struct.unpack("f", struct.pack("f", value))[0]


def power_correction(beta: float, step: int) -> torch.Tensor:
    """1 - beta^step as the reference computes a bias correction: an fp32 0-D tensor from the integer step."""
    return torch.tensor(1.0) - beta ** torch.tensor(step, dtype=torch.int64)


@dataclass(frozen=True)
class KroneckerConfig(AuxAdamW):
    """The fields Shampoo and SOAP share: the implementation of their statistics, the eigendecomposition's dtype, and
    the AdamW side."""

    gram_impl: str = "auto"
    """Implementation of the preconditioners' statistics G·Gᵀ and Gᵀ·G (kernels.registry's gram op, batched over
    same-shape matrices): eager | triton | auto (triton on CUDA, eager elsewhere)."""
    eigh_dtype: str = "fp32"
    """Precision of the eigendecompositions (and QR factorizations): fp32 (retried in fp64 where fp32 fails) | fp64."""

    def __post_init__(self):
        super().__post_init__()
        allowed = (*gram_impls(), "auto")
        require(self.gram_impl in allowed, f"--optim.gram_impl={self.gram_impl!r}; choose from {', '.join(allowed)}")
        require(self.eigh_dtype in EIGH_DTYPES,
                f"--optim.eigh_dtype={self.eigh_dtype!r}; choose from {', '.join(EIGH_DTYPES)}")

    def resolve_auto(self, device, *, native_bf16: bool):
        """The config on `device`: gram_impl auto -> triton on CUDA, eager elsewhere (as MuonConfig's Newton-Schulz)."""
        impl = self.gram_impl
        if impl == "auto":
            impl = "triton" if torch.device(device).type == "cuda" else "eager"
        return replace(self, gram_impl=impl)

    def implementations(self) -> dict:
        return {"gram": self.gram_impl}


def check_unit_interval(name: str, value: float, *, closed: bool = False):
    """A coefficient in [0, 1) ([0, 1] when `closed`)."""
    ok = math.isfinite(value) and 0 <= value and (value <= 1 if closed else value < 1)
    require(ok, f"--optim.{name}={value} must lie in [0, 1{']' if closed else ')'}")
