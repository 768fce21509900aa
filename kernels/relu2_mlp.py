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
plain GEMMs with nothing to fuse; cuBLAS (torch.matmul) is at least as fast as a Triton GEMM at these
shapes on an H100 and needs no autotuning, so they stay in torch (torch.matmul(…, out=) keeps the
launchers' `out=` contract).

Kernel: C = epilogue(A·B) with A (M, K) and B addressed as B[k, n] through strides (forward: B = w_fcᵀ,
K-contiguous; backward: B = w_proj, N-contiguous). One (BLOCK_M, BLOCK_N) tile per program, fp32
accumulation on the tensor cores, fp32 epilogue, one rounding at the store. Tile order: GROUP_M-swizzled
(programs walk GROUP_M tile-rows column by column, so a wave of programs shares A row-blocks and B
column-blocks in L2). Edges are masked (loads with other=0, masked stores): no alignment assumption.
The backward epilogue runs on two column halves of the tile (fewer live registers: no spills on sm_90).

Numerics and the interpreter (shared/PLATFORM.md): bf16 arithmetic and bf16 tl.dot are wrong under
TRITON_INTERPRET=1, so the launcher sets UPCAST there (tiles converted to fp32 right after loading) and
RNE_BF16 (round-to-nearest-even by bit arithmetic before the bf16 store, because the interpreter's cast
truncates while the GPU's rounds). fp32 inputs use tl.dot(input_precision="tf32x3") on the GPU, close to
the fp32 eager peer (torch's default fp32 matmul does not use TF32).

Configs: CONFIGS is the autotune space on the GPU (pruned per dtype and problem size by prune_configs;
`config=` on the launchers forces one); under the interpreter one pinned small config runs (autotune with
several configs fails there). codegen_cases() lists every (config, dtype, epilogue) the GPU launch can
pick, for bench.codegen.

Provenance: the fused relu² forward epilogue / 2·relu backward epilogue split follows
FusedLinearReLUSquareFunction in KellerJordan/modded-nanogpt (PR #197, @andrewbriand, @jrauvola; its H100
tile 128×256×64, 8 warps, 4 stages forward / 3 backward is in CONFIGS). The GROUP_M ordering is the one
described in Triton's tutorial 03-matrix-multiplication. This code is written from scratch.
"""

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels import registry
from kernels._common import (
    CodegenCase,
    check_tensor,
    check_triton_device,
    is_interpreter,
    round_to_bf16_grid,
    same_dtype,
)

# ---------------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------------

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

# Epilogue selectors (a tl.constexpr: the unused branch is not compiled).
EPILOGUE_RELU2 = 1  # C = relu(acc)²
EPILOGUE_DRELU2 = 2  # C = acc · 2·sqrt(AUX), AUX = relu(h)² saved by the forward

# Shared memory an H100 block may use (227 KB); the prune filter keeps the pipelined operand tiles below
# it with 8 KB to spare for what Triton adds (barriers, the epilogue's layout conversion).
_SMEM_BUDGET = 227 * 1024 - 8 * 1024

# A K-chunk row of 128 bytes (64 bf16/fp16 or 32 fp32 elements) is the widest shared-memory swizzle the
# Hopper wgmma operand layout uses; the prune filter keeps configs whose BLOCK_K matches it for the dtype.
_K_ROW_BYTES = 128


# ---------------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MMConfig:
    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int

    @property
    def name(self) -> str:
        return (f"{self.block_m}x{self.block_n}x{self.block_k} g{self.group_m} "
                f"w{self.num_warps} s{self.num_stages}")

    def smem_bytes(self, itemsize: int) -> int:
        """Pipelined A and B tiles: what dominates the kernel's shared memory (bench.codegen has the real figure)."""
        return self.num_stages * (self.block_m + self.block_n) * self.block_k * itemsize

    def meta(self) -> dict:
        return {"BLOCK_M": self.block_m, "BLOCK_N": self.block_n, "BLOCK_K": self.block_k, "GROUP_M": self.group_m}

    def triton_config(self) -> "triton.Config":
        return triton.Config(self.meta(), num_warps=self.num_warps, num_stages=self.num_stages)


# The autotune space. Not tuned on a GPU (none was lent to this work, 2026-11); sizes follow the sm_90
# budget: 128-byte K rows, 64-128-row tiles per warpgroup, 3-4 stages. The first two are modded-nanogpt's
# H100 choice for this MLP (its forward / backward stage counts); 128×128 gives 2x the programs, 64×128
# 4x, for smaller token counts. fp32 (the accuracy path, not the training one) has one config. Kept short
# on purpose: every entry is autotuned on first use of a shape and compiled for every dtype and epilogue
# by codegen_cases() (bench.codegen: registers, spills, shared memory, HGMMA). Trimmed to keep autotuning
# and the codegen test short, though they compiled clean: 128×128×64 and 128×64×64 with 4 warps (240 and
# 121 registers in the backward), and a 64×128×32 fp32 tile.
CONFIGS = [
    # bf16 / fp16 (BLOCK_K 64)
    MMConfig(128, 256, 64, 8, 8, 4),
    MMConfig(128, 256, 64, 8, 8, 3),
    MMConfig(128, 128, 64, 8, 8, 4),
    MMConfig(64, 128, 64, 8, 4, 4),
    # fp32 (BLOCK_K 32; tf32x3 tensor-core products)
    MMConfig(128, 128, 32, 8, 8, 3),
]

# Under the interpreter: one small config, so that the odd test shapes span several tiles and GROUP_M
# groups (a ragged last group included) and every program stays cheap on the CPU.
INTERPRETER_CONFIG = MMConfig(16, 32, 16, 2, 4, 1)


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def usable_configs(dtype: torch.dtype, epilogue: int, M: int = 1 << 30, N: int = 1 << 30) -> list[MMConfig]:
    """CONFIGS a (dtype, epilogue, M×N output) launch may pick: K rows of 128 bytes, pipelined tiles within
    the shared-memory budget, and tiles no larger than the problem (rounded up to a power of two, at least
    64); when no tile is that small, the smallest tiles."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    fits = [c for c in CONFIGS if c.block_k * itemsize == _K_ROW_BYTES and c.smem_bytes(itemsize) <= _SMEM_BUDGET]
    del epilogue  # every config compiles spill-free for both epilogues (bench.codegen); kept for the API
    small = [c for c in fits if c.block_m <= max(64, _next_pow2(M)) and c.block_n <= max(64, _next_pow2(N))]
    if small:
        return small
    least = min(c.block_m * c.block_n for c in fits)
    return [c for c in fits if c.block_m * c.block_n == least]


def prune_configs(configs, named_args, **kwargs):
    """triton.autotune early_config_prune: keep the triton.Configs that usable_configs() allows.

    The launcher passes every argument by keyword, so they arrive in kwargs (named_args holds positionals).
    """
    args = {**named_args, **kwargs}
    allowed = {(tuple(sorted(c.meta().items())), c.num_warps, c.num_stages)
               for c in usable_configs(args["a_ptr"].dtype, args["EPILOGUE"], args["M"], args["N"])}
    kept = [c for c in configs if (tuple(sorted(c.kwargs.items())), c.num_warps, c.num_stages) in allowed]
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
    if EPILOGUE == 1:  # EPILOGUE_RELU2: a = relu(h)²
        r = tl.maximum(acc, 0.0)
        out = r * r
    else:  # EPILOGUE_DRELU2: dH = dA · 2·relu(h), relu(h) = sqrt(a) (exactly 0 where h <= 0)
        aux = tl.load(aux_ptr + rm64[:, None] * stride_xm + rn64[None, :] * stride_xn, mask=tile_mask, other=0.0)
        out = acc * (2.0 * tl.sqrt_rn(aux.to(tl.float32)))
    if RNE_BF16:
        out = round_to_bf16_grid(out)
    tl.store(c_ptr + rm64[:, None] * stride_cm + rn64[None, :] * stride_cn, out.to(c_ptr.dtype.element_ty),
             mask=tile_mask)


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
    UPCAST: tl.constexpr,  # convert loaded tiles to fp32 before tl.dot (interpreter: bf16 math is wrong)
    TF32X3: tl.constexpr,  # fp32 operands on tensor cores at about fp32 accuracy (GPU fp32 path)
    RNE_BF16: tl.constexpr,  # round to nearest even before a bf16 store (interpreter: its cast truncates)
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
    in_m = rm < M
    in_n = rn < N
    rm64 = rm.to(tl.int64)
    rn64 = rn.to(tl.int64)
    a_ptrs = a_ptr + rm64[:, None] * stride_am + rk[None, :] * stride_ak  # (BLOCK_M, BLOCK_K)
    b_ptrs = b_ptr + rk[:, None] * stride_bk + rn64[None, :] * stride_bn  # (BLOCK_K, BLOCK_N)

    # --- main loop: acc = A[rows, :] · B[:, cols] in fp32
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        in_k = (k0 + rk) < K
        a = tl.load(a_ptrs, mask=in_m[:, None] & in_k[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=in_k[:, None] & in_n[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        if TF32X3:
            acc = tl.dot(a, b, acc, input_precision="tf32x3")
        else:
            acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    # --- epilogue in fp32, one rounding at the store. The backward one runs on two column halves, so that
    # the AUX tile, its pointers and the converted output of only half the tile are live at once: on sm_90
    # that took 128x256 (8 warps) and 128x128 (4 warps) from 255 registers + 65-99 spill stores to 234-240
    # registers and no spills, and the other backward tiles from ~160 to ~125 registers (bench.codegen,
    # 2026-11). The forward epilogue reads no AUX; halving it changed nothing there (±14 registers).
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
    return triton.autotune(configs=[c.triton_config() for c in CONFIGS], key=["M", "N", "K", "EPILOGUE"],
                           prune_configs_by={"early_config_prune": prune_configs}, **extra)(_relu2_mm_kernel)


# ---------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------


def _check_out(out, name, shape, like):
    if out is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    check_tensor(out, name, ndim=2, dtypes=(like.dtype,), contiguous=True)
    if tuple(out.shape) != tuple(shape) or out.device != like.device:
        raise ValueError(f"{name} must have shape {tuple(shape)} on {like.device}, got {tuple(out.shape)} "
                         f"on {out.device}")
    return out


def _find_config(name: str) -> MMConfig:
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
    flags = dict(UPCAST=interp, TF32X3=(A.dtype == torch.float32 and not interp),
                 RNE_BF16=(A.dtype == torch.bfloat16 and interp))
    args = dict(
        a_ptr=A, b_ptr=B_kn, aux_ptr=aux, c_ptr=C,
        M=M, N=N, K=K,
        stride_am=A.stride(0), stride_ak=A.stride(1), stride_bk=B_kn.stride(0), stride_bn=B_kn.stride(1),
        stride_xm=aux.stride(0), stride_xn=aux.stride(1), stride_cm=C.stride(0), stride_cn=C.stride(1),
        EPILOGUE=epilogue, **flags,
    )
    if config is None and not interp:
        def grid(meta):
            return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

        _autotuned_kernel()[grid](**args)
        return C
    cfg = INTERPRETER_CONFIG if config is None else _find_config(config)
    usable = usable_configs(A.dtype, epilogue)
    if cfg != INTERPRETER_CONFIG and cfg not in usable:
        raise ValueError(f"relu2_mlp config {cfg.name!r} is not for {A.dtype} (its K row is not 128 bytes or its "
                         f"tiles exceed shared memory); for {A.dtype}: {[c.name for c in usable]}")
    grid = (triton.cdiv(M, cfg.block_m) * triton.cdiv(N, cfg.block_n),)
    _relu2_mm_kernel[grid](**args, **cfg.meta(), num_warps=cfg.num_warps, num_stages=cfg.num_stages)
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


def relu2_fc_fwd(x: torch.Tensor, w_fc: torch.Tensor, *, out: torch.Tensor | None = None,
                 config: str | None = None) -> torch.Tensor:
    """a = relu(x w_fcᵀ)²: x (N, H), w_fc (F, H) -> (N, F), one Triton launch. Returns `out` when given.

    `config` forces one MMConfig by name (bypasses autotuning; default: autotune on the GPU, the pinned
    INTERPRETER_CONFIG under the interpreter).
    """
    N, H, F = _check_inputs(x, w_fc, None)
    out = _check_out(out, "out", (N, F), x)
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
    out = _check_out(out, "out", (N, F), dy)
    return _launch(dy, w_proj, a, out, epilogue=EPILOGUE_DRELU2, config=config)


def relu2_mlp_fwd(x: torch.Tensor, w_fc: torch.Tensor, w_proj: torch.Tensor, *, out: torch.Tensor | None = None,
                  act_out: torch.Tensor | None = None, config: str | None = None):
    """(y, a): a = relu(x w_fcᵀ)² (N, F) by the Triton kernel, y = a w_projᵀ (N, H) by torch.matmul.

    `out` / `act_out` receive y / a when given. `a` is what the backward needs (relu2_mlp_bwd).
    """
    N, H, F = _check_inputs(x, w_fc, w_proj)
    out = _check_out(out, "out", (N, H), x)
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
            grad_x = torch.matmul(dh, w_fc, out=_check_out(dx, "dx", (N, H), dy))  # (N, H)
        if need_dw_fc:
            grad_fc = torch.matmul(dh.t(), x, out=_check_out(dw_fc, "dw_fc", (F, H), dy))  # (F, H)
    if need_dw_proj:
        check_tensor(a, "a", ndim=2, dtypes=(dy.dtype,), contiguous=True)
        if tuple(a.shape) != (N, F):
            raise ValueError(f"a must be (N, F) with N = {N} as dy, got {tuple(a.shape)}")
        grad_proj = torch.matmul(dy.t(), a, out=_check_out(dw_proj, "dw_proj", (H, F), dy))  # (H, F)
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


# ---------------------------------------------------------------------------------------------------
# FLOP / byte model and codegen cases
# ---------------------------------------------------------------------------------------------------


def mlp_flops(N: int, H: int, F: int, mode: str) -> float:
    """Matmul FLOPs: forward 2 GEMMs (4NHF), backward 4 GEMMs (8NHF), full 12NHF."""
    return float({"forward": 4, "backward": 8, "full": 12}[mode] * N * H * F)


def mlp_bytes(N: int, H: int, F: int, mode: str, itemsize: int) -> float:
    """Compulsory HBM traffic of this implementation, each launch reading its operands and writing its
    result once. Forward: up+relu² reads x, w_fc, writes a; down reads a, w_proj, writes y. Backward:
    dH reads dy, w_proj, a, writes dH; dx reads dH, w_fc, writes dx; dW_fc reads dH, x, writes dW_fc;
    dW_proj reads dy, a, writes dW_proj."""
    nh, hf, nf = N * H, H * F, N * F
    fwd = (nh + hf + nf) + (nf + hf + nh)
    bwd = (nh + hf + 2 * nf) + (nf + hf + nh) + (nf + nh + hf) + (nh + nf + hf)
    return float(itemsize * {"forward": fwd, "backward": bwd, "full": fwd + bwd}[mode])


_TRITON_DTYPE = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}

# The 124M MLP at 8192 tokens (4 sequences of 2048).
CODEGEN_SHAPE = (8192, 768, 3072)


def codegen_cases() -> list[CodegenCase]:
    """Every (config, dtype, epilogue) the GPU launch can pick, as the JIT specialises it at the 124M shape.

    Forward: A = x (N, H), B = w_fcᵀ (stride_bk = 1), C = a (N, F). Backward: A = dy (N, H), B = w_proj
    (stride_bn = 1), AUX = a, C = dH. Unit strides are constexpr 1 (as the JIT specialises them); pointers,
    sizes and the other strides are marked 16-divisible (768, 3072 and 8192 are). FLOPs and bytes are one
    launch at N = 8192.
    """
    N, H, F = CODEGEN_SHAPE
    cases = []
    for dtype, ty in _TRITON_DTYPE.items():
        size = dtype.itemsize
        for epilogue, label, unit_b in ((EPILOGUE_RELU2, "fwd relu2", "stride_bk"),
                                        (EPILOGUE_DRELU2, "bwd drelu2", "stride_bn")):
            for cfg in usable_configs(dtype, epilogue):
                sig = {"a_ptr": f"*{ty}", "b_ptr": f"*{ty}", "aux_ptr": f"*{ty}", "c_ptr": f"*{ty}",
                       "M": "i32", "N": "i32", "K": "i32",
                       "stride_am": "i32", "stride_ak": "constexpr", "stride_bk": "i32", "stride_bn": "i32",
                       "stride_xm": "i32", "stride_xn": "constexpr", "stride_cm": "i32", "stride_cn": "constexpr",
                       "EPILOGUE": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr",
                       "BLOCK_K": "constexpr", "GROUP_M": "constexpr", "UPCAST": "constexpr", "TF32X3": "constexpr",
                       "RNE_BF16": "constexpr"}
                sig[unit_b] = "constexpr"
                other_b = "stride_bn" if unit_b == "stride_bk" else "stride_bk"
                constexprs = {"stride_ak": 1, "stride_xn": 1, "stride_cn": 1, unit_b: 1, "EPILOGUE": epilogue,
                              **cfg.meta(), "UPCAST": False, "TF32X3": dtype == torch.float32, "RNE_BF16": False}
                reads_aux = epilogue == EPILOGUE_DRELU2
                cases.append(CodegenCase(
                    kernel=f"relu2_mm_{'bwd' if reads_aux else 'fwd'}", config=f"{ty} {cfg.name}",
                    fn=_relu2_mm_kernel, signature=sig, constexprs=constexprs,
                    divisible=("a_ptr", "b_ptr", "aux_ptr", "c_ptr", "M", "N", "K", "stride_am", other_b,
                               "stride_xm", "stride_cm"),
                    num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                    flops=float(2 * N * H * F),
                    bytes=float(size * (N * H + H * F + (2 if reads_aux else 1) * N * F)),
                    extra={"epilogue": label}))
    return cases


registry.register("relu2_mlp", "triton", relu2_mlp)
