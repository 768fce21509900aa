"""Fused LM head + softcap + cross-entropy: loss, grad_hidden and grad_weight in one chunked forward pass.

Op (same semantics as kernels.reference.linear_cross_entropy, the test oracle and peer):

    z     = hidden @ weightᵀ                                   (N, V) raw logits, fp32 accumulation
    c     = softcap · tanh(z / softcap)   (or c = z without softcap)
    lse_i = log Σ_j exp(c_ij)
    loss_i = lse_i - c_i,t(i) + z_loss · lse_i²                 0 for rows with t(i) == ignore_index
    loss  = Σ_i loss_i / #non-ignored  (mean) | Σ_i loss_i (sum) | loss_i (none, no gradient: see below)

Gradient, with g = grad_output · (1/#non-ignored for mean, 1 for sum) and g = 0 on ignored rows:

    dc_ij = g · (softmax(c_i)_j · (1 + 2·z_loss·lse_i) - [j == t(i)])
    dz_ij = dc_ij · (1 - (c_ij / softcap)²)     (the tanh derivative from the stored c; exactly 0 where |c| = softcap)
    grad_hidden = dz @ weight        (N, H)        grad_weight = dzᵀ @ hidden        (V, H)

Shapes: hidden (N, H), weight (V, H), one dtype (bf16, fp16 or fp32; the model casts); targets (N,) int64
(or int32). All contiguous.

Design: the N tokens are processed in chunks of C rows (C·V·4 bytes <= LOGITS_BUDGET_BYTES = 1 GiB: N = 8192,
V = 50304 gives two chunks of 4096), so no N×V tensor ever exists. Per chunk, four launches on one (C, V) fp32
buffer (the kernels are in kernels/_flce_kernels.py):

    1. flce_logits_kernel       c = softcap(h @ Wᵀ) for a (BLOCK_M, BLOCK_N) tile, stored fp32, plus the tile's
                                per-row max and Σexp(c - max) (the online log-sum-exp partials, (C, V/BLOCK_N))
    2. flce_loss_grad_kernel    one program per row: lse from the partials, loss_i, then dz overwrites c in
                                place (fp32, same element, same program)
    3. flce_grad_kernel         grad_hidden[chunk] = dz @ W, one rounding to the input dtype
    4. flce_grad_kernel         grad_weight (+)= dzᵀ @ h[chunk]; fp32 accumulation across chunks: the first chunk
       (DZ_T)                   writes, later ones read-add-write their own tile (a (V, H) fp32 buffer for
                                16-bit inputs when there are >= 2 chunks), the last one stores the input dtype

Memory: the chunk buffer, grad_hidden, grad_weight and (16-bit, >= 2 chunks) the (V, H) fp32 running sum, i.e.
~1.15 GB at the 124M shape against several N×V fp32 tensors for eager. The (V, H) buffers do not shrink with N:
with fewer tokens than the width (N < H) eager's N×V tensors are the smaller ones. The default budget keeps a
single chunk (no running sum) until N·V·4 > 1 GiB, where N×V dwarfs V×H anyway.

So the gradients are finished during forward (Liger's FLCE scheme); backward only multiplies the two saved
gradients by grad_output. Every output element is written by exactly one program with a fixed reduction order
(no atomics): results are deterministic. dz is rounded to the operand dtype when a matmul tile is loaded (as
eager autograd rounds the logits' gradient to bf16 before its bf16 matmuls).

Numerics: bf16/fp16 tensor-core operands with fp32 accumulation; logits, lse, loss and dz in fp32. fp32 inputs
use tl.dot(input_precision="tf32x3") on the GPU (~fp32 accuracy on tensor cores). tanh: MUFU `tanh.approx.f32`
(inline PTX, max rel. error ~2⁻¹¹) for 16-bit inputs on the GPU, whose bf16-rounded logits are far coarser; an
exp-based tanh with a Taylor branch near 0 (a few ulp) for fp32 inputs and under the interpreter (which has no
tanh). The interpreter's bf16 arithmetic and fp32→bf16 casts are wrong, so there (UPCAST) tiles go to fp32
right after loading and bf16 rounding is done by round_to_bf16_grid (kernels._common.precision_flags).

Host syncs: none on the hot path (the mean's token count stays on the device). One remains, opt-out: the
target range check (`validate_targets=True`) is a reduction over N targets plus one device->host sync (it
stalls the CPU until the queued GPU work is done, ~tens of µs of lost overlap). With it off, a non-ignored
target outside [0, V) gives a NaN loss (no one-hot term in its gradient) instead of an error.

reduction="none" returns per-token losses only without autograd (no input needs grad): the precomputed
grad_weight sums over tokens, so a per-token grad_output cannot be applied after the fact. With grad it raises.

Provenance: the chunked, gradient-in-forward scheme follows Liger-Kernel's fused_linear_cross_entropy
(linkedin/Liger-Kernel, after mgmalek/efficient_cross_entropy); the tanh softcap and z-loss follow the NanoGPT
speedrun (KellerJordan/modded-nanogpt) and PaLM. This code is written from scratch.
"""

from dataclasses import dataclass

import torch
import triton

from kernels import _common, registry
from kernels._common import Tile
from kernels._flce_kernels import flce_grad_kernel, flce_logits_kernel, flce_loss_grad_kernel

# ---------------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------------

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
TARGET_DTYPES = (torch.int64, torch.int32)
REDUCTIONS = ("mean", "sum", "none")

# Upper bound on the (C, V) fp32 logits buffer of one chunk. 1 GiB gives C = 4096 rows at V = 50304 (eager
# holds several N×V fp32 tensors instead). Larger chunks mean fewer read-add-write passes over the fp32
# grad_weight accumulator (154 MB each at 124M) and fuller grids for the grad_hidden matmul.
LOGITS_BUDGET_BYTES = 1 << 30


# ---------------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowBlocks:
    """Blocks of the per-row loss/gradient kernel."""

    block_v: int  # vocab columns per step of the row loop
    block_t: int  # log-sum-exp partials per step when combining a row's
    warps: int


@dataclass(frozen=True)
class FLCEConfig:
    """Tiles of the four kernels."""

    logits: Tile  # rows = tokens, columns = vocab (block_n is the width of one log-sum-exp partial), K = hidden
    loss: RowBlocks
    grad_hidden: Tile  # rows = tokens, columns = hidden, K = vocab
    grad_weight: Tile  # rows = vocab, columns = hidden, K = tokens


# Chosen for the sm_90 budget (smem <= 227 KB, no spills, HGMMA: `python -m bench.codegen --kernel
# fused_linear`), not yet tuned on a GPU (`pytest bench/kernels/bench_fused_linear_cross_entropy.py` on one would
# measure them). "b128" is the 124M-shape family (128-wide matmul tiles, 8 warps for the epilogue-heavy logits
# kernel; 64-row grad_hidden tiles so a 4096-row chunk gives 64×6 = 384 programs at H = 768). "b64" halves the
# tiles for small problems (and gives the interpreter tests several tiles in every dim); "f64" is the fp32
# (accuracy, not speed) path, with BLOCK_K 32 so fp32 stages fit in shared memory.
_FAMILIES = {
    "b128": ((torch.bfloat16, torch.float16), FLCEConfig(
        logits=Tile(block_m=128, block_n=128, block_k=64, warps=8, stages=3),
        loss=RowBlocks(block_v=2048, block_t=512, warps=8),
        grad_hidden=Tile(block_m=64, block_n=128, block_k=64, warps=4, stages=4),
        grad_weight=Tile(block_m=128, block_n=128, block_k=32, warps=8, stages=3))),
    "b64": ((torch.bfloat16, torch.float16), FLCEConfig(
        logits=Tile(block_m=64, block_n=64, block_k=64, warps=4, stages=3),
        loss=RowBlocks(block_v=1024, block_t=256, warps=4),
        grad_hidden=Tile(block_m=64, block_n=64, block_k=64, warps=4, stages=3),
        grad_weight=Tile(block_m=64, block_n=64, block_k=32, warps=4, stages=3))),
    "f64": ((torch.float32,), FLCEConfig(
        logits=Tile(block_m=64, block_n=64, block_k=32, warps=4, stages=3),
        loss=RowBlocks(block_v=1024, block_t=256, warps=4),
        grad_hidden=Tile(block_m=64, block_n=64, block_k=32, warps=4, stages=3),
        grad_weight=Tile(block_m=64, block_n=64, block_k=32, warps=4, stages=3))),
}
CONFIGS = {(name, dtype): cfg for name, (dtypes, cfg) in _FAMILIES.items() for dtype in dtypes}


def pick_config(N: int, V: int, dtype: torch.dtype) -> str:
    """Tile family: "f64" for fp32; for 16-bit, "b128" once its logits grid has a few programs per SM,
    else "b64" (small N). A heuristic."""
    if dtype == torch.float32:
        return "f64"
    tiles = triton.cdiv(N, 128) * triton.cdiv(V, 128)
    return "b128" if tiles >= 4 * _common.NUM_SMS_HINT else "b64"


def pick_chunk_rows(N: int, V: int, block_m: int, budget_bytes: int = LOGITS_BUDGET_BYTES) -> int:
    """Rows per chunk: the fewest chunks whose (C, V) fp32 buffer fits the budget, C a multiple of block_m,
    split evenly (N = 8192, V = 50304: two chunks of 4096 rather than 5248 + 2944)."""
    max_rows = max(block_m, budget_bytes // (4 * V) // block_m * block_m)
    chunks = triton.cdiv(N, max_rows)
    return min(max_rows, triton.cdiv(triton.cdiv(N, chunks), block_m) * block_m)


def _resolve_config(name, N, V, dtype) -> tuple[str, FLCEConfig]:
    name = pick_config(N, V, dtype) if name is None else name
    return name, _common.lookup_config(CONFIGS, name, dtype, "fused-linear-cross-entropy")


# ---------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------


@dataclass
class FLCEWorkspace:
    """Work buffers of one call, reusable across calls of the same shape (tests fill them with NaN):
    logits (C, V) fp32 chunk buffer (capped logits, then dz); pmax / psum (C, cdiv(V, logits.block_n)) fp32
    log-sum-exp partials; gw_acc (V, H) fp32 grad_weight running sum, or None when it is not needed
    (fp32 inputs accumulate in grad_weight itself; a single chunk stores the result directly)."""

    config: str
    logits: torch.Tensor
    pmax: torch.Tensor
    psum: torch.Tensor
    gw_acc: torch.Tensor | None


def _workspace_shapes(C, N, V, H, dtype, cfg: FLCEConfig, grad_weight: bool) -> dict:
    T = triton.cdiv(V, cfg.logits.block_n)
    shapes = {"logits": (C, V), "pmax": (C, T), "psum": (C, T)}
    if grad_weight and dtype != torch.float32 and C < N:
        shapes["gw_acc"] = (V, H)
    return shapes


def flce_workspace(N: int, V: int, H: int, dtype: torch.dtype, device, *, config: str | None = None,
                   chunk_rows: int | None = None, grad_weight: bool = True) -> FLCEWorkspace:
    """Allocate the buffers for hidden (N, H), weight (V, H) of `dtype`; chunk_rows defaults to
    pick_chunk_rows (LOGITS_BUDGET_BYTES), config to pick_config."""
    name, cfg = _resolve_config(config, N, V, dtype)
    if chunk_rows is None:
        chunk_rows = pick_chunk_rows(N, V, cfg.logits.block_m)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    shapes = _workspace_shapes(min(chunk_rows, N), N, V, H, dtype, cfg, grad_weight)
    buffers = {k: torch.empty(shape, dtype=torch.float32, device=device) for k, shape in shapes.items()}
    return FLCEWorkspace(config=name, gw_acc=buffers.pop("gw_acc", None), **buffers)


def check_inputs(hidden, weight, targets, *, softcap, ignore_index, reduction, z_loss):
    """Validate shapes, dtypes, devices, contiguity and hyper-parameters; returns (N, H, V)."""
    _common.check_tensor(hidden, "hidden", ndim=2, dtypes=SUPPORTED_DTYPES, contiguous=True)
    _common.check_tensor(weight, "weight", ndim=2, dtypes=SUPPORTED_DTYPES, contiguous=True)
    _common.check_tensor(targets, "targets", ndim=1, dtypes=TARGET_DTYPES, contiguous=True)
    N, H = hidden.shape
    V, Hw = weight.shape
    if Hw != H:
        raise ValueError(f"hidden (N={N}, H={H}) and weight (V={V}, H={Hw}) disagree on the hidden dim H")
    if targets.shape[0] != N:
        raise ValueError(f"targets has {targets.shape[0]} entries but hidden has N={N} rows")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must share one dtype; cast first")
    _common.check_triton_device((hidden, "hidden"), (weight, "weight"), (targets, "targets"))
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if softcap is not None and not (float(softcap) > 0 and float(softcap) != float("inf")):
        raise ValueError(f"softcap must be a positive finite float or None, got {softcap!r}")
    if not float(z_loss) == float(z_loss) or abs(float(z_loss)) == float("inf"):
        raise ValueError(f"z_loss must be finite, got {z_loss!r}")
    if not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    return N, H, V


def validate_target_range(targets: torch.Tensor, V: int, ignore_index: int):
    """Raise if a target outside [0, V) is not ignore_index. Costs one pass over N targets and one
    device->host sync (the bool()); skip it with validate_targets=False on the hot path."""
    bad = ((targets < 0) | (targets >= V)) & (targets != ignore_index)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise ValueError(f"targets[{first}] = {int(targets[first])} is outside [0, V={V}) and is not "
                         f"ignore_index={ignore_index}")


def _launch_grad(dz, b, acc, out, tile: Tile, *, dz_t: bool, accumulate: bool, flags: dict):
    """out (+)= dz·b, or dzᵀ·b when dz_t (the grad_weight form); acc is the running sum read when accumulating."""
    M, N = out.shape
    flce_grad_kernel[(triton.cdiv(M, tile.block_m) * triton.cdiv(N, tile.block_n),)](
        dz_ptr=dz, b_ptr=b, acc_ptr=acc, c_ptr=out,
        M=M, N=N, K=b.shape[0],
        stride_zm=dz.stride(0), stride_bk=b.stride(0), stride_am=acc.stride(0), stride_cm=out.stride(0),
        **tile.meta(), DZ_T=dz_t, ACCUMULATE=accumulate, **flags, **tile.launch(),
    )


def fused_linear_cross_entropy_fwd(hidden, weight, targets, *, softcap=None, ignore_index=-100, reduction="mean",
                                   z_loss=0.0, compute_grad_hidden=True, compute_grad_weight=True,
                                   grad_hidden=None, grad_weight=None, loss_rows=None, workspace=None,
                                   config=None, chunk_rows=None, validate_targets=True):
    """Loss and, during the same pass, the gradients for grad_output = 1: returns (loss, grad_hidden, grad_weight).

    loss: 0-dim fp32 (mean/sum) or (N,) fp32 (none). grad_hidden (N, H) / grad_weight (V, H) in the input dtype,
    None when not requested (reduction="none" computes no gradient). `grad_hidden`, `grad_weight`, `loss_rows`
    ((N,) fp32 per-token losses) are optional output buffers, every element of which is written; `workspace`
    (flce_workspace) avoids allocating the chunk buffers and fixes the tile family and chunk height (then
    `config` and `chunk_rows` are not used); otherwise `config` forces a tile family of CONFIGS and `chunk_rows`
    the chunk height. No autograd (see FusedLinearCrossEntropyFunction).
    """
    # 1. check
    N, H, V = check_inputs(hidden, weight, targets, softcap=softcap, ignore_index=ignore_index,
                           reduction=reduction, z_loss=z_loss)
    device, dtype = hidden.device, hidden.dtype
    if reduction == "none":
        compute_grad_hidden = compute_grad_weight = False
    compute_grad = compute_grad_hidden or compute_grad_weight
    if validate_targets:
        validate_target_range(targets, V, ignore_index)

    # 2. allocate
    ws = workspace
    if ws is None:
        ws = flce_workspace(N, V, H, dtype, device, config=config, chunk_rows=chunk_rows,
                            grad_weight=compute_grad_weight)
    _, cfg = _resolve_config(ws.config, N, V, dtype)
    C = max(1, ws.logits.shape[0]) if ws.logits.ndim == 2 else 1
    _common.check_workspace(ws, _workspace_shapes(C, N, V, H, dtype, cfg, compute_grad_weight), dtype=torch.float32,
                    device=device, builder="flce_workspace")
    T = ws.pmax.shape[1]
    loss_rows = _common.check_out(loss_rows, "loss_rows", (N,), dtype=torch.float32, device=device)
    grad_hidden = (_common.check_out(grad_hidden, "grad_hidden", (N, H), dtype=dtype, device=device)
                   if compute_grad_hidden else None)
    grad_weight = (_common.check_out(grad_weight, "grad_weight", (V, H), dtype=dtype, device=device)
                   if compute_grad_weight else None)

    # The mean's denominator stays on the device (no sync): scale = 1 / max(#non-ignored, 1).
    valid = (targets != ignore_index).sum()
    if reduction == "mean":
        count = valid.clamp(min=1).to(torch.float32)
        scale = (1.0 / count).reshape(1)
    else:
        scale = torch.ones(1, dtype=torch.float32, device=device)

    interp = _common.is_interpreter()
    flags = _common.precision_flags(dtype, interpreter=interp)
    has_softcap = softcap is not None
    s = float(softcap) if has_softcap else 1.0

    # 3. launch, chunk by chunk
    chunks = list(range(0, N, C))
    for index, r0 in enumerate(chunks):
        r1 = min(r0 + C, N)
        M = r1 - r0
        h, z = hidden[r0:r1], ws.logits[:M]
        lg = cfg.logits
        flce_logits_kernel[(triton.cdiv(M, lg.block_m) * triton.cdiv(V, lg.block_n),)](
            h_ptr=h, w_ptr=weight, z_ptr=z, pmax_ptr=ws.pmax, psum_ptr=ws.psum,
            M=M, V=V, K=H,
            stride_hm=h.stride(0), stride_wv=weight.stride(0), stride_zm=z.stride(0), stride_pm=ws.pmax.stride(0),
            softcap=s, inv_softcap=1.0 / s,
            **lg.meta(), HAS_SOFTCAP=has_softcap, FAST_TANH=(dtype != torch.float32 and not interp),
            UPCAST=flags["UPCAST"], TF32X3=flags["TF32X3"], **lg.launch(),
        )
        flce_loss_grad_kernel[(M,)](
            z_ptr=z, pmax_ptr=ws.pmax, psum_ptr=ws.psum, tgt_ptr=targets[r0:r1], scale_ptr=scale,
            loss_ptr=loss_rows[r0:r1],
            V=V, T=T,
            stride_zm=z.stride(0), stride_pm=ws.pmax.stride(0),
            ignore_index=ignore_index, softcap=s, inv_softcap=1.0 / s, z_loss=float(z_loss),
            BLOCK_V=cfg.loss.block_v, BLOCK_T=cfg.loss.block_t, HAS_SOFTCAP=has_softcap, COMPUTE_GRAD=compute_grad,
            num_warps=cfg.loss.warps,
        )
        if compute_grad_hidden:
            gh = grad_hidden[r0:r1]
            _launch_grad(z, weight, gh, gh, cfg.grad_hidden, dz_t=False, accumulate=False, flags=flags)
        if compute_grad_weight:
            # fp32: accumulate in grad_weight itself; 16-bit: in the fp32 buffer, the last chunk stores dtype.
            running = grad_weight if ws.gw_acc is None else ws.gw_acc
            out = grad_weight if index == len(chunks) - 1 else running
            _launch_grad(z, h, running, out, cfg.grad_weight, dz_t=True, accumulate=index > 0, flags=flags)

    # 4. reduce the per-token losses (no sync)
    if reduction == "none":
        loss = loss_rows
    elif reduction == "sum":
        loss = loss_rows.sum()
    else:
        loss = loss_rows.sum() / valid.clamp(min=1)
    return loss, grad_hidden, grad_weight


# ---------------------------------------------------------------------------------------------------
# Autograd and the public API
# ---------------------------------------------------------------------------------------------------


class FusedLinearCrossEntropyFunction(torch.autograd.Function):
    """Forward runs the whole computation (loss and both gradients, chunk by chunk) and saves only the two
    gradients; backward multiplies them by grad_output."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, softcap, ignore_index, reduction, z_loss, options):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        loss, grad_hidden, grad_weight = fused_linear_cross_entropy_fwd(
            hidden, weight, targets, softcap=softcap, ignore_index=ignore_index, reduction=reduction,
            z_loss=z_loss, compute_grad_hidden=need_h, compute_grad_weight=need_w, **options)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        # Out of place, so a second backward (retain_graph=True) scales the saved gradients again correctly.
        g = grad_output.to(torch.float32)
        return (
            None if grad_hidden is None else (grad_hidden * g).to(grad_hidden.dtype),  # hidden
            None if grad_weight is None else (grad_weight * g).to(grad_weight.dtype),  # weight
            None,  # targets: integer, no gradient
            None,  # softcap: hyper-parameter
            None,  # ignore_index: hyper-parameter
            None,  # reduction: hyper-parameter
            None,  # z_loss: hyper-parameter (not differentiated)
            None,  # options: launcher settings (validate_targets, config, chunk_rows)
        )


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                               softcap: float | None = None, ignore_index: int = -100, reduction: str = "mean",
                               z_loss: float = 0.0, validate_targets: bool = True, config: str | None = None,
                               chunk_rows: int | None = None) -> torch.Tensor:
    """Cross-entropy of softcap(hidden @ weightᵀ) against targets without materialising the (N, V) logits.

    Same contract as kernels.reference.linear_cross_entropy (hidden (N, H), weight (V, H), targets (N,)),
    differentiable in hidden and weight. reduction="none" works only without autograd (see the module doc).
    validate_targets=False drops the range check and its device->host sync (bad targets then give NaN).
    config / chunk_rows override pick_config / pick_chunk_rows (tile family; rows per chunk).
    """
    options = dict(validate_targets=validate_targets, config=config, chunk_rows=chunk_rows)
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    if reduction == "none" and needs_grad:
        raise NotImplementedError(
            "fused_linear_cross_entropy computes gradients during forward, summed over tokens, so it cannot apply "
            "a per-token grad_output: reduction='none' is supported only without autograd (torch.no_grad() or "
            "inputs that do not require grad). Use reduction='sum'/'mean', or impl 'eager'.")
    if not needs_grad:
        loss, _, _ = fused_linear_cross_entropy_fwd(
            hidden, weight, targets, softcap=softcap, ignore_index=ignore_index, reduction=reduction,
            z_loss=z_loss, compute_grad_hidden=False, compute_grad_weight=False, **options)
        return loss
    return FusedLinearCrossEntropyFunction.apply(hidden, weight, targets, softcap, ignore_index, reduction, z_loss,
                                                 options)


registry.register("linear_cross_entropy", "triton", fused_linear_cross_entropy)
