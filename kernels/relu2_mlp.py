"""relu2_mlp in Triton: a matmul whose epilogue applies relu(·)² (forward) or its derivative (backward).

Op (the speedrun's MLP; kernels.reference.relu2_mlp is the test oracle and the eager peer); the biases are
optional (the track-3 MLP has both):

    h = x w_fcᵀ + b_fc       (N, F)   pre-activation, never stored
    a = relu(h)²             (N, F)   Triton, EPILOGUE_RELU2 (+ b_fc in fp32 in the same epilogue): written once,
                                      saved for backward
    y = a w_projᵀ + b_proj   (N, H)   torch.matmul / torch.addmm

    dA = dy w_proj           (N, F)
    dH = dA · 2·relu(h)      (N, F)   Triton, EPILOGUE_DRELU2, with relu(h) = sqrt(a)
    dx = dH w_fc             (N, H)   torch.matmul
    dW_fc = dHᵀ x            (F, H)   torch.matmul
    dW_proj = dyᵀ a          (H, F)   torch.matmul
    db_fc = Σ_rows dH        (F,)     torch.sum (column sums; one more read of dH)
    db_proj = Σ_rows dy      (H,)     torch.sum

Shapes and dtypes: x (N, H), w_fc (F, H), w_proj (H, F), b_fc (F,), b_proj (H,), all one dtype (bf16, fp16 or
fp32; under torch.autocast the entry point casts them to the autocast dtype), all contiguous; y (N, H).
Numerics: fp32 accumulation (tf32x3 for fp32 inputs on the GPU), fp32 epilogue, one rounding at each store;
sqrt(a) carries half the relative error of rounding h itself, so dH is at least as accurate as the eager peer's.
NaN and inf land where eager's do. Saved for backward: only `a` (plus the inputs a requested gradient needs).

Checked before any launch (errors name the argument): ranks, dtypes, one dtype, shapes, contiguity, device (CUDA,
or the CPU under TRITON_INTERPRET=1), output buffers, config names.

Custom ops: torch.ops.speedrun.relu2_mlp ((y, a) = relu2_mlp_fwd) with an autograd formula that calls
torch.ops.speedrun.relu2_mlp_backward (relu2_mlp_bwd); torch.compile keeps both whole in its graph. Configs:
CONFIGS is the autotune space on the GPU (pruned per dtype and size by prune_configs; `config=` forces one); under
the interpreter one pinned small tile runs. Which matmuls are Triton, what is saved and why, the configs' origin:
docs/kernels/relu2_mlp.md.
"""

import functools
from typing import Optional

import torch
import triton

from kernels import registry
from kernels.checks import check_out, check_tensor, check_triton_device, same_dtype
from kernels.custom_ops import absent, autocast_inputs, op_name
from kernels.device import is_interpreter
from kernels.jit.relu2_mlp import EPILOGUE_DRELU2, EPILOGUE_RELU2, relu2_mm_kernel
from kernels.tiles import SM90_SHARED_BYTES, Tile, precision_flags

# ---------------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------------

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

# The prune filter keeps the pipelined operand tiles 8 KB below the sm_90 shared-memory limit, for what
# Triton adds (barriers, the epilogue's layout conversion).
_SMEM_BUDGET = SM90_SHARED_BYTES - 8 * 1024

# A K-chunk row of 128 bytes (64 bf16/fp16 or 32 fp32 elements) is the widest shared-memory swizzle the
# Hopper wgmma operand layout uses; the prune filter keeps configs whose BLOCK_K matches it for the dtype.
_K_ROW_BYTES = 128

# Tile-rows per swizzle group on the GPU (L2 reuse; Triton tutorial 03's GROUP_SIZE_M).
GROUP_M = 8


# ---------------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------------

# The autotune space: sizes follow the sm_90 budget (128-byte K rows, 64-128-row tiles per warpgroup, 3-4
# stages), not yet tuned on a GPU; where each entry comes from and what was left out: docs/kernels/relu2_mlp.md.
# Every entry is compiled for every dtype and epilogue by `python -m bench.codegen`.
CONFIGS = [
    # bf16 / fp16 (BLOCK_K 64)
    Tile(block_m=128, block_n=256, block_k=64, warps=8, stages=4),
    Tile(block_m=128, block_n=256, block_k=64, warps=8, stages=3),
    Tile(block_m=128, block_n=128, block_k=64, warps=8, stages=4),
    Tile(block_m=64, block_n=128, block_k=64, warps=4, stages=4),
    # fp32 (BLOCK_K 32; tf32x3 tensor-core products)
    Tile(block_m=128, block_n=128, block_k=32, warps=8, stages=3),
]

# Under the interpreter: one small tile and 2-row groups, so that the odd test shapes span several tiles and
# GROUP_M groups (a ragged last group included) and every program stays cheap on the CPU.
INTERPRETER_CONFIG = Tile(block_m=16, block_n=32, block_k=16, warps=4, stages=1)
INTERPRETER_GROUP_M = 2


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def usable_configs(dtype: torch.dtype, M: int = 1 << 30, N: int = 1 << 30) -> list[Tile]:
    """CONFIGS a launch with `dtype` inputs and an M×N output may pick (both epilogues compile spill-free with
    every one): K rows of 128 bytes, pipelined tiles within the shared-memory budget, and tiles no larger than
    the problem (rounded up to a power of two, at least 64); when no tile is that small, the smallest tiles."""
    itemsize = dtype.itemsize
    fits = [c for c in CONFIGS if c.block_k * itemsize == _K_ROW_BYTES and c.smem_bytes(itemsize) <= _SMEM_BUDGET]
    small = [c for c in fits if c.block_m <= max(64, _next_pow2(M)) and c.block_n <= max(64, _next_pow2(N))]
    if small:
        return small
    least = min(c.block_m * c.block_n for c in fits)
    return [c for c in fits if c.block_m * c.block_n == least]


def _autotune_key(meta: dict, num_warps: int, num_stages: int) -> tuple:
    return tuple(sorted(meta.items())), num_warps, num_stages


def prune_configs(configs, named_args, **kwargs):
    """triton.autotune early_config_prune: keep the triton.Configs that usable_configs() allows.

    The launcher passes every argument by keyword, so they arrive in kwargs (named_args holds positionals).
    """
    args = {**named_args, **kwargs}
    allowed = {_autotune_key(c.meta(), c.warps, c.stages)
               for c in usable_configs(args["a_ptr"].dtype, args["M"], args["N"])}
    kept = [c for c in configs if _autotune_key(c.kwargs, c.num_warps, c.num_stages) in allowed]
    return kept or list(configs)[:1]


@functools.cache
def _autotuned_kernel(do_bench=None):
    """relu2_mm_kernel under triton.autotune over CONFIGS, built on first GPU use (nothing at import).

    The key has the problem size and the epilogue; Triton adds the tensors' dtypes itself. `do_bench`
    replaces Triton's CUDA timer (the tests pass a CPU one to run this path under the interpreter)."""
    extra = {} if do_bench is None else {"do_bench": do_bench}
    configs = [triton.Config(c.meta(), **c.launch()) for c in CONFIGS]
    return triton.autotune(configs=configs, key=["M", "N", "K", "EPILOGUE", "HAS_BIAS"],
                           prune_configs_by={"early_config_prune": prune_configs}, **extra)(relu2_mm_kernel)


# ---------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------


def _find_config(name: str) -> Tile:
    for c in CONFIGS + [INTERPRETER_CONFIG]:
        if c.name == name:
            return c
    raise ValueError(f"unknown relu2_mlp config {name!r}; configs: {[c.name for c in CONFIGS]} "
                     f"(interpreter: {INTERPRETER_CONFIG.name!r})")


def _launch(A, B_kn, aux, C, *, epilogue: int, config: str | None, bias=None):
    """C = epilogue(A·B [+ bias]); B_kn is a (K, N) view (any strides). Picks the config, builds the grid,
    launches."""
    M, K = A.shape
    N = B_kn.shape[1]
    interp = is_interpreter()
    args = dict(
        a_ptr=A, b_ptr=B_kn, aux_ptr=aux, bias_ptr=C if bias is None else bias, c_ptr=C,  # unused pointers: any
        M=M, N=N, K=K,
        stride_am=A.stride(0), stride_ak=A.stride(1), stride_bk=B_kn.stride(0), stride_bn=B_kn.stride(1),
        stride_xm=aux.stride(0), stride_xn=aux.stride(1), stride_cm=C.stride(0), stride_cn=C.stride(1),
        EPILOGUE=epilogue, HAS_BIAS=bias is not None, **precision_flags(A.dtype, interpreter=interp),
    )
    if config is None and not interp:
        def grid(meta):
            return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

        _autotuned_kernel()[grid](**args, GROUP_M=GROUP_M)
        return C
    tile = INTERPRETER_CONFIG if config is None else _find_config(config)
    usable = usable_configs(A.dtype)
    if tile != INTERPRETER_CONFIG and tile not in usable:
        raise ValueError(f"relu2_mlp config {tile.name!r} is not for {A.dtype} (its K row is not 128 bytes or its "
                         f"tiles exceed shared memory); for {A.dtype}: {[c.name for c in usable]}")
    grid = (triton.cdiv(M, tile.block_m) * triton.cdiv(N, tile.block_n),)
    group_m = INTERPRETER_GROUP_M if tile == INTERPRETER_CONFIG else GROUP_M
    relu2_mm_kernel[grid](**args, **tile.meta(), GROUP_M=group_m, **tile.launch())
    return C


def _check_vector(b, name: str, size: int, like: torch.Tensor, what: str):
    check_tensor(b, name, ndim=1, dtypes=(like.dtype,), contiguous=True)
    check_triton_device((like, "x"), (b, name))
    if b.shape[0] != size:
        raise ValueError(f"{name} must have {size} entries ({what}), got {b.shape[0]}")


def _check_inputs(x, w_fc, w_proj, b_fc=None, b_proj=None):
    """(N, H, F) after checking dims, dtypes, one dtype, one device, contiguity and matching dims."""
    check_tensor(x, "x", ndim=2, dtypes=SUPPORTED_DTYPES, contiguous=True)
    check_tensor(w_fc, "w_fc", ndim=2, dtypes=SUPPORTED_DTYPES, contiguous=True)
    if w_proj is not None:
        check_tensor(w_proj, "w_proj", ndim=2, dtypes=SUPPORTED_DTYPES, contiguous=True)
    pairs = [(x, "x"), (w_fc, "w_fc")] + ([(w_proj, "w_proj")] if w_proj is not None else [])
    same_dtype(*pairs)
    check_triton_device(*pairs)
    (N, H), F = x.shape, w_fc.shape[0]
    if w_fc.shape[1] != H:
        raise ValueError(f"w_fc (F, H) = {tuple(w_fc.shape)} must have H = {H} columns, as x (N, H) = {tuple(x.shape)}")
    if w_proj is not None and tuple(w_proj.shape) != (H, F):
        raise ValueError(f"w_proj must be (H, F) = ({H}, {F}) from x (N, H) = {tuple(x.shape)} and w_fc (F, H) = "
                         f"{tuple(w_fc.shape)}, got {tuple(w_proj.shape)}")
    if b_fc is not None:
        _check_vector(b_fc, "b_fc", F, x, "F, the rows of w_fc")
    if b_proj is not None:
        _check_vector(b_proj, "b_proj", H, x, "H, the rows of w_proj")
    return N, H, F


def _out(out, name, shape, like):
    return check_out(out, name, shape, dtype=like.dtype, device=like.device)


def relu2_fc_fwd(x: torch.Tensor, w_fc: torch.Tensor, b_fc: torch.Tensor | None = None, *,
                 out: torch.Tensor | None = None, config: str | None = None) -> torch.Tensor:
    """a = relu(x w_fcᵀ + b_fc)²: x (N, H), w_fc (F, H), b_fc (F,) or None -> (N, F), one Triton launch (the bias
    is added in the epilogue, in fp32, before relu²). Returns `out` when given.

    `config` forces one Tile of CONFIGS by name (bypasses autotuning; default: autotune on the GPU, the pinned
    INTERPRETER_CONFIG under the interpreter).
    """
    N, H, F = _check_inputs(x, w_fc, None, b_fc)
    out = _out(out, "out", (N, F), x)
    return _launch(x, w_fc.t(), out, out, epilogue=EPILOGUE_RELU2, config=config, bias=b_fc)  # aux unused: any


def relu2_fc_bwd(dy: torch.Tensor, w_proj: torch.Tensor, a: torch.Tensor, *, out: torch.Tensor | None = None,
                 config: str | None = None) -> torch.Tensor:
    """dH = (dy w_proj) · 2·sqrt(a): dy (N, H), w_proj (H, F), a (N, F) = relu(h)² -> (N, F), one Triton launch.

    This is dL/dh for h the pre-activation of a = relu(h)² (with or without the bias: a includes it). `out`
    must not overlap dy, w_proj or a (the autotuner runs the kernel several times on the same buffers).
    """
    check_tensor(dy, "dy", ndim=2, dtypes=SUPPORTED_DTYPES, contiguous=True)
    check_tensor(w_proj, "w_proj", ndim=2, dtypes=SUPPORTED_DTYPES, contiguous=True)
    check_tensor(a, "a", ndim=2, dtypes=SUPPORTED_DTYPES, contiguous=True)
    same_dtype((dy, "dy"), (w_proj, "w_proj"), (a, "a"))
    check_triton_device((dy, "dy"), (w_proj, "w_proj"), (a, "a"))
    (N, H), F = dy.shape, w_proj.shape[1]
    if w_proj.shape[0] != H:
        raise ValueError(f"w_proj (H, F) = {tuple(w_proj.shape)} must have H = {H} rows, as dy (N, H) = "
                         f"{tuple(dy.shape)}")
    if tuple(a.shape) != (N, F):
        raise ValueError(f"a must be (N, F) = ({N}, {F}) from dy (N, H) and w_proj (H, F), got {tuple(a.shape)}")
    out = _out(out, "out", (N, F), dy)
    return _launch(dy, w_proj, a, out, epilogue=EPILOGUE_DRELU2, config=config)


def relu2_mlp_fwd(x: torch.Tensor, w_fc: torch.Tensor, w_proj: torch.Tensor, b_fc: torch.Tensor | None = None,
                  b_proj: torch.Tensor | None = None, *, out: torch.Tensor | None = None,
                  act_out: torch.Tensor | None = None, config: str | None = None):
    """(y, a): a = relu(x w_fcᵀ + b_fc)² (N, F) by the Triton kernel, y = a w_projᵀ + b_proj (N, H) by
    torch.matmul / torch.addmm (the biases are optional).

    `out` / `act_out` receive y / a when given. `a` is what the backward needs (relu2_mlp_bwd).
    """
    N, H, F = _check_inputs(x, w_fc, w_proj, b_fc, b_proj)
    out = _out(out, "out", (N, H), x)
    a = relu2_fc_fwd(x, w_fc, b_fc, out=act_out, config=config)  # (N, F)
    if b_proj is None:
        torch.matmul(a, w_proj.t(), out=out)  # (N, H)
    else:
        torch.addmm(b_proj, a, w_proj.t(), out=out)  # (N, H)
    return out, a


def relu2_mlp_bwd(dy: torch.Tensor, x: torch.Tensor | None, w_fc: torch.Tensor | None, w_proj: torch.Tensor | None,
                  a: torch.Tensor | None, *, need_dx: bool = True, need_dw_fc: bool = True, need_dw_proj: bool = True,
                  need_db_fc: bool = False, need_db_proj: bool = False, dx: torch.Tensor | None = None,
                  dw_fc: torch.Tensor | None = None, dw_proj: torch.Tensor | None = None,
                  db_fc: torch.Tensor | None = None, db_proj: torch.Tensor | None = None,
                  dh: torch.Tensor | None = None, config: str | None = None):
    """(dx, dW_fc, dW_proj, db_fc, db_proj), each None unless needed. dH (the Triton launch) is computed when dx,
    dW_fc or db_fc is.

    dy (N, H); x (N, H) is needed for dW_fc only, w_fc (F, H) for dx only, w_proj (H, F) for any of dx, dW_fc,
    db_fc (pass None otherwise); a (N, F) from relu2_mlp_fwd (None when only db_proj is needed). db_fc = Σ_rows dH
    and db_proj = Σ_rows dy (torch column sums, fp32 accumulation). dx / dw_fc / dw_proj / db_fc / db_proj / dh are
    optional output buffers (dh: the (N, F) work buffer of dL/dh).
    """
    check_tensor(dy, "dy", ndim=2, dtypes=SUPPORTED_DTYPES, contiguous=True)
    N, H = dy.shape
    if a is None and (need_dx or need_dw_fc or need_dw_proj or need_db_fc):
        raise ValueError("a (the forward's relu(h)²) is needed for every gradient but db_proj")
    F = None if a is None else a.shape[1]
    for t, name in ((x, "x"), (w_fc, "w_fc")):
        if t is not None:
            check_tensor(t, name, ndim=2, dtypes=(dy.dtype,), contiguous=True)
            check_triton_device((dy, "dy"), (t, name))
    if x is not None and tuple(x.shape) != (N, H):
        raise ValueError(f"x must be (N, H) = ({N}, {H}) as dy, got {tuple(x.shape)}")
    if w_fc is not None and a is not None and tuple(w_fc.shape) != (F, H):
        raise ValueError(f"w_fc must be (F, H) = ({F}, {H}) from a (N, F) and dy (N, H), got {tuple(w_fc.shape)}")
    if need_dx and w_fc is None:
        raise ValueError("need_dx needs w_fc")
    if need_dw_fc and x is None:
        raise ValueError("need_dw_fc needs x")
    grad_x = grad_fc = grad_proj = grad_bfc = grad_bproj = None
    if need_dx or need_dw_fc or need_db_fc:
        dh = relu2_fc_bwd(dy, w_proj, a, out=dh, config=config)  # (N, F), checks w_proj and a
        if need_dx:
            grad_x = torch.matmul(dh, w_fc, out=_out(dx, "dx", (N, H), dy))  # (N, H)
        if need_dw_fc:
            grad_fc = torch.matmul(dh.t(), x, out=_out(dw_fc, "dw_fc", (F, H), dy))  # (F, H)
        if need_db_fc:
            grad_bfc = torch.sum(dh, dim=0, out=_out(db_fc, "db_fc", (F,), dy))  # (F,)
    if need_dw_proj:
        check_tensor(a, "a", ndim=2, dtypes=(dy.dtype,), contiguous=True)
        if tuple(a.shape) != (N, F):
            raise ValueError(f"a must be (N, F) with N = {N} as dy, got {tuple(a.shape)}")
        grad_proj = torch.matmul(dy.t(), a, out=_out(dw_proj, "dw_proj", (H, F), dy))  # (H, F)
    if need_db_proj:
        grad_bproj = torch.sum(dy, dim=0, out=_out(db_proj, "db_proj", (H,), dy))  # (H,)
    return grad_x, grad_fc, grad_proj, grad_bfc, grad_bproj


# ---------------------------------------------------------------------------------------------------
# Custom ops (torch.ops.speedrun.relu2_mlp / relu2_mlp_backward), autograd and the functional API
# ---------------------------------------------------------------------------------------------------


@torch.library.custom_op(op_name("relu2_mlp"), mutates_args=())
def _relu2_mlp_op(x: torch.Tensor, w_fc: torch.Tensor, w_proj: torch.Tensor, b_fc: Optional[torch.Tensor],
                  b_proj: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, a) of relu2_mlp_fwd; `a` is returned for the backward only."""
    return relu2_mlp_fwd(x, w_fc, w_proj, b_fc, b_proj)


@_relu2_mlp_op.register_fake
def _(x, w_fc, w_proj, b_fc, b_proj):
    N, F = x.shape[0], w_fc.shape[0]
    return x.new_empty(N, w_proj.shape[0]), x.new_empty(N, F)  # y (N, H), a (N, F), contiguous


@torch.library.custom_op(op_name("relu2_mlp_backward"), mutates_args=())
def _relu2_mlp_backward_op(dy: torch.Tensor, x: Optional[torch.Tensor], w_fc: Optional[torch.Tensor],
                           w_proj: Optional[torch.Tensor], a: Optional[torch.Tensor], need_dx: bool, need_dw_fc: bool,
                           need_dw_proj: bool, need_db_fc: bool,
                           need_db_proj: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                        torch.Tensor]:
    """(dx, dW_fc, dW_proj, db_fc, db_proj) of relu2_mlp_bwd, an empty tensor (kernels.custom_ops.absent) for each
    one not needed."""
    grads = relu2_mlp_bwd(dy, x, w_fc, w_proj, a, need_dx=need_dx, need_dw_fc=need_dw_fc, need_dw_proj=need_dw_proj,
                          need_db_fc=need_db_fc, need_db_proj=need_db_proj)
    return tuple(absent(dy) if g is None else g for g in grads)


@_relu2_mlp_backward_op.register_fake
def _(dy, x, w_fc, w_proj, a, need_dx, need_dw_fc, need_dw_proj, need_db_fc, need_db_proj):
    (N, H), F = dy.shape, 0 if a is None else a.shape[1]
    shapes = ((N, H), (F, H), (H, F), (F,), (H,))
    needs = (need_dx, need_dw_fc, need_dw_proj, need_db_fc, need_db_proj)
    return tuple(dy.new_empty(shape) if need else absent(dy) for shape, need in zip(shapes, needs))


def _setup_context(ctx, inputs, output):
    """Save `a` and, only where a requested gradient needs them, the inputs (which are alive anyway)."""
    x, w_fc, w_proj, _, _ = inputs
    _, a = output
    need_x, need_fc, need_proj, need_bfc, _ = ctx.needs_input_grad[:5]  # (torch appends an entry of its own)
    need_dh = need_x or need_fc or need_bfc
    ctx.mark_non_differentiable(a)
    ctx.set_materialize_grads(False)  # no zero-filled gradient for the outputs that have none (memory)
    ctx.save_for_backward(
        x if need_fc else None,  # dW_fc = dHᵀ x
        w_fc if need_x else None,  # dx = dH w_fc
        w_proj if need_dh else None,  # dA = dy w_proj
        a if (need_dh or need_proj) else None,  # dH = dA·2·sqrt(a), dW_proj = dyᵀ a
    )


def _backward(ctx, dy, _da):
    needs = ctx.needs_input_grad[:5]
    if dy is None:  # y did not reach the loss (gradients are not materialised as zeros)
        return (None,) * 5
    x, w_fc, w_proj, a = ctx.saved_tensors
    grads = torch.ops.speedrun.relu2_mlp_backward(dy.contiguous(), x, w_fc, w_proj, a, *needs)
    return tuple(g if need else None for g, need in zip(grads, needs))  # one per input; None where not needed


_relu2_mlp_op.register_autograd(_backward, setup_context=_setup_context)


def relu2_mlp(x: torch.Tensor, w_fc: torch.Tensor, w_proj: torch.Tensor, b_fc: torch.Tensor | None = None,
              b_proj: torch.Tensor | None = None) -> torch.Tensor:
    """relu(x w_fcᵀ + b_fc)² w_projᵀ + b_proj: x (N, H), w_fc (F, H), w_proj (H, F), b_fc (F,), b_proj (H,) (the
    biases optional) -> (N, H), differentiable in every tensor.

    Same semantics as kernels.reference.relu2_mlp; one dtype (bf16, fp16, fp32), contiguous, CUDA (or CPU under
    TRITON_INTERPRET=1). Under torch.autocast the inputs are cast to the autocast dtype here (and y has that
    dtype), as F.linear would. Inputs are checked here, so errors name the argument. Runs as the custom op
    torch.ops.speedrun.relu2_mlp: torch.compile keeps it whole in its graph.
    """
    x, w_fc, w_proj, b_fc, b_proj = autocast_inputs(x, w_fc, w_proj, b_fc, b_proj)
    _check_inputs(x, w_fc, w_proj, b_fc, b_proj)
    return torch.ops.speedrun.relu2_mlp(x, w_fc, w_proj, b_fc, b_proj)[0]


registry.register("relu2_mlp", "triton", relu2_mlp)
