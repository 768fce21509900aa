"""linear_cross_entropy in Triton: LM head + softcap + cross-entropy, the loss and every gradient in one chunked
forward pass; never an N×V tensor.

Op (kernels.reference.linear_cross_entropy is the test oracle and the eager peer; same semantics):

    z     = hidden @ weightᵀ + bias                            (N, V) raw logits, fp32 accumulation; bias optional
    c     = softcap · tanh(z / softcap)                        softcap_kind="tanh" (the speedrun's)
          = softcap · z · rsqrt(z² + softcap²)                 softcap_kind="algebraic" (track 3's)
          = z                                                  softcap=None
    lse_i = log Σ_j exp(c_ij)
    loss_i = lse_i - c_i,t(i) + z_loss · lse_i²                 0 for rows with t(i) == ignore_index
    loss  = Σ_i loss_i / #non-ignored  (mean) | Σ_i loss_i (sum) | loss_i (none, no gradient: see below)

Gradient, with g = grad_output · (1/#non-ignored for mean, 1 for sum) and g = 0 on ignored rows:

    dc_ij = g · (softmax(c_i)_j · (1 + 2·z_loss·lse_i) - [j == t(i)])
    dz_ij = dc_ij · cap'(z_ij), from the stored c with r = c / softcap:
            tanh:      1 - r²          (exactly 0 where |c| = softcap)
            algebraic: (1 - r²)^1.5    (= softcap³ / (z² + softcap²)^1.5)
    grad_hidden = dz @ weight  (N, H)     grad_weight = dzᵀ @ hidden  (V, H)     grad_bias = Σ_i dz_i  (V,)

Shapes and dtypes: hidden (N, H), weight (V, H), bias (V,), one dtype (bf16, fp16 or fp32; under torch.autocast
the entry point casts them to the autocast dtype); targets (N,) int64 or int32; all contiguous. The loss is fp32,
the gradients have the input dtype.

Numerics: 16-bit tensor-core operands with fp32 accumulation (tf32x3 for fp32 inputs on the GPU); logits, lse,
loss and dz in fp32; dz rounded to the operand dtype as a matmul operand (as eager autograd rounds the logits'
gradient); tanh by MUFU on the GPU for 16-bit inputs (rel. error ~2⁻¹¹), a few-ulp form otherwise. Every output
element is written by one program, no atomics: deterministic. NaN and inf propagate where eager's do.

Checked before any launch (errors name the argument): ranks, dtypes, one dtype, shapes, contiguity, device (CUDA,
or the CPU under TRITON_INTERPRET=1), reduction, softcap, softcap_kind, z_loss, ignore_index, buffers; the target
range only with validate_targets=True (one host sync; off, an out-of-range target gives a NaN loss).

The gradients are finished during forward; backward scales the saved ones by grad_output, out of place (a second
backward with retain_graph=True is right). reduction="none" works only without autograd. Custom op:
torch.ops.speedrun.linear_cross_entropy (torch.compile keeps it whole in its graph); no host sync. The chunking,
memory and design: docs/kernels/linear_cross_entropy.md.
"""
from dataclasses import dataclass
from typing import Optional

import torch
import triton

from kernels import registry
from kernels.checks import check_out, check_same_device, check_tensor, check_triton_device, check_workspace
from kernels.custom_ops import absent, autocast_inputs, op_name
from kernels.device import is_interpreter
from kernels.jit.linear_cross_entropy import (
    SOFTCAP_ALGEBRAIC,
    SOFTCAP_NONE,
    SOFTCAP_TANH,
    lce_grad_kernel,
    lce_logits_kernel,
    lce_loss_grad_kernel,
)
from kernels.tiles import NUM_SMS_HINT, Tile, lookup_config, precision_flags

# ---------------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------------

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
TARGET_DTYPES = (torch.int64, torch.int32)
REDUCTIONS = ("mean", "sum", "none")
# softcap_kind -> the kernels' SOFTCAP constexpr (kernels/jit/linear_cross_entropy.py has the formulas).
SOFTCAP_KINDS = {"tanh": SOFTCAP_TANH, "algebraic": SOFTCAP_ALGEBRAIC}

# Upper bound on the (C, V) fp32 logits buffer of one chunk (C = 4096 rows at V = 50304; the trade-off:
# docs/kernels/linear_cross_entropy.md).
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
class LCEConfig:
    """Tiles of the four kernels."""

    logits: Tile  # rows = tokens, columns = vocab (block_n is the width of one log-sum-exp partial), K = hidden
    loss: RowBlocks
    grad_hidden: Tile  # rows = tokens, columns = hidden, K = vocab
    grad_weight: Tile  # rows = vocab, columns = hidden, K = tokens


# Tile families: "b128" (16-bit, the 124M shape), "b64" (16-bit, small problems), "f64" (fp32). Chosen for the
# sm_90 budget (smem <= 227 KB, no spills, HGMMA: `python -m bench.codegen --kernel linear_cross_entropy`), not
# yet tuned on a GPU; why these sizes: docs/kernels/linear_cross_entropy.md.
_FAMILIES = {
    "b128": ((torch.bfloat16, torch.float16), LCEConfig(
        logits=Tile(block_m=128, block_n=128, block_k=64, warps=8, stages=3),
        loss=RowBlocks(block_v=2048, block_t=512, warps=8),
        grad_hidden=Tile(block_m=64, block_n=128, block_k=64, warps=4, stages=4),
        grad_weight=Tile(block_m=128, block_n=128, block_k=32, warps=8, stages=3))),
    "b64": ((torch.bfloat16, torch.float16), LCEConfig(
        logits=Tile(block_m=64, block_n=64, block_k=64, warps=4, stages=3),
        loss=RowBlocks(block_v=1024, block_t=256, warps=4),
        grad_hidden=Tile(block_m=64, block_n=64, block_k=64, warps=4, stages=3),
        grad_weight=Tile(block_m=64, block_n=64, block_k=32, warps=4, stages=3))),
    "f64": ((torch.float32,), LCEConfig(
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
    return "b128" if tiles >= 4 * NUM_SMS_HINT else "b64"


def pick_chunk_rows(N: int, V: int, block_m: int, budget_bytes: int = LOGITS_BUDGET_BYTES) -> int:
    """Rows per chunk: the fewest chunks whose (C, V) fp32 buffer fits the budget, C a multiple of block_m,
    split evenly (N = 8192, V = 50304: two chunks of 4096 rather than 5248 + 2944)."""
    max_rows = max(block_m, budget_bytes // (4 * V) // block_m * block_m)
    chunks = triton.cdiv(N, max_rows)
    return min(max_rows, triton.cdiv(triton.cdiv(N, chunks), block_m) * block_m)


def _resolve_config(name, N, V, dtype) -> tuple[str, LCEConfig]:
    name = pick_config(N, V, dtype) if name is None else name
    return name, lookup_config(CONFIGS, name, dtype, "linear-cross-entropy")


# ---------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------


@dataclass
class LCEWorkspace:
    """Work buffers of one call, all fp32, reusable across calls of the same shape (tests fill them with NaN)."""

    config: str
    logits: torch.Tensor  # (C, V) chunk buffer: capped logits, then dz
    pmax: torch.Tensor  # (C, cdiv(V, logits.block_n)) log-sum-exp partials: per-tile row max
    psum: torch.Tensor  # (C, cdiv(V, logits.block_n)) log-sum-exp partials: per-tile Σexp(c - max)
    # (V, H) grad_weight running sum, or None when it is not needed (fp32 inputs accumulate in grad_weight itself;
    # a single chunk stores the result directly)
    gw_acc: torch.Tensor | None


def _workspace_shapes(C, N, V, H, dtype, cfg: LCEConfig, grad_weight: bool) -> dict:
    T = triton.cdiv(V, cfg.logits.block_n)
    shapes = {"logits": (C, V), "pmax": (C, T), "psum": (C, T)}
    if grad_weight and dtype != torch.float32 and C < N:
        shapes["gw_acc"] = (V, H)
    return shapes


def lce_workspace(N: int, V: int, H: int, dtype: torch.dtype, device, *, config: str | None = None,
                   chunk_rows: int | None = None, grad_weight: bool = True) -> LCEWorkspace:
    """Allocate the buffers for hidden (N, H), weight (V, H) of `dtype`; chunk_rows defaults to
    pick_chunk_rows (LOGITS_BUDGET_BYTES), config to pick_config."""
    name, cfg = _resolve_config(config, N, V, dtype)
    if chunk_rows is None:
        chunk_rows = pick_chunk_rows(N, V, cfg.logits.block_m)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    shapes = _workspace_shapes(min(chunk_rows, N), N, V, H, dtype, cfg, grad_weight)
    buffers = {k: torch.empty(shape, dtype=torch.float32, device=device) for k, shape in shapes.items()}
    return LCEWorkspace(config=name, gw_acc=buffers.pop("gw_acc", None), **buffers)


def check_inputs(hidden, weight, targets, *, bias=None, softcap, softcap_kind="tanh", ignore_index, reduction,
                 z_loss, validate_targets=False, device_rule="triton"):
    """Validate shapes, dtypes, devices, contiguity and hyper-parameters; returns (N, H, V). validate_targets: also
    raise if a target outside [0, V) is not ignore_index (an opt-in: one pass over the targets and a device->host
    sync, a graph break under torch.compile). device_rule "triton": where the Triton kernels run
    (kernels.checks.check_triton_device); "same": any device, one for all."""
    check_tensor(hidden, "hidden", ndim=2, dtypes=SUPPORTED_DTYPES, contiguous=True)
    check_tensor(weight, "weight", ndim=2, dtypes=SUPPORTED_DTYPES, contiguous=True)
    check_tensor(targets, "targets", ndim=1, dtypes=TARGET_DTYPES, contiguous=True)
    N, H = hidden.shape
    V, Hw = weight.shape
    if Hw != H:
        raise ValueError(f"hidden (N={N}, H={H}) and weight (V={V}, H={Hw}) disagree on the hidden dim H")
    if targets.shape[0] != N:
        raise ValueError(f"targets has {targets.shape[0]} entries but hidden has N={N} rows")
    tensors = [(hidden, "hidden"), (weight, "weight"), (targets, "targets")]
    if bias is not None:
        check_tensor(bias, "bias", ndim=1, dtypes=SUPPORTED_DTYPES, contiguous=True)
        if bias.shape[0] != V:
            raise ValueError(f"bias has {bias.shape[0]} entries but weight (V={V}, H={H}) has V={V} rows")
        tensors.append((bias, "bias"))
    for t, name in ((weight, "weight"), (bias, "bias")):
        if t is not None and t.dtype != hidden.dtype:
            raise TypeError(f"hidden ({hidden.dtype}) and {name} ({t.dtype}) must share one dtype; cast first")
    (check_triton_device if device_rule == "triton" else check_same_device)(*tensors)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if softcap is not None and not (float(softcap) > 0 and float(softcap) != float("inf")):
        raise ValueError(f"softcap must be a positive finite float or None, got {softcap!r}")
    if softcap_kind not in SOFTCAP_KINDS:
        raise ValueError(f"softcap_kind must be one of {tuple(SOFTCAP_KINDS)}, got {softcap_kind!r}")
    if not float(z_loss) == float(z_loss) or abs(float(z_loss)) == float("inf"):
        raise ValueError(f"z_loss must be finite, got {z_loss!r}")
    if not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    if validate_targets:  # one pass over N targets, a device->host sync (the bool()), a graph break under compile
        bad = ((targets < 0) | (targets >= V)) & (targets != ignore_index)
        if bool(bad.any()):
            first = int(bad.nonzero()[0, 0])
            raise ValueError(f"targets[{first}] = {int(targets[first])} is outside [0, V={V}) and is not "
                             f"ignore_index={ignore_index}")
    return N, H, V


def _launch_grad(dz, b, acc, out, tile: Tile, *, dz_t: bool, accumulate: bool, flags: dict):
    """out (+)= dz·b, or dzᵀ·b when dz_t (the grad_weight form); acc is the running sum read when accumulating."""
    M, N = out.shape
    lce_grad_kernel[(triton.cdiv(M, tile.block_m) * triton.cdiv(N, tile.block_n),)](
        dz_ptr=dz, b_ptr=b, acc_ptr=acc, c_ptr=out,
        M=M, N=N, K=b.shape[0],
        stride_zm=dz.stride(0), stride_bk=b.stride(0), stride_am=acc.stride(0), stride_cm=out.stride(0),
        **tile.meta(), DZ_T=dz_t, ACCUMULATE=accumulate, **flags, **tile.launch(),
    )


def linear_cross_entropy_fwd(hidden, weight, targets, *, bias=None, softcap=None, softcap_kind="tanh",
                                   ignore_index=-100, reduction="mean", z_loss=0.0, compute_grad_hidden=True,
                                   compute_grad_weight=True, compute_grad_bias=True, grad_hidden=None,
                                   grad_weight=None, grad_bias=None, loss_rows=None, workspace=None, config=None,
                                   chunk_rows=None, validate_targets=False):
    """Loss and, during the same pass, the gradients for grad_output = 1: returns
    (loss, grad_hidden, grad_weight, grad_bias).

    loss: 0-dim fp32 (mean/sum) or (N,) fp32 (none). grad_hidden (N, H) / grad_weight (V, H) / grad_bias (V,) in
    the input dtype, None when not requested (grad_bias: also without a bias; reduction="none" computes no
    gradient). `grad_hidden`, `grad_weight`, `grad_bias`, `loss_rows` ((N,) fp32 per-token losses) are optional
    output buffers, every element of which is written; `workspace` (lce_workspace) avoids allocating the chunk
    buffers and fixes the tile family and chunk height (then `config` and `chunk_rows` are not used); otherwise
    `config` forces a tile family of CONFIGS and `chunk_rows` the chunk height. validate_targets: see
    check_inputs (off by default). No autograd (see linear_cross_entropy).
    """
    # 1. check
    N, H, V = check_inputs(hidden, weight, targets, bias=bias, softcap=softcap, softcap_kind=softcap_kind,
                           ignore_index=ignore_index, reduction=reduction, z_loss=z_loss,
                           validate_targets=validate_targets)
    device, dtype = hidden.device, hidden.dtype
    compute_grad_bias = compute_grad_bias and bias is not None
    if reduction == "none":
        compute_grad_hidden = compute_grad_weight = compute_grad_bias = False
    compute_grad = compute_grad_hidden or compute_grad_weight or compute_grad_bias

    # 2. allocate
    ws = workspace if workspace is not None else lce_workspace(N, V, H, dtype, device, config=config,
                                                                 chunk_rows=chunk_rows, grad_weight=compute_grad_weight)
    _, cfg = _resolve_config(ws.config, N, V, dtype)
    C = max(1, ws.logits.shape[0]) if ws.logits.ndim == 2 else 1
    check_workspace(ws, _workspace_shapes(C, N, V, H, dtype, cfg, compute_grad_weight), dtype=torch.float32,
                            device=device, builder="lce_workspace")
    loss_rows = check_out(loss_rows, "loss_rows", (N,), dtype=torch.float32, device=device)
    grad_hidden, grad_weight, grad_bias = (
        check_out(buf, name, shape, dtype=dtype, device=device) if need else None
        for buf, name, shape, need in ((grad_hidden, "grad_hidden", (N, H), compute_grad_hidden),
                                       (grad_weight, "grad_weight", (V, H), compute_grad_weight),
                                       (grad_bias, "grad_bias", (V,), compute_grad_bias)))
    # grad_bias sums dz over every token: a (V,) fp32 running sum across chunks (small: 4·V bytes).
    bias_sum = torch.zeros(V, dtype=torch.float32, device=device) if compute_grad_bias else None

    # The mean's denominator stays on the device (no sync): scale = 1 / max(#non-ignored, 1).
    count = (targets != ignore_index).sum().clamp(min=1).to(torch.float32)
    scale = (1.0 / count).reshape(1) if reduction == "mean" else torch.ones(1, dtype=torch.float32, device=device)

    interp = is_interpreter()
    flags = precision_flags(dtype, interpreter=interp)
    cap = SOFTCAP_NONE if softcap is None else SOFTCAP_KINDS[softcap_kind]
    s = 1.0 if softcap is None else float(softcap)

    # 3. launch, chunk by chunk
    for r0 in range(0, N, C):
        r1 = min(r0 + C, N)
        M = r1 - r0
        h, z = hidden[r0:r1], ws.logits[:M]
        lg = cfg.logits
        lce_logits_kernel[(triton.cdiv(M, lg.block_m) * triton.cdiv(V, lg.block_n),)](
            h_ptr=h, w_ptr=weight, b_ptr=weight if bias is None else bias, z_ptr=z, pmax_ptr=ws.pmax,
            psum_ptr=ws.psum,
            M=M, V=V, K=H,
            stride_hm=h.stride(0), stride_wv=weight.stride(0), stride_zm=z.stride(0), stride_pm=ws.pmax.stride(0),
            softcap=s, inv_softcap=1.0 / s,
            **lg.meta(), HAS_BIAS=bias is not None, SOFTCAP=cap, FAST_TANH=(dtype != torch.float32 and not interp),
            UPCAST=flags["UPCAST"], TF32X3=flags["TF32X3"], **lg.launch(),
        )
        lce_loss_grad_kernel[(M,)](
            z_ptr=z, pmax_ptr=ws.pmax, psum_ptr=ws.psum, tgt_ptr=targets[r0:r1], scale_ptr=scale,
            loss_ptr=loss_rows[r0:r1],
            V=V, T=ws.pmax.shape[1],
            stride_zm=z.stride(0), stride_pm=ws.pmax.stride(0),
            ignore_index=ignore_index, softcap=s, inv_softcap=1.0 / s, z_loss=float(z_loss),
            BLOCK_V=cfg.loss.block_v, BLOCK_T=cfg.loss.block_t, SOFTCAP=cap, COMPUTE_GRAD=compute_grad,
            num_warps=cfg.loss.warps,
        )
        if compute_grad_hidden:
            gh = grad_hidden[r0:r1]
            _launch_grad(z, weight, gh, gh, cfg.grad_hidden, dz_t=False, accumulate=False, flags=flags)
        if compute_grad_weight:
            # fp32: accumulate in grad_weight itself; 16-bit: in the fp32 buffer, the last chunk stores dtype.
            running = grad_weight if ws.gw_acc is None else ws.gw_acc
            out = grad_weight if r1 == N else running
            _launch_grad(z, h, running, out, cfg.grad_weight, dz_t=True, accumulate=r0 > 0, flags=flags)
        if compute_grad_bias:
            bias_sum += z.sum(dim=0)  # column sums of the chunk's dz, fp32 (one more read of the chunk buffer)

    # 4. reduce the per-token losses (no sync)
    if compute_grad_bias:
        grad_bias.copy_(bias_sum)
    loss = loss_rows if reduction == "none" else loss_rows.sum()
    if reduction == "mean":
        loss = loss / count
    return loss, grad_hidden, grad_weight, grad_bias


# ---------------------------------------------------------------------------------------------------
# Custom op (torch.ops.speedrun.linear_cross_entropy), autograd and the public API
# ---------------------------------------------------------------------------------------------------


@torch.library.custom_op(op_name("linear_cross_entropy"), mutates_args=())
def _lce_op(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, bias: Optional[torch.Tensor],
             softcap: Optional[float], softcap_kind: str, ignore_index: int, reduction: str, z_loss: float,
             grad_hidden: bool, grad_weight: bool, grad_bias: bool, config: Optional[str],
             chunk_rows: Optional[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, grad_hidden, grad_weight, grad_bias) of linear_cross_entropy_fwd for grad_output = 1; each
    gradient not requested is an empty tensor (kernels.absent)."""
    outs = linear_cross_entropy_fwd(
        hidden, weight, targets, bias=bias, softcap=softcap, softcap_kind=softcap_kind, ignore_index=ignore_index,
        reduction=reduction, z_loss=z_loss, compute_grad_hidden=grad_hidden, compute_grad_weight=grad_weight,
        compute_grad_bias=grad_bias, config=config, chunk_rows=chunk_rows)
    return tuple(absent(hidden) if t is None else t for t in outs)


@_lce_op.register_fake
def _(hidden, weight, targets, bias, softcap, softcap_kind, ignore_index, reduction, z_loss, grad_hidden,
      grad_weight, grad_bias, config, chunk_rows):
    (N, H), V = hidden.shape, weight.shape[0]
    loss = hidden.new_empty((N,) if reduction == "none" else (), dtype=torch.float32)
    needs = (grad_hidden, grad_weight, grad_bias and bias is not None)
    return (loss, *(hidden.new_empty(shape) if reduction != "none" and need else absent(hidden)
                    for shape, need in zip(((N, H), (V, H), (V,)), needs)))


def _setup_context(ctx, inputs, output):
    """Save the gradients computed in forward (the only thing the backward needs); they are not differentiable."""
    _, grad_hidden, grad_weight, grad_bias = output
    ctx.mark_non_differentiable(grad_hidden, grad_weight, grad_bias)
    ctx.set_materialize_grads(False)  # no zero-filled gradient for the outputs that have none (memory)
    ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
    ctx.needs = inputs[9:12]  # the op's grad_hidden, grad_weight, grad_bias flags


def _backward(ctx, grad_output, *_):
    # Out of place, so a second backward (retain_graph=True) scales the saved gradients again correctly.
    needs = ctx.needs if grad_output is not None else (False,) * 3  # None: the loss did not reach the output
    g = None if grad_output is None else grad_output.to(torch.float32)
    grad_hidden, grad_weight, grad_bias = ((t * g).to(t.dtype) if need else None
                                           for t, need in zip(ctx.saved_tensors, needs))
    return (
        grad_hidden,  # hidden
        grad_weight,  # weight
        None,  # targets: integer, no gradient
        grad_bias,  # bias
        None, None, None, None, None,  # softcap, softcap_kind, ignore_index, reduction, z_loss: hyper-parameters
        None, None, None,  # grad_hidden, grad_weight, grad_bias: flags
        None, None,  # config, chunk_rows: launcher settings
    )


_lce_op.register_autograd(_backward, setup_context=_setup_context)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                               bias: torch.Tensor | None = None, softcap: float | None = None,
                               softcap_kind: str = "tanh", ignore_index: int = -100, reduction: str = "mean",
                               z_loss: float = 0.0, validate_targets: bool = False, config: str | None = None,
                               chunk_rows: int | None = None) -> torch.Tensor:
    """Cross-entropy of cap(hidden @ weightᵀ + bias) against targets without materialising the (N, V) logits.

    Same contract as kernels.reference.linear_cross_entropy (hidden (N, H), weight (V, H), bias (V,) or None,
    targets (N,); softcap_kind "tanh" or "algebraic"), differentiable in hidden, weight and bias. Under
    torch.autocast, hidden, weight and bias are cast to the autocast dtype here (as F.linear would); the loss is
    fp32. reduction="none" works only without autograd (see the module doc). No host sync: validate_targets=True
    adds the target range check and its device->host sync (off: a bad target gives a NaN loss). config /
    chunk_rows override pick_config / pick_chunk_rows (tile family; rows per chunk). Runs as the custom op
    torch.ops.speedrun.linear_cross_entropy: torch.compile keeps it whole in its graph.
    """
    hidden, weight, bias = autocast_inputs(hidden, weight, bias)
    check_inputs(hidden, weight, targets, bias=bias, softcap=softcap, softcap_kind=softcap_kind,
                 ignore_index=ignore_index, reduction=reduction, z_loss=z_loss, validate_targets=validate_targets)
    needs = tuple(torch.is_grad_enabled() and t is not None and t.requires_grad for t in (hidden, weight, bias))
    if reduction == "none" and any(needs):
        raise NotImplementedError(
            "linear_cross_entropy (triton) computes gradients during forward, summed over tokens, so it cannot apply "
            "a per-token grad_output: reduction='none' is supported only without autograd (torch.no_grad() or "
            "inputs that do not require grad). Use reduction='sum'/'mean', or impl 'eager'.")
    return torch.ops.speedrun.linear_cross_entropy(
        hidden, weight, targets, bias, None if softcap is None else float(softcap), softcap_kind, ignore_index,
        reduction, float(z_loss), *needs, config, chunk_rows)[0]


registry.register("linear_cross_entropy", "triton", linear_cross_entropy)
