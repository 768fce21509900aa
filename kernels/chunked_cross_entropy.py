"""LM head + softcap + cross-entropy in PyTorch, its gradient finished in cache-sized blocks of rows: the CPU's loss.

Op (same semantics as kernels.reference.linear_cross_entropy, the test oracle; the formulas of
kernels/fused_linear_cross_entropy.py, the GPU's implementation):

    z      = hidden @ weightᵀ + bias          (N, V), the GEMM in the input dtype, then fp32
    c      = cap(z)                           tanh, algebraic or none (kernels.reference.softcap_logits)
    loss_i = lse(c_i) - c_i,t(i) + z_loss · lse(c_i)²
    ∂loss_i/∂z_ij = (softmax(c_i)_j · (1 + 2·z_loss·lse_i) - [j == t(i)]) · cap'(z_ij)  =  ρ_i · G'_ij

Why: on a CPU the eager loss spends more time moving the (N, V) fp32 logits than in its three GEMMs. Eager
autograd walks them a dozen times (the bias broadcast, the softcap's products, log_softmax and its backward,
nll_loss's one-hot gradient, the softcap's backward), each a full read and write of N·V·4 bytes (824 MB at 4096
tokens of a 50304-token vocabulary), each into a tensor of its own. Here one GEMM writes the logits; then,
BLOCK_BYTES of rows per thread at a time (the block and its scratch stay in the cores' L2), the bias, the softcap
and its derivative, exp, the row sums and the gradient are computed in place, so every element leaves the cache
once, as

    G'_ij = (e_ij - [j == t(i)] / ρ_i) · cap'(z_ij)     e = exp(c - m),  ρ_i = (1 + 2·z_loss·lse_i) / Σ_j e_ij

m is the row max, or 0 where a softcap <= UNSHIFTED_SOFTCAP bounds every c (no overflow: one pass saved), and
the softmax's division is left to ρ, a factor per row (another pass saved). The backward is three products with
the row factors w_i = ∂L/∂loss_i · ρ_i (0 on ignored rows) on the N-row side:

    grad_hidden = (G' @ weight) · w      grad_weight = G'ᵀ @ (hidden · w)      grad_bias = G'ᵀ @ w

so G' is read by the GEMMs only and stays as it is (a second backward with retain_graph=True is right).
`python -m bench.cpu_step` measures the training step this is part of, beside nanoGPT's.

Memory: G' (N×V fp32, the logits' own buffer), one block of scratch and a few (N,) vectors; eager holds several
N×V tensors.
Numerics: fp32 from the GEMM's output on, as the reference. 16-bit inputs: the logits GEMM runs in their dtype
and G' is rounded to it for the backward GEMMs, as eager autograd rounds the logits' gradient. Sums run in another
order than eager's: results agree to rounding (the tests state the tolerance), not bit for bit.

Runs as the custom op torch.ops.speedrun.chunked_cross_entropy (per-row losses, G' and ρ; the reduction is plain
PyTorch outside it, so autograd gives the backward its w), and torch.compile keeps it whole. Any device; on CUDA
the Triton kernel needs no N×V buffer.
"""

from typing import Optional

import torch
import torch.nn.functional as F

from kernels import _common, registry
from kernels.fused_linear_cross_entropy import check_inputs

# fp32 bytes of logits per thread processed at once (with as many of scratch): well inside a core's L2. Measured at
# 4096×50304, 2 threads: 2, 4, 8 and 16 rows a block took 372, 339, 330 and 361 ms beside a 330 ms logits GEMM.
BLOCK_BYTES = 512 << 10
# A softcap at most this bounds every logit, so Σ exp(c) <= V·e^50 cannot overflow fp32 and needs no max shift.
UNSHIFTED_SOFTCAP = 50.0


def block_rows(V: int, threads: int | None = None, block_bytes: int = BLOCK_BYTES) -> int:
    """Rows of V fp32 logits in `block_bytes` per thread (at least one); threads: torch's intra-op count."""
    threads = torch.get_num_threads() if threads is None else threads
    return max(1, threads * block_bytes // (4 * V))


def _softcap_in_place(c, scratch, one, softcap, kind, derivative: bool):
    """c <- cap(c) in place; with `derivative`, scratch <- cap'(z) (z: the raw logits c held)."""
    if kind == "algebraic":  # z·rsqrt(1 + z²/s²) = s·z·rsqrt(z² + s²); cap' = s³·(z² + s²)^-1.5 = rsqrt(1 + z²/s²)³
        torch.addcmul(one, c, c, value=1.0 / softcap**2, out=scratch).rsqrt_()
        c.mul_(scratch)
        if derivative:
            scratch.pow_(3)
    else:  # tanh: s·tanh(z/s); cap' = 1 - tanh²
        c.div_(softcap).tanh_()
        if derivative:
            torch.addcmul(one, c, c, value=-1.0, out=scratch)
        c.mul_(softcap)


def chunked_cross_entropy_rows(hidden, weight, targets, bias, softcap, softcap_kind, ignore_index, z_loss,
                               compute_grad, rows_per_block=None):
    """(loss_i (N,) fp32, G' (N, V) fp32, ρ (N,) fp32) with ∂loss_i/∂z_ij = ρ_i·G'_ij; loss_i = 0 on ignored rows.
    Without compute_grad, G' and ρ are empty tensors.

    G' = (e - [j == t(i)]/ρ)·cap' with e = exp(c - m) (m: the row max, or 0 when a softcap <= UNSHIFTED_SOFTCAP
    bounds c) and ρ = (1 + 2·z_loss·lse)/Σe: the softmax's normalisation is left to the backward's row factors,
    which saves a pass over every block."""
    N, V = hidden.shape[0], weight.shape[0]
    logits = hidden.new_empty(N, V, dtype=torch.float32)  # becomes G'; the bias is added per block, in cache
    with torch.autocast(hidden.device.type, enabled=False):
        if hidden.dtype == torch.float32:
            torch.mm(hidden, weight.t(), out=logits)
        else:
            logits.copy_(F.linear(hidden, weight))
    rows = rows_per_block or block_rows(V)
    scratch = logits.new_empty(min(rows, N), V)
    one = logits.new_ones(())
    bias = None if bias is None else bias.float()
    shift = softcap is None or softcap > UNSHIFTED_SOFTCAP
    keep = targets != ignore_index
    safe_targets = torch.where(keep, targets, 0)[:, None].long()  # ignored rows use column 0, then get 0
    picked, totals = logits.new_empty(N, 1), logits.new_empty(N, 1)
    maxes = logits.new_empty(N, 1) if shift else logits.new_zeros(N, 1)
    for start in range(0, N, rows):
        stop = min(N, start + rows)
        c, s, t = logits[start:stop], scratch[: stop - start], safe_targets[start:stop]  # c: contiguous rows
        if bias is not None:
            c.add_(bias)
        if softcap is not None:
            _softcap_in_place(c, s, one, softcap, softcap_kind, compute_grad)
        torch.gather(c, 1, t, out=picked[start:stop])
        if shift:
            c.sub_(torch.amax(c, dim=1, keepdim=True, out=maxes[start:stop]))
        torch.sum(c.exp_(), dim=1, keepdim=True, out=totals[start:stop])
        if compute_grad:
            inv_rho = totals[start:stop] if not z_loss else totals[start:stop] / (
                1 + 2 * z_loss * (maxes[start:stop] + totals[start:stop].log()))
            c.scatter_add_(1, t, inv_rho.neg())
            if softcap is not None:
                c.mul_(s)
    lse = maxes + totals.log()
    loss = (lse + z_loss * lse.square() - picked).squeeze(1).masked_fill_(~keep, 0.0)
    if not compute_grad:
        return loss, _common.absent(logits), _common.absent(logits)
    return loss, logits, ((1 + 2 * z_loss * lse) / totals).squeeze(1)


@torch.library.custom_op(_common.op_name("chunked_cross_entropy"), mutates_args=())
def _chunked_op(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, bias: Optional[torch.Tensor],
                softcap: Optional[float], softcap_kind: str, ignore_index: int, z_loss: float, compute_grad: bool,
                rows_per_block: Optional[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return chunked_cross_entropy_rows(hidden, weight, targets, bias, softcap, softcap_kind, ignore_index, z_loss,
                                      compute_grad, rows_per_block)


@_chunked_op.register_fake
def _(hidden, weight, targets, bias, softcap, softcap_kind, ignore_index, z_loss, compute_grad, rows_per_block):
    N, V = hidden.shape[0], weight.shape[0]
    loss = hidden.new_empty(N, dtype=torch.float32)
    if not compute_grad:
        return loss, _common.absent(loss), _common.absent(loss)
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


def chunked_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                                 bias: torch.Tensor | None = None, softcap: float | None = None,
                                 softcap_kind: str = "tanh", ignore_index: int = -100, reduction: str = "mean",
                                 z_loss: float = 0.0, rows_per_block: int | None = None) -> torch.Tensor:
    """Cross-entropy of cap(hidden @ weightᵀ + bias) against targets, differentiable in hidden, weight and bias.

    Same contract as kernels.reference.linear_cross_entropy (hidden (N, H), weight (V, H), bias (V,) or None,
    targets (N,) int64/int32; reduction "mean" over non-ignored tokens, "sum" or "none"). Under torch.autocast
    the inputs are cast to the autocast dtype here, as F.linear would. rows_per_block overrides block_rows(V).
    """
    hidden, weight, bias = _common.autocast_inputs(hidden, weight, bias)
    check_inputs(hidden, weight, targets, bias=bias, softcap=softcap, softcap_kind=softcap_kind,
                 ignore_index=ignore_index, reduction=reduction, z_loss=z_loss, device_rule="same")
    if rows_per_block is not None and rows_per_block < 1:
        raise ValueError(f"rows_per_block must be >= 1, got {rows_per_block}")
    compute_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    loss, _, _ = torch.ops.speedrun.chunked_cross_entropy(hidden, weight, targets, bias,
                                                       None if softcap is None else float(softcap), softcap_kind,
                                                       ignore_index, float(z_loss), compute_grad, rows_per_block)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (targets != ignore_index).sum().clamp(min=1)


registry.register("linear_cross_entropy", "chunked", chunked_linear_cross_entropy)
