"""Fused Newton-Schulz orthogonalisation (Muon / NorMuon): three Triton kernels per iteration, symmetry exploited.

Op: approximate the polar factor UVᵀ of G = USVᵀ for one matrix (M, N) or a batch (B, M, N) of same-shape
matrices, with the same semantics as kernels.reference.newton_schulz (which is the test oracle and peer):

    X₀ = G / (‖G‖_F · NS_NORM_SCALE[coefficients] + eps)           (per matrix; Gᵀ when G is tall)
    for (a, b, c) in ns_coefficients(coefficients, steps):
        A = X Xᵀ                        _ns_syrk_kernel, FUSE_ADD=False    (M, M), symmetric
        B = b·A + c·A·A                 _ns_syrk_kernel, FUSE_ADD=True     (M, M), symmetric (A·A = A·Aᵀ)
        X = a·X + B·X                   _ns_update_kernel                  (M, N)

Shapes: the kernels always work on the wide orientation M <= N (a tall G is processed as Gᵀ, the last
update stores straight into the tall output through its strides), so A and B are the small M×M Gram
matrices. No autograd: the optimizer is the only user.

Symmetry: A = XXᵀ and A·A are symmetric, so the two SYRK launches compute only the lower triangle of
BLOCK×BLOCK tiles (i >= j; the grid is the T(T+1)/2 triangle, decoded from the program id) and write
every off-diagonal tile twice, as itself at (i, j) and transposed at (j, i). The full matrix is valid
afterwards (the next kernel reads whole rows), every element is written by exactly one program (diagonal
tiles are not mirrored), so the result is deterministic. b·A + c·A² is fused into the epilogue of the A·A
SYRK (the A tile (i, j) is loaded there); a·X + B·X is fused into the epilogue of the B·X matmul.
Per step this is 4M²N + 2M³ FLOPs done naively and ~M(M+1)N + M²(M+1) + 2M²N with symmetry
(bench.cases.newton_schulz.ns_flops): 1.38x fewer at 768×3072, 1.5x at 768×768 (the tile-level count is a
little higher).

Numerics: bf16 operands and bf16 work buffers (as the eager bf16 peer), fp32 accumulation in the tensor
cores, fp32 epilogue arithmetic, one rounding per kernel output. fp32 inputs keep fp32 buffers and use
`tl.dot(input_precision="tf32x3")` (three TF32 tensor-core products, close to fp32 accuracy) on the GPU.
The Frobenius normalisation is done with torch ops in fp32 (not in a kernel: one pass, negligible).
Under the Triton interpreter bf16 arithmetic and bf16 `tl.dot` are wrong, so the launchers set UPCAST there
(kernels._common.precision_flags) and tiles are converted to fp32 right after loading.

Provenance: the triangle-tile + mirrored-store scheme and the fused b·A + c·A·A epilogue follow the
symmetric-matmul kernels (XXT, ba_plus_cAA) by @byronxu99 in KellerJordan/modded-nanogpt
`triton_kernels.py` (read for the idea; this code is written from scratch). Coefficients: kernels.reference
(QUINTIC from the speedrun's Muon; POLAR_EXPRESS from Amsel et al. 2025, arXiv:2505.16932).
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels import registry
from kernels._common import (
    NUM_SMS_HINT,
    Tile,
    check_out,
    check_tensor,
    check_triton_device,
    check_workspace,
    lookup_config,
    precision_flags,
    round_to_bf16_grid,
    store_tile,
    tile_matmul,
)
from kernels.reference import NS_NORM_SCALE, ns_coefficients

# ---------------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------------

# CUDA caps grid axis 1 (our batch axis) at 65535.
_MAX_BATCH = 65535

SUPPORTED_DTYPES = (torch.bfloat16, torch.float32)


# ---------------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NSConfig:
    """Tiles of the two kernels. The SYRK tile is square: a tile and its mirror must have the same shape."""

    syrk: Tile  # both Gram products, A = XXᵀ and bA + cA·A
    update: Tile  # aX + B·X

    def __post_init__(self):
        if self.syrk.block_m != self.syrk.block_n:
            raise ValueError(f"the SYRK tile must be square, got {self.syrk.name}")


# Keyed by (tile family, dtype). Chosen for the sm_90 budget, not yet tuned on a GPU (`pytest
# bench/kernels/bench_newton_schulz.py` on one would measure them): bf16 tiles follow the sizes modded-nanogpt
# reports from H100 autotuning of its XXT kernel (128×128×64, 8 warps), plus a 64-tile family that gives 3.7x
# more programs for single 768-row matrices. fp32 (the accuracy path, not the optimizer's) has one family with
# BLOCK_K 32 so its stages fit in shared memory. Every entry is compiled for sm_90 by `python -m bench.codegen`.
CONFIGS = {
    ("b128", torch.bfloat16): NSConfig(syrk=Tile(block_m=128, block_n=128, block_k=64, warps=8, stages=4),
                                       update=Tile(block_m=128, block_n=128, block_k=64, warps=8, stages=3)),
    ("b64", torch.bfloat16): NSConfig(syrk=Tile(block_m=64, block_n=64, block_k=64, warps=4, stages=3),
                                      update=Tile(block_m=64, block_n=128, block_k=64, warps=4, stages=3)),
    ("b64", torch.float32): NSConfig(syrk=Tile(block_m=64, block_n=64, block_k=32, warps=4, stages=3),
                                     update=Tile(block_m=64, block_n=128, block_k=32, warps=4, stages=3)),
}


def triangle_tiles(M: int, block: int) -> int:
    """Programs of the SYRK grid: the T(T+1)/2 tiles on and below the diagonal, T = cdiv(M, block)."""
    t = triton.cdiv(M, block)
    return t * (t + 1) // 2


def pick_config(batch: int, M: int, dtype: torch.dtype) -> str:
    """Tile family for a batch of M-row Gram matrices (the triangle grid is the one that runs short of
    programs): the large tiles once their triangle grid alone has a program per SM (e.g. a batch of 12 768×768
    matrices), else 64-tiles (a single 768-row matrix: 78 triangle programs instead of 21). A heuristic."""
    if dtype == torch.bfloat16 and batch * triangle_tiles(M, 128) >= NUM_SMS_HINT:
        return "b128"
    return "b64"


def _resolve_config(name, batch, M, dtype) -> NSConfig:
    return lookup_config(CONFIGS, pick_config(batch, M, dtype) if name is None else name, dtype, "Newton-Schulz")


# ---------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------


@triton.jit
def _ns_syrk_kernel(
    # pointers: P (batch, M, K) row-major, ADD (batch, M, M), C (batch, M, M); innermost strides are 1
    p_ptr, add_ptr, c_ptr,
    # sizes
    M, K,
    # strides, in elements
    stride_pb, stride_pm, stride_ab, stride_am, stride_cb, stride_cm,
    # epilogue scalars: C = alpha·PPᵀ + beta·ADD when FUSE_ADD, else C = PPᵀ
    alpha, beta,
    # meta-parameters
    BLOCK: tl.constexpr,  # square output tile
    BLOCK_K: tl.constexpr,  # reduction chunk
    FUSE_ADD: tl.constexpr,  # load ADD's (i, j) tile in the epilogue (the b·A + c·A·A step)
    UPCAST: tl.constexpr,  # see kernels._common.precision_flags
    TF32X3: tl.constexpr,
    RNE_BF16: tl.constexpr,
):
    """Symmetric rank-K product C = α·P·Pᵀ (+ β·ADD) on the lower triangle of tiles, mirrored.

    Grid: (T(T+1)/2, batch) with T = cdiv(M, BLOCK). Program t computes tile (i, j), i >= j, with
    t = i(i+1)/2 + j, stores it at (i, j) and, when i != j, its transpose at (j, i).
    """
    t = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)  # batch offsets can pass 2³¹ elements

    # Decode the triangle index: i = floor((sqrt(8t+1) - 1) / 2), then fix a possible ±1 rounding error.
    i = ((tl.sqrt((8 * t + 1).to(tl.float32)) - 1.0) * 0.5).to(tl.int32)
    i = tl.where((i + 1) * (i + 2) // 2 <= t, i + 1, i)
    i = tl.where(i * (i + 1) // 2 > t, i - 1, i)
    j = t - i * (i + 1) // 2

    p_ptr += pid_b * stride_pb
    c_ptr += pid_b * stride_cb

    rows_i = i * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) rows of P for the tile's rows
    rows_j = j * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) rows of P for the tile's columns
    rk = tl.arange(0, BLOCK_K)
    in_i = rows_i < M
    in_j = rows_j < M
    pi_ptrs = p_ptr + rows_i[:, None] * stride_pm + rk[None, :]  # (BLOCK, BLOCK_K)
    pj_ptrs = p_ptr + rows_j[:, None] * stride_pm + rk[None, :]  # (BLOCK, BLOCK_K): Pᵀ's chunk, transposed
    acc = tile_matmul(tl.zeros((BLOCK, BLOCK), dtype=tl.float32), pi_ptrs, pj_ptrs, in_i, in_j, K, BLOCK_K, BLOCK_K,
                      BLOCK_K=BLOCK_K, A_T=False, B_T=True, ROUND_A=False, UPCAST=UPCAST, TF32X3=TF32X3)

    tile_mask = in_i[:, None] & in_j[None, :]
    if FUSE_ADD:
        add_ptr += pid_b * stride_ab
        add = tl.load(add_ptr + rows_i[:, None] * stride_am + rows_j[None, :], mask=tile_mask, other=0.0)
        acc = alpha * acc + beta * add.to(tl.float32)
    if RNE_BF16:
        acc = round_to_bf16_grid(acc)
    out = acc.to(c_ptr.dtype.element_ty)
    tl.store(c_ptr + rows_i[:, None] * stride_cm + rows_j[None, :], out, mask=tile_mask)
    if i != j:  # mirror; the diagonal tile is already complete (and is written once: deterministic)
        tl.store(c_ptr + rows_j[:, None] * stride_cm + rows_i[None, :], tl.trans(out),
                 mask=in_j[:, None] & in_i[None, :])


@triton.jit
def _ns_update_kernel(
    # pointers: X (batch, M, N) row-major, B (batch, M, M) row-major, OUT (batch, M, N) any strides
    x_ptr, b_ptr, out_ptr,
    # sizes
    M, N,
    # strides, in elements (X and B have unit innermost stride; OUT is strided so a tall result is
    # stored transposed in place: stride_om = 1 there)
    stride_xb, stride_xm, stride_bb, stride_bm, stride_ob, stride_om, stride_on,
    # epilogue scalar: OUT = alpha·X + B·X
    alpha,
    # meta-parameters
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr,  # see kernels._common.precision_flags
    TF32X3: tl.constexpr,
    RNE_BF16: tl.constexpr,
):
    """OUT = α·X + B·X, one (BLOCK_M, BLOCK_N) output tile per program. Grid: (tiles_m·tiles_n, batch)."""
    pid = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    tiles_n = tl.cdiv(N, BLOCK_N)
    pid_m = pid // tiles_n
    pid_n = pid % tiles_n

    x_ptr += pid_b * stride_xb
    b_ptr += pid_b * stride_bb
    out_ptr += pid_b * stride_ob

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    in_m = rm < M
    in_n = rn < N
    b_ptrs = b_ptr + rm[:, None] * stride_bm + rk[None, :]  # (BLOCK_M, BLOCK_K) rows of B
    x_ptrs = x_ptr + rk[:, None] * stride_xm + rn[None, :]  # (BLOCK_K, BLOCK_N) rows of X
    acc = tile_matmul(tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), b_ptrs, x_ptrs, in_m, in_n, M, BLOCK_K,
                      BLOCK_K * stride_xm, BLOCK_K=BLOCK_K, A_T=False, B_T=False, ROUND_A=False, UPCAST=UPCAST,
                      TF32X3=TF32X3)

    tile_mask = in_m[:, None] & in_n[None, :]
    x_tile = tl.load(x_ptr + rm[:, None] * stride_xm + rn[None, :], mask=tile_mask, other=0.0)
    acc += alpha * x_tile.to(tl.float32)
    store_tile(out_ptr + rm[:, None] * stride_om + rn[None, :] * stride_on, acc, tile_mask, RNE_BF16)


# ---------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------


def _check_rowmajor(t, name):
    if t.stride(-1) != 1:
        raise ValueError(f"{name} must have unit stride in its last dim (strides {t.stride()})")


def _batched(t):
    return t if t.ndim == 3 else t.unsqueeze(0)


def ns_syrk(P: torch.Tensor, *, out: torch.Tensor, alpha: float = 1.0, beta: float = 0.0,
            add: torch.Tensor | None = None, config: str | None = None) -> torch.Tensor:
    """out = P·Pᵀ, or alpha·P·Pᵀ + beta·add when `add` (symmetric, (…, M, M)) is given; P (M, K) or (B, M, K).

    Only the lower triangle of tiles is computed, and mirrored: every element of `out` is written.
    `out` and `add` must not alias P's or each other's memory. Returns `out`.
    """
    device = check_triton_device((P, "P"), (out, "out"))
    P3 = _batched(P)
    batch, M, K = P3.shape
    out3 = check_out(_batched(out), "out", (batch, M, M), dtype=P.dtype, device=device, contiguous=False)
    add3 = out3 if add is None else check_out(_batched(add), "add", out3.shape, dtype=P.dtype, device=device,
                                              contiguous=False)
    for t, name in ((P3, "P"), (out3, "out"), (add3, "add")):
        _check_rowmajor(t, name)
    tile = _resolve_config(config, batch, M, P.dtype).syrk
    _ns_syrk_kernel[(triangle_tiles(M, tile.block_m), batch)](
        p_ptr=P3, add_ptr=add3, c_ptr=out3,
        M=M, K=K,
        stride_pb=P3.stride(0), stride_pm=P3.stride(1), stride_ab=add3.stride(0), stride_am=add3.stride(1),
        stride_cb=out3.stride(0), stride_cm=out3.stride(1),
        alpha=float(alpha), beta=float(beta),
        BLOCK=tile.block_m, BLOCK_K=tile.block_k, FUSE_ADD=add is not None, **precision_flags(P.dtype),
        **tile.launch(),
    )
    return out


def ns_update(X: torch.Tensor, B: torch.Tensor, *, alpha: float, out: torch.Tensor,
              config: str | None = None) -> torch.Tensor:
    """out = alpha·X + B·X; X (M, N) or (B, M, N) row-major, B (…, M, M) row-major, out any strides.

    `out` must not overlap X or B. Returns `out`.
    """
    device = check_triton_device((X, "X"), (B, "B"), (out, "out"))
    X3 = _batched(X)
    batch, M, N = X3.shape
    B3 = check_out(_batched(B), "B", (batch, M, M), dtype=X.dtype, device=device, contiguous=False)
    out3 = check_out(_batched(out), "out", X3.shape, dtype=X.dtype, device=device, contiguous=False)
    _check_rowmajor(X3, "X")
    _check_rowmajor(B3, "B")
    tile = _resolve_config(config, batch, M, X.dtype).update
    _ns_update_kernel[(triton.cdiv(M, tile.block_m) * triton.cdiv(N, tile.block_n), batch)](
        x_ptr=X3, b_ptr=B3, out_ptr=out3,
        M=M, N=N,
        stride_xb=X3.stride(0), stride_xm=X3.stride(1), stride_bb=B3.stride(0), stride_bm=B3.stride(1),
        stride_ob=out3.stride(0), stride_om=out3.stride(1), stride_on=out3.stride(2),
        alpha=float(alpha),
        **tile.meta(), **precision_flags(X.dtype), **tile.launch(),
    )
    return out


@dataclass
class NSWorkspace:
    """Work buffers of one newton_schulz call, all in the compute dtype, wide orientation (M <= N):
    x0/x1 (batch, M, N) ping-pong iterates, gram (batch, M, M) = XXᵀ, poly (batch, M, M) = bA + cA²."""

    x0: torch.Tensor
    x1: torch.Tensor
    gram: torch.Tensor
    poly: torch.Tensor


def _workspace_shapes(batch, M, N) -> dict:
    return {"x0": (batch, M, N), "x1": (batch, M, N), "gram": (batch, M, M), "poly": (batch, M, M)}


def ns_workspace(shape, dtype: torch.dtype, device) -> NSWorkspace:
    """Allocate the work buffers for G of `shape` ((M, N) or (B, M, N)) and `dtype`."""
    *lead, rows, cols = shape
    shapes = _workspace_shapes(lead[0] if lead else 1, min(rows, cols), max(rows, cols))
    return NSWorkspace(**{name: torch.empty(s, dtype=dtype, device=device) for name, s in shapes.items()})


def newton_schulz(G: torch.Tensor, *, steps: int | None = None, coefficients: str = "quintic", eps: float = 1e-7,
                  out: torch.Tensor | None = None, workspace: NSWorkspace | None = None,
                  config: str | None = None) -> torch.Tensor:
    """Orthogonalise G (M, N) or (B, M, N), bf16 or fp32, with `steps` Newton-Schulz iterations (default: the
    coefficient set's own, kernels.reference.NS_DEFAULT_STEPS).

    Same semantics as kernels.reference.newton_schulz (returns G's shape and dtype). G may be any strided
    layout (it is read once, by the normalisation). `out` (G's shape/dtype, any strides) receives the
    result; `workspace` (from ns_workspace) avoids allocating the four work buffers; `config` forces a
    tile family from CONFIGS ("b128", "b64") instead of pick_config's choice.
    """
    # 1. check
    check_tensor(G, "G", ndim=(2, 3), dtypes=SUPPORTED_DTYPES)
    device = check_triton_device((G, "G"))
    coeffs = ns_coefficients(coefficients, steps)  # validates both (raises ValueError)
    G3 = _batched(G)
    batch, rows, cols = G3.shape
    if batch > _MAX_BATCH:
        raise ValueError(f"batch {batch} > {_MAX_BATCH} (CUDA grid axis 1 limit); split the batch")
    tall = rows > cols
    M, N = (cols, rows) if tall else (rows, cols)
    config_name = pick_config(batch, M, G.dtype) if config is None else config
    _resolve_config(config_name, batch, M, G.dtype)  # fail before any work on a bad name

    # 2. allocate (once per call)
    out = check_out(out, "out", G.shape, dtype=G.dtype, device=device, contiguous=False)
    ws = workspace if workspace is not None else ns_workspace(G.shape, G.dtype, device)
    check_workspace(ws, _workspace_shapes(batch, M, N), dtype=G.dtype, device=device, builder="ns_workspace")
    out3 = _batched(out)
    final = out3.mT if tall else out3  # (batch, M, N) view; strided when tall

    # 3. normalise per matrix in fp32: X₀ = X / (‖X‖_F·scale + eps)
    Xw = G3.mT if tall else G3  # (batch, M, N) view
    norm = torch.linalg.vector_norm(Xw, dim=(-2, -1), keepdim=True, dtype=torch.float32)
    ws.x0.copy_(Xw.float() / (norm * NS_NORM_SCALE[coefficients] + eps))

    # 4. iterate: A = XXᵀ; B = bA + cA·A; X = aX + BX (the last step stores into `out`)
    x_cur, x_next = ws.x0, ws.x1
    for step, (a, b, c) in enumerate(coeffs):
        ns_syrk(x_cur, out=ws.gram, config=config_name)
        ns_syrk(ws.gram, out=ws.poly, alpha=c, beta=b, add=ws.gram, config=config_name)
        target = final if step == len(coeffs) - 1 else x_next
        ns_update(x_cur, ws.poly, alpha=a, out=target, config=config_name)
        x_cur, x_next = x_next, x_cur
    return out


registry.register("newton_schulz", "triton", newton_schulz)
