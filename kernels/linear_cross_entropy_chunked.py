"""linear_cross_entropy's chunked implementation ("chunked", the CPU's): LM head + softcap + cross-entropy in
PyTorch, the gradient finished in one pass over the logits.

Op (kernels.reference.linear_cross_entropy is the test oracle; the formulas of kernels/linear_cross_entropy.py):

    z      = hidden @ weightᵀ + bias          (N, V), the GEMM in the input dtype, then fp32
    c      = cap(z)                           tanh, algebraic or none (kernels.reference.softcap_logits)
    loss_i = lse(c_i) - c_i,t(i) + z_loss · lse(c_i)²
    ∂loss_i/∂z_ij = (softmax(c_i)_j · (1 + 2·z_loss·lse_i) - [j == t(i)]) · cap'(z_ij)  =  ρ_i · G'_ij

with G'_ij = (e_ij - [j == t(i)] / ρ_i) · cap'(z_ij), e = exp(c - m), ρ_i = (1 + 2·z_loss·lse_i) / Σ_j e_ij: one
GEMM writes the logits, one row pass (row_pass: bias, softcap and its slope, exp, row sum) reads and writes each
row once, compiled by torch.compile into one C++ loop per row (eager blocks of rows when given rows_per_block or
without a C++ compiler); the backward is three GEMMs with per-row factors, G' read only by them.

Shapes and dtypes: as kernels.reference.linear_cross_entropy (hidden (N, H), weight (V, H), bias (V,) or None,
targets (N,) int64/int32, one floating dtype), any one device. Numerics: fp32 from the GEMM's output on; 16-bit
inputs: the logits GEMM in their dtype and G' rounded to it for the backward GEMMs, as eager autograd rounds the
logits' gradient. Sums run in another order than eager's: results agree to rounding, not bit for bit. Memory:
G' (N×V fp32, the logits' own buffer) and a few (N,) vectors. Inputs are checked as the Triton implementation's
(kernels.linear_cross_entropy.check_inputs, any device).

Custom op: torch.ops.speedrun.linear_cross_entropy_chunked (per-row losses, G' and ρ; the reduction is plain
PyTorch outside it, so autograd gives the backward its row factors); torch.compile keeps it whole. Why this
design, and what it measured: docs/kernels/linear_cross_entropy.md.
"""
import warnings
from typing import Optional

import torch
import torch.nn.functional as F

from kernels import registry
from kernels.custom_ops import absent, autocast_inputs, op_name
from kernels.linear_cross_entropy import check_inputs

# fp32 bytes of logits per thread processed at once by the eager row pass (rows_per_block given, or no compiler):
# inside a core's L2 (the block sizes measured: docs/kernels/linear_cross_entropy.md).
BLOCK_BYTES = 512 << 10
# A softcap at most this bounds every logit, so Σ exp(c) <= V·e^50 cannot overflow fp32 and needs no max shift.
UNSHIFTED_SOFTCAP = 50.0


def block_rows(V: int, threads: int | None = None, block_bytes: int = BLOCK_BYTES) -> int:
    """Rows of V fp32 logits in `block_bytes` per thread (at least one); threads: torch's intra-op count."""
    threads = torch.get_num_threads() if threads is None else threads
    return max(1, threads * block_bytes // (4 * V))


def softcap_with_slope(z, kind: str | None, param):
    """(cap(z), cap'(z)), cap' None without a softcap. param (a 0-D tensor, so a new value compiles nothing):
    1/s² for the algebraic softcap, s for tanh."""
    if kind == "algebraic":  # z·rsqrt(1 + z²/s²) = s·z·rsqrt(z² + s²); cap' = s³·(z² + s²)^-1.5 = rsqrt(1 + z²/s²)³
        r = torch.rsqrt(1 + z * z * param)
        return z * r, r * r * r
    if kind == "tanh":  # s·tanh(z/s); cap' = 1 - tanh²
        t = torch.tanh(z / param)
        return t * param, 1 - t * t
    return z, None


def row_pass(logits, bias, param, kind: str | None, shift: bool):
    """In place, every element read and written once: logits <- e·cap' with e = exp(c - m), c = cap(logits + bias).
    Returns (Σ_j e_ij, m_i) per row, shape (rows,); m is the row max with `shift`, else None (0)."""
    z = logits + bias
    c, slope = softcap_with_slope(z, kind, param)
    # cap is increasing, so cap(max z) is c's max (to rounding, which a shift tolerates); inductor (torch 2.13)
    # fails to build the amax of c itself when c is also stored
    m = softcap_with_slope(torch.amax(z, dim=1), kind, param)[0] if shift else None
    e = torch.exp(c - m[:, None]) if shift else torch.exp(c)
    logits.copy_(e if slope is None else e * slope)
    return e.sum(dim=1), m


# The row pass as one loop per row (load, softcap, exp, row sum, store) in inductor's vectorised C++: shapes are
# symbolic, so one compilation serves every (N, V) (a few size classes aside).
_compiled_row_pass = torch.compile(row_pass, dynamic=True, fullgraph=True)
_compile_failure: list[str] = []  # set once if inductor cannot build here (no C++ compiler): eager blocks then


def _run_row_pass(logits, bias, param, kind, shift, rows_per_block):
    """row_pass over all rows: compiled in one call, or eagerly `rows_per_block` rows at a time."""
    if rows_per_block is None and not _compile_failure:
        try:
            # Always without autograd (one graph for training and evaluation alike). Softcap kinds x shift x size
            # classes x thread counts can pass dynamo's default of 8 graphs per function. (Inductor's cache is one
            # per CPU capability: kernels.device.separate_inductor_cache.)
            with torch.no_grad(), torch._dynamo.config.patch(recompile_limit=64):
                return _compiled_row_pass(logits, bias, param, kind, shift)
        except torch._dynamo.exc.BackendCompilerFailed as err:
            inner = getattr(err, "inner_exception", None) or err
            _compile_failure.append(f"{type(inner).__name__}: {(str(inner).strip().splitlines() or [''])[0]}")
            warnings.warn(f"linear_cross_entropy (chunked): its row pass could not be compiled "
                          f"({_compile_failure[0]}); running it eagerly in blocks of rows (slower)", stacklevel=3)
    N, V = logits.shape
    rows = rows_per_block or block_rows(V)
    totals, maxes = logits.new_empty(N), logits.new_empty(N) if shift else None
    for start in range(0, N, rows):
        stop = min(N, start + rows)
        totals[start:stop], m = row_pass(logits[start:stop], bias, param, kind, shift)
        if shift:
            maxes[start:stop] = m
    return totals, maxes


def chunked_rows(hidden, weight, targets, bias, softcap, softcap_kind, ignore_index, z_loss, compute_grad,
                 rows_per_block=None):
    """(loss_i (N,) fp32, G' (N, V) fp32, ρ (N,) fp32) with ∂loss_i/∂z_ij = ρ_i·G'_ij; loss_i = 0 on ignored rows.
    Without compute_grad, G' and ρ are empty tensors.

    G' = (e - [j == t(i)]/ρ)·cap' with e = exp(c - m) (m: the row max, or 0 when a softcap <= UNSHIFTED_SOFTCAP
    bounds c) and ρ = (1 + 2·z_loss·lse)/Σe: the softmax's normalisation is left to the backward's row factors,
    which saves a pass over the logits. rows_per_block: run the row pass eagerly in blocks of that many rows
    instead of compiled."""
    N, V = hidden.shape[0], weight.shape[0]
    logits = hidden.new_empty(N, V, dtype=torch.float32)  # becomes G'
    with torch.autocast(hidden.device.type, enabled=False):
        if hidden.dtype == torch.float32:
            torch.mm(hidden, weight.t(), out=logits)
        else:
            logits.copy_(F.linear(hidden, weight))
    kind = None if softcap is None else softcap_kind
    param = logits.new_tensor(0.0 if softcap is None else 1 / softcap**2 if kind == "algebraic" else softcap)
    bias = logits.new_zeros(V) if bias is None else bias.float()
    shift = softcap is None or softcap > UNSHIFTED_SOFTCAP
    keep = targets != ignore_index
    safe_targets = torch.where(keep, targets, 0)[:, None].long()  # ignored rows use column 0, then get 0
    # The target's softcapped logit and slope, before the row pass overwrites the logits (N values).
    picked, picked_slope = softcap_with_slope(logits.gather(1, safe_targets) + bias[safe_targets], kind, param)
    totals, maxes = _run_row_pass(logits, bias, param, kind, shift, rows_per_block)
    totals = totals[:, None]
    lse = totals.log() if maxes is None else maxes[:, None] + totals.log()
    loss = (lse + z_loss * lse.square() - picked).squeeze(1).masked_fill_(~keep, 0.0)
    if not compute_grad:
        return loss, absent(logits), absent(logits)
    inv_rho = totals if not z_loss else totals / (1 + 2 * z_loss * lse)
    logits.scatter_add_(1, safe_targets, -inv_rho if picked_slope is None else -inv_rho * picked_slope)
    return loss, logits, (1 / inv_rho).squeeze(1)


@torch.library.custom_op(op_name("linear_cross_entropy_chunked"), mutates_args=())
def _chunked_op(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, bias: Optional[torch.Tensor],
                softcap: Optional[float], softcap_kind: str, ignore_index: int, z_loss: float, compute_grad: bool,
                rows_per_block: Optional[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return chunked_rows(hidden, weight, targets, bias, softcap, softcap_kind, ignore_index, z_loss, compute_grad,
                        rows_per_block)


@_chunked_op.register_fake
def _(hidden, weight, targets, bias, softcap, softcap_kind, ignore_index, z_loss, compute_grad, rows_per_block):
    N, V = hidden.shape[0], weight.shape[0]
    loss = hidden.new_empty(N, dtype=torch.float32)
    if not compute_grad:
        return loss, absent(loss), absent(loss)
    return loss, hidden.new_empty(N, V, dtype=torch.float32), hidden.new_empty(N, dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    hidden, weight, targets, bias, *_ = inputs
    _, G, row_scale = output
    ctx.mark_non_differentiable(G, row_scale)
    ctx.set_materialize_grads(False)  # else autograd hands the backward an N×V zero gradient for G'
    ctx.has_bias = bias is not None
    ctx.ignore_index = inputs[6]
    ctx.save_for_backward(hidden, weight, targets, G, row_scale)


def _backward(ctx, grad_loss, *_):
    hidden, weight, targets, G, row_scale = ctx.saved_tensors
    if grad_loss is None or G.numel() == 0:
        return (None,) * 10
    # ∂L/∂z_ij = w_i·G'_ij with w_i = ∂L/∂loss_i · ρ_i (0 on ignored rows): the row factors go on the N-row side
    # of each product, so G' is read by the three GEMMs only (and stays as it is for a second backward).
    w = (grad_loss.float() * row_scale * (targets != ctx.ignore_index))[:, None]  # (N, 1)
    G = G.to(hidden.dtype)
    needs = ctx.needs_input_grad
    grad_hidden = ((G @ weight).float() * w).to(hidden.dtype) if needs[0] else None
    grad_weight = (G.t() @ (hidden.float() * w).to(hidden.dtype)) if needs[1] else None
    grad_bias = (G.t() @ w.to(G.dtype)).squeeze(1) if ctx.has_bias and needs[3] else None
    return grad_hidden, grad_weight, None, grad_bias, None, None, None, None, None, None


_chunked_op.register_autograd(_backward, setup_context=_setup_context)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                                 bias: torch.Tensor | None = None, softcap: float | None = None,
                                 softcap_kind: str = "tanh", ignore_index: int = -100, reduction: str = "mean",
                                 z_loss: float = 0.0, rows_per_block: int | None = None) -> torch.Tensor:
    """Cross-entropy of cap(hidden @ weightᵀ + bias) against targets, differentiable in hidden, weight and bias.

    Same contract as kernels.reference.linear_cross_entropy (hidden (N, H), weight (V, H), bias (V,) or None,
    targets (N,) int64/int32; reduction "mean" over non-ignored tokens, "sum" or "none"). Under torch.autocast
    the inputs are cast to the autocast dtype here, as F.linear would. rows_per_block: the row pass eagerly, in blocks
    of that many rows, instead of compiled (tests; the fallback without a C++ compiler uses block_rows(V)).
    """
    hidden, weight, bias = autocast_inputs(hidden, weight, bias)
    check_inputs(hidden, weight, targets, bias=bias, softcap=softcap, softcap_kind=softcap_kind,
                 ignore_index=ignore_index, reduction=reduction, z_loss=z_loss, device_rule="same")
    if rows_per_block is not None and rows_per_block < 1:
        raise ValueError(f"rows_per_block must be >= 1, got {rows_per_block}")
    compute_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    loss, _, _ = torch.ops.speedrun.linear_cross_entropy_chunked(hidden, weight, targets, bias,
                                                       None if softcap is None else float(softcap), softcap_kind,
                                                       ignore_index, float(z_loss), compute_grad, rows_per_block)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (targets != ignore_index).sum().clamp(min=1)


registry.register("linear_cross_entropy", "chunked", linear_cross_entropy)
