"""ReLU² MLP: a Triton matmul whose epilogue applies relu(·)² (forward) or its derivative (backward).

Op (the speedrun's MLP; kernels.reference.relu2_mlp is the test oracle and the eager peer):

    h = x w_fcᵀ              (N, F)   pre-activation, never stored
    a = relu(h)²             (N, F)   _relu2_mm_kernel, EPILOGUE_RELU2: written once, saved for backward
    y = a w_projᵀ            (N, H)   torch.matmul (cuBLAS)

    dA = dy w_proj           (N, F)
    dH = dA · 2·relu(h)      (N, F)   _relu2_mm_kernel, EPILOGUE_DRELU2, with relu(h) = sqrt(a) (see below)
    dx = dH w_fc             (N, H)   torch.matmul
    dW_fc = dHᵀ x            (F, H)   torch.matmul
    dW_proj = dyᵀ a          (H, F)   torch.matmul

Shapes: x (N, H), w_fc (F, H), w_proj (H, F), all one dtype (bf16, fp16 or fp32; the model casts), all
contiguous; y (N, H). At the 124M shape H = 768, F = 3072, N = tokens of one micro-batch.

What is saved for backward, and why: only `a` (plus the inputs, which are alive anyway; each is saved only
when a requested gradient needs it). The backward needs a for dW_proj = dyᵀ a whatever else is saved, and
relu(h) — the only other thing it needs — is sqrt(a), exactly 0 where h <= 0. So one (N, F) tensor is the
minimum for a recompute-free backward; it costs no extra write either (the forward must write a for the
down projection). The alternatives: saving h as well costs one more (N, F) write and buffer (50 MB a layer
at N = 8192 in bf16, 400 MB at the 64k-token micro-batch); saving h instead of a makes dW_proj need
relu(h)² on the fly or a re-materialised a; saving nothing means recomputing x w_fcᵀ (2NHF FLOPs, +17 %
on the 12NHF of forward + backward) to save that one buffer, a bad trade on an 80 GB H100 where the 124M
model's activations fit. Precision of sqrt(a): a = relu(h)²·(1 + ε), |ε| <= u (the dtype's unit roundoff),
so sqrt(a) = relu(h)·(1 + ε/2): half the relative error of rounding h itself to the dtype, i.e. dH is at
least as accurate as the eager peer's dA · 2·relu(h_rounded). (In fp16, h above 256 overflows a to inf —
the eager fp16 forward overflows there too — and h below ~8e-3 makes a subnormal, which loses relative
precision on entries whose gradient is tiny in absolute terms.)

Which matmuls are Triton: the two whose epilogue fuses an elementwise op (the up projection with relu²;
dA with the 2·relu(h) factor), which saves writing and re-reading an (N, F) tensor each. The other four are
plain GEMMs with nothing to fuse, so they stay in torch (cuBLAS, no autotuning; torch.matmul(…, out=) keeps
the launchers' `out=` contract).

Kernel: C = epilogue(A·B) with A (M, K) and B addressed as B[k, n] through strides (forward: B = w_fcᵀ,
K-contiguous; backward: B = w_proj, N-contiguous). One (BLOCK_M, BLOCK_N) tile per program, fp32
accumulation on the tensor cores, fp32 epilogue, one rounding at the store. Tile order: GROUP_M-swizzled
(programs walk GROUP_M tile-rows column by column, so a wave of programs shares A row-blocks and B
column-blocks in L2). Edges are masked (loads with other=0, masked stores): no alignment assumption.
The backward epilogue runs on two column halves of the tile (fewer live registers: no spills on sm_90).
The epilogues select rather than take maxima, so NaN and inf land where eager's do. Interpreter and fp32
switches (UPCAST, RNE_BF16, TF32X3): kernels._common.precision_flags.

Configs: CONFIGS is the autotune space on the GPU (pruned per dtype and problem size by prune_configs;
`config=` on the launchers forces one); under the interpreter one pinned small tile runs (autotune with
several configs fails there). bench/cases/relu2_mlp.py compiles every (config, dtype, epilogue) the GPU
launch can pick for sm_90 (`python -m bench.codegen`).

Provenance: the fused relu² forward epilogue / 2·relu backward epilogue split follows
FusedLinearReLUSquareFunction in KellerJordan/modded-nanogpt (PR #197, @andrewbriand, @jrauvola; its H100
tile 128×256×64, 8 warps, 4 stages forward / 3 backward is in CONFIGS). The GROUP_M ordering is the one
described in Triton's tutorial 03-matrix-multiplication. This code is written from scratch.
"""

import functools

import torch
import triton
import triton.language as tl

from kernels import registry
from kernels._common import (
    SM90_SHARED_BYTES,
    Tile,
    check_out,
    check_tensor,
    check_triton_device,
    is_interpreter,
    precision_flags,
    same_dtype,
    store_tile,
    tile_matmul,
)

# ---------------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------------

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

# Epilogue selectors (a tl.constexpr: the unused branch is not compiled).
EPILOGUE_RELU2 = 1  # C = relu(acc)²
EPILOGUE_DRELU2 = 2  # C = acc · 2·sqrt(AUX), AUX = relu(h)² saved by the forward

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

# The autotune space. Not yet tuned on a GPU (`pytest bench/kernels/bench_relu2_mlp.py` on one would measure
# it); sizes follow the sm_90 budget: 128-byte K rows, 64-128-row tiles per warpgroup, 3-4 stages. The first
# two are modded-nanogpt's H100 choice for this MLP (its forward / backward stage counts); 128×128 gives 2x the
# programs, 64×128 4x, for smaller token counts. fp32 (the accuracy path, not the training one) has one
# config. Kept short on purpose: every entry is autotuned on first use of a shape and compiled for every dtype
# and epilogue by `python -m bench.codegen`. Left out to keep autotuning and the codegen test short, though
# they compiled clean: 128×128×64 and 128×64×64 with 4 warps (240 and 121 registers in the backward), and a
# 64×128×32 fp32 tile.
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


# ---------------------------------------------------------------------------------------------------
# Kernel
# ---------------------------------------------------------------------------------------------------


@triton.jit
def _epilogue(acc, rm, rn, M, N, aux_ptr, c_ptr, stride_xm, stride_xn, stride_cm, stride_cn,
              EPILOGUE: tl.constexpr, RNE_BF16: tl.constexpr):
    """Store epilogue(acc) at rows rm, columns rn of C (masked); acc is fp32 (len(rm), len(rn))."""
    tile_mask = (rm < M)[:, None] & (rn < N)[None, :]
    rm64 = rm.to(tl.int64)
    rn64 = rn.to(tl.int64)
    # NaN and inf go where eager's go: selects on the finite condition, not tl.maximum (which drops a NaN).
    if EPILOGUE == 1:  # EPILOGUE_RELU2: a = relu(h)², NaN for a NaN h
        r = tl.where(acc < 0.0, 0.0, acc)
        out = r * r
    else:  # EPILOGUE_DRELU2: dH = dA · 2·relu(h), relu(h) = sqrt(a); exactly 0 where a = 0 (h <= 0), whatever dA
        # is (a NaN or inf dA too: eager's relu backward selects 0 there), NaN where a is NaN
        aux = tl.load(aux_ptr + rm64[:, None] * stride_xm + rn64[None, :] * stride_xn, mask=tile_mask, other=0.0)
        two_r = 2.0 * tl.sqrt_rn(aux.to(tl.float32))  # 0 exactly where a = 0; NaN where a is NaN
        out = tl.where(two_r == 0.0, 0.0, acc * two_r)
    store_tile(c_ptr + rm64[:, None] * stride_cm + rn64[None, :] * stride_cn, out, tile_mask, RNE_BF16)


@triton.jit
def _relu2_mm_kernel(
    # pointers: A (M, K); B addressed as B[k, n]; AUX (M, N) (read by EPILOGUE_DRELU2 only); C (M, N)
    a_ptr, b_ptr, aux_ptr, c_ptr,
    # sizes
    M, N, K,
    # strides, in elements
    stride_am, stride_ak, stride_bk, stride_bn, stride_xm, stride_xn, stride_cm, stride_cn,
    # meta-parameters
    EPILOGUE: tl.constexpr,  # EPILOGUE_RELU2 (forward) or EPILOGUE_DRELU2 (backward)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,  # tile-rows per swizzle group (L2 reuse)
    UPCAST: tl.constexpr,  # see kernels._common.precision_flags
    TF32X3: tl.constexpr,
    RNE_BF16: tl.constexpr,
):
    """C = relu(A·B)² (EPILOGUE_RELU2) or C = (A·B) · 2·sqrt(AUX) (EPILOGUE_DRELU2); one tile per program.

    Grid: (cdiv(M, BLOCK_M) · cdiv(N, BLOCK_N),), ordered in GROUP_M-row groups.
    """
    # --- grouped tile order: program p -> tile (pid_m, pid_n)
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n  # programs in one full group
    group = pid // per_group
    first_m = group * GROUP_M
    rows_here = tl.minimum(tiles_m - first_m, GROUP_M)  # the last group may be short
    in_group = pid % per_group
    pid_m = first_m + in_group % rows_here
    pid_n = in_group // rows_here

    # --- offsets; row/column indices in int64 so that index × stride cannot overflow
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    rk = tl.arange(0, BLOCK_K)  # (BLOCK_K,)
    rm64 = rm.to(tl.int64)
    rn64 = rn.to(tl.int64)
    a_ptrs = a_ptr + rm64[:, None] * stride_am + rk[None, :] * stride_ak  # (BLOCK_M, BLOCK_K)
    b_ptrs = b_ptr + rk[:, None] * stride_bk + rn64[None, :] * stride_bn  # (BLOCK_K, BLOCK_N)
    acc = tile_matmul(tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), a_ptrs, b_ptrs, rm < M, rn < N, K,
                      BLOCK_K * stride_ak, BLOCK_K * stride_bk, BLOCK_K=BLOCK_K, A_T=False, B_T=False,
                      ROUND_A=False, UPCAST=UPCAST, TF32X3=TF32X3)

    # --- epilogue in fp32, one rounding at the store. The backward one runs on two column halves, so that
    # the AUX tile, its pointers and the converted output of only half the tile are live at once: on sm_90
    # that took 128x256 (8 warps) and 128x128 (4 warps) from 255 registers + 65-99 spill stores to 234-240
    # registers and no spills, and the other backward tiles from ~160 to ~125 registers (bench.codegen).
    # The forward epilogue reads no AUX; halving it changed nothing there (±14 registers).
    if EPILOGUE == 2:
        halves = tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))  # (BLOCK_M, BLOCK_N/2, 2)
        acc0, acc1 = tl.split(halves)  # columns [0, BLOCK_N/2) and [BLOCK_N/2, BLOCK_N)
        rn0 = pid_n * BLOCK_N + tl.arange(0, BLOCK_N // 2)
        _epilogue(acc0, rm, rn0, M, N, aux_ptr, c_ptr, stride_xm, stride_xn, stride_cm, stride_cn, EPILOGUE, RNE_BF16)
        _epilogue(acc1, rm, rn0 + BLOCK_N // 2, M, N, aux_ptr, c_ptr, stride_xm, stride_xn, stride_cm, stride_cn,
                  EPILOGUE, RNE_BF16)
    else:
        _epilogue(acc, rm, rn, M, N, aux_ptr, c_ptr, stride_xm, stride_xn, stride_cm, stride_cn, EPILOGUE, RNE_BF16)


@functools.cache
def _autotuned_kernel(do_bench=None):
    """_relu2_mm_kernel under triton.autotune over CONFIGS, built on first GPU use (nothing at import).

    The key has the problem size and the epilogue; Triton adds the tensors' dtypes itself. `do_bench`
    replaces Triton's CUDA timer (the tests pass a CPU one to run this path under the interpreter)."""
    extra = {} if do_bench is None else {"do_bench": do_bench}
    configs = [triton.Config(c.meta(), **c.launch()) for c in CONFIGS]
    return triton.autotune(configs=configs, key=["M", "N", "K", "EPILOGUE"],
                           prune_configs_by={"early_config_prune": prune_configs}, **extra)(_relu2_mm_kernel)


# ---------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------


def _find_config(name: str) -> Tile:
    for c in CONFIGS + [INTERPRETER_CONFIG]:
        if c.name == name:
            return c
    raise ValueError(f"unknown relu2_mlp config {name!r}; configs: {[c.name for c in CONFIGS]} "
                     f"(interpreter: {INTERPRETER_CONFIG.name!r})")


def _launch(A, B_kn, aux, C, *, epilogue: int, config: str | None):
    """C = epilogue(A·B); B_kn is a (K, N) view (any strides). Picks the config, builds the grid, launches."""
    M, K = A.shape
    N = B_kn.shape[1]
    interp = is_interpreter()
    args = dict(
        a_ptr=A, b_ptr=B_kn, aux_ptr=aux, c_ptr=C,
        M=M, N=N, K=K,
        stride_am=A.stride(0), stride_ak=A.stride(1), stride_bk=B_kn.stride(0), stride_bn=B_kn.stride(1),
        stride_xm=aux.stride(0), stride_xn=aux.stride(1), stride_cm=C.stride(0), stride_cn=C.stride(1),
        EPILOGUE=epilogue, **precision_flags(A.dtype, interpreter=interp),
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
    _relu2_mm_kernel[grid](**args, **tile.meta(), GROUP_M=group_m, **tile.launch())
    return C


def _check_inputs(x, w_fc, w_proj):
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
    return N, H, F


def _out(out, name, shape, like):
    return check_out(out, name, shape, dtype=like.dtype, device=like.device)


def relu2_fc_fwd(x: torch.Tensor, w_fc: torch.Tensor, *, out: torch.Tensor | None = None,
                 config: str | None = None) -> torch.Tensor:
    """a = relu(x w_fcᵀ)²: x (N, H), w_fc (F, H) -> (N, F), one Triton launch. Returns `out` when given.

    `config` forces one Tile of CONFIGS by name (bypasses autotuning; default: autotune on the GPU, the pinned
    INTERPRETER_CONFIG under the interpreter).
    """
    N, H, F = _check_inputs(x, w_fc, None)
    out = _out(out, "out", (N, F), x)
    return _launch(x, w_fc.t(), out, out, epilogue=EPILOGUE_RELU2, config=config)  # aux unused: any tensor


def relu2_fc_bwd(dy: torch.Tensor, w_proj: torch.Tensor, a: torch.Tensor, *, out: torch.Tensor | None = None,
                 config: str | None = None) -> torch.Tensor:
    """dH = (dy w_proj) · 2·sqrt(a): dy (N, H), w_proj (H, F), a (N, F) = relu(h)² -> (N, F), one Triton launch.

    This is dL/dh for h the pre-activation of a = relu(h)². `out` must not overlap dy, w_proj or a (the
    autotuner runs the kernel several times on the same buffers).
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


def relu2_mlp_fwd(x: torch.Tensor, w_fc: torch.Tensor, w_proj: torch.Tensor, *, out: torch.Tensor | None = None,
                  act_out: torch.Tensor | None = None, config: str | None = None):
    """(y, a): a = relu(x w_fcᵀ)² (N, F) by the Triton kernel, y = a w_projᵀ (N, H) by torch.matmul.

    `out` / `act_out` receive y / a when given. `a` is what the backward needs (relu2_mlp_bwd).
    """
    N, H, F = _check_inputs(x, w_fc, w_proj)
    out = _out(out, "out", (N, H), x)
    a = relu2_fc_fwd(x, w_fc, out=act_out, config=config)  # (N, F)
    torch.matmul(a, w_proj.t(), out=out)  # (N, H)
    return out, a


def relu2_mlp_bwd(dy: torch.Tensor, x: torch.Tensor | None, w_fc: torch.Tensor | None, w_proj: torch.Tensor | None,
                  a: torch.Tensor, *, need_dx: bool = True, need_dw_fc: bool = True, need_dw_proj: bool = True,
                  dx: torch.Tensor | None = None, dw_fc: torch.Tensor | None = None,
                  dw_proj: torch.Tensor | None = None, dh: torch.Tensor | None = None,
                  config: str | None = None):
    """(dx, dW_fc, dW_proj), each None unless needed. dH (the Triton launch) is computed when dx or dW_fc is.

    dy (N, H); x (N, H) is needed for dW_fc only, w_fc (F, H) for dx only, w_proj (H, F) for either of
    them (pass None otherwise); a (N, F) from relu2_mlp_fwd. dx / dw_fc / dw_proj / dh are optional output
    buffers (dh: the (N, F) work buffer of dL/dh).
    """
    check_tensor(dy, "dy", ndim=2, dtypes=SUPPORTED_DTYPES, contiguous=True)
    N, H = dy.shape
    F = a.shape[1]
    for t, name in ((x, "x"), (w_fc, "w_fc")):
        if t is not None:
            check_tensor(t, name, ndim=2, dtypes=(dy.dtype,), contiguous=True)
            check_triton_device((dy, "dy"), (t, name))
    if x is not None and tuple(x.shape) != (N, H):
        raise ValueError(f"x must be (N, H) = ({N}, {H}) as dy, got {tuple(x.shape)}")
    if w_fc is not None and tuple(w_fc.shape) != (F, H):
        raise ValueError(f"w_fc must be (F, H) = ({F}, {H}) from a (N, F) and dy (N, H), got {tuple(w_fc.shape)}")
    if need_dx and w_fc is None:
        raise ValueError("need_dx needs w_fc")
    if need_dw_fc and x is None:
        raise ValueError("need_dw_fc needs x")
    grad_x = grad_fc = grad_proj = None
    if need_dx or need_dw_fc:
        dh = relu2_fc_bwd(dy, w_proj, a, out=dh, config=config)  # (N, F), checks w_proj and a
        if need_dx:
            grad_x = torch.matmul(dh, w_fc, out=_out(dx, "dx", (N, H), dy))  # (N, H)
        if need_dw_fc:
            grad_fc = torch.matmul(dh.t(), x, out=_out(dw_fc, "dw_fc", (F, H), dy))  # (F, H)
    if need_dw_proj:
        check_tensor(a, "a", ndim=2, dtypes=(dy.dtype,), contiguous=True)
        if tuple(a.shape) != (N, F):
            raise ValueError(f"a must be (N, F) with N = {N} as dy, got {tuple(a.shape)}")
        grad_proj = torch.matmul(dy.t(), a, out=_out(dw_proj, "dw_proj", (H, F), dy))  # (H, F)
    return grad_x, grad_fc, grad_proj


# ---------------------------------------------------------------------------------------------------
# Autograd and the functional API
# ---------------------------------------------------------------------------------------------------


class Relu2MLPFunction(torch.autograd.Function):
    """y = relu(x w_fcᵀ)² w_projᵀ; saves a = relu(x w_fcᵀ)² and, only where a gradient needs them, the inputs."""

    @staticmethod
    def forward(ctx, x, w_fc, w_proj):
        y, a = relu2_mlp_fwd(x, w_fc, w_proj)
        need_x, need_fc, need_proj = ctx.needs_input_grad
        need_dh = need_x or need_fc
        ctx.save_for_backward(
            x if need_fc else None,  # dW_fc = dHᵀ x
            w_fc if need_x else None,  # dx = dH w_fc
            w_proj if need_dh else None,  # dA = dy w_proj
            a if (need_dh or need_proj) else None,  # dH = dA·2·sqrt(a), dW_proj = dyᵀ a
        )
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w_fc, w_proj, a = ctx.saved_tensors
        need_x, need_fc, need_proj = ctx.needs_input_grad
        dx, dw_fc, dw_proj = relu2_mlp_bwd(dy.contiguous(), x, w_fc, w_proj, a, need_dx=need_x, need_dw_fc=need_fc,
                                           need_dw_proj=need_proj)
        return dx, dw_fc, dw_proj  # one per input (x, w_fc, w_proj); None where not needed


def relu2_mlp(x: torch.Tensor, w_fc: torch.Tensor, w_proj: torch.Tensor) -> torch.Tensor:
    """relu(x w_fcᵀ)² w_projᵀ: x (N, H), w_fc (F, H), w_proj (H, F) -> (N, H), differentiable.

    Same semantics as kernels.reference.relu2_mlp; one dtype (bf16, fp16, fp32), contiguous, CUDA (or CPU
    under TRITON_INTERPRET=1). Inputs are checked here, so errors name the argument.
    """
    _check_inputs(x, w_fc, w_proj)
    return Relu2MLPFunction.apply(x, w_fc, w_proj)


registry.register("relu2_mlp", "triton", relu2_mlp)
