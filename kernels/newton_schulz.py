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
(`ns_flops`): 1.38x fewer at 768×3072, 1.5x at 768×768 (the tile-level count is a little higher).

Numerics: bf16 operands and bf16 work buffers (as the eager bf16 peer), fp32 accumulation in the tensor
cores, fp32 epilogue arithmetic, one rounding per kernel output. fp32 inputs keep fp32 buffers and use
`tl.dot(input_precision="tf32x3")` (three TF32 tensor-core products, close to fp32 accuracy) on the GPU.
The Frobenius normalisation is done with torch ops in fp32 (not in a kernel: one pass, negligible).
Under the Triton interpreter bf16 arithmetic and bf16 `tl.dot` are wrong (shared/PLATFORM.md), so the
launcher sets UPCAST=True there and tiles are converted to fp32 right after loading.

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
from kernels._common import CodegenCase, check_tensor, check_triton_device, is_interpreter, round_to_bf16_grid
from kernels.reference import NS_NORM_SCALE, ns_coefficients

# ---------------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------------

# Streaming multiprocessors of an H100 SXM. The config choice only needs "enough programs to fill the
# GPU"; a fixed number keeps the choice independent of the device (and possible on the CPU, in tests).
_NUM_SMS_HINT = 132

# CUDA caps grid axis 1 (our batch axis) at 65535.
_MAX_BATCH = 65535

SUPPORTED_DTYPES = (torch.bfloat16, torch.float32)


# ---------------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NSConfig:
    """Tiles of the two kernels. SYRK tiles are square (a tile and its mirror must have the same shape)."""

    sym_block: int  # BLOCK: rows = cols of one Gram tile
    sym_block_k: int  # BLOCK_K: reduction chunk of the Gram / A·A loop
    sym_warps: int
    sym_stages: int
    upd_block_m: int
    upd_block_n: int
    upd_block_k: int
    upd_warps: int
    upd_stages: int


# Keyed by (tile family, dtype). Chosen for the sm_90 budget, not tuned on a GPU (none was lent to this
# work, 2026-11): bf16 tiles follow the sizes modded-nanogpt reports from H100 autotuning of its XXT kernel
# (128×128×64, 8 warps) plus a 64-tile family that gives 3.7x more programs for single 768-row matrices.
# fp32 (the accuracy path, not the optimizer's) has one family with BLOCK_K 32 so its stages fit in smem.
# Every entry is compiled by codegen_cases() (bench.codegen: registers, spills, smem, HGMMA).
CONFIGS = {
    ("b128", torch.bfloat16): NSConfig(128, 64, 8, 4, 128, 128, 64, 8, 3),
    ("b64", torch.bfloat16): NSConfig(64, 64, 4, 3, 64, 128, 64, 4, 3),
    ("b64", torch.float32): NSConfig(64, 32, 4, 3, 64, 128, 32, 4, 3),
}


def _triangle_tiles(M: int, block: int) -> int:
    t = triton.cdiv(M, block)
    return t * (t + 1) // 2


def pick_config(batch: int, M: int, N: int, dtype: torch.dtype) -> str:
    """Tile family for a (batch, M, N) problem (M <= N): the large tiles once their triangle grid alone
    has a program per SM (e.g. a batch of 12 768×768 matrices), else 64-tiles (a single 768-row matrix:
    78 triangle programs instead of 21). A heuristic, unmeasured on a GPU."""
    del N  # the triangle grid (the SYRK kernels) is the one that runs short of programs
    if dtype == torch.bfloat16 and batch * _triangle_tiles(M, 128) >= _NUM_SMS_HINT:
        return "b128"
    return "b64"


def _resolve_config(name, batch, M, N, dtype) -> NSConfig:
    name = pick_config(batch, M, N, dtype) if name is None else name
    try:
        return CONFIGS[(name, dtype)]
    except KeyError:
        have = sorted(f"{n} ({str(d).removeprefix('torch.')})" for n, d in CONFIGS)
        raise ValueError(f"no Newton-Schulz config {name!r} for {dtype}; configs: {', '.join(have)}") from None


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
    UPCAST: tl.constexpr,  # convert loaded tiles to fp32 before tl.dot (the interpreter's bf16 is wrong)
    TF32X3: tl.constexpr,  # fp32 operands on tensor cores at ~fp32 accuracy (GPU fp32 path)
    RNE_BF16: tl.constexpr,  # round to nearest even before the bf16 store (interpreter: its cast truncates)
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
    pj_ptrs = p_ptr + rows_j[:, None] * stride_pm + rk[None, :]  # (BLOCK, BLOCK_K), both K-contiguous

    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        in_k = (k0 + rk) < K
        pi = tl.load(pi_ptrs, mask=in_i[:, None] & in_k[None, :], other=0.0)
        pj = tl.load(pj_ptrs, mask=in_j[:, None] & in_k[None, :], other=0.0)
        if UPCAST:
            pi = pi.to(tl.float32)
            pj = pj.to(tl.float32)
        if TF32X3:
            acc = tl.dot(pi, tl.trans(pj), acc, input_precision="tf32x3")
        else:
            acc = tl.dot(pi, tl.trans(pj), acc)
        pi_ptrs += BLOCK_K
        pj_ptrs += BLOCK_K

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
    UPCAST: tl.constexpr,  # convert loaded tiles to fp32 before tl.dot (interpreter)
    TF32X3: tl.constexpr,  # fp32 operands at ~fp32 accuracy on tensor cores (GPU fp32 path)
    RNE_BF16: tl.constexpr,  # round to nearest even before the bf16 store (interpreter: its cast truncates)
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

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, M, BLOCK_K):
        in_k = (k0 + rk) < M
        b = tl.load(b_ptrs, mask=in_m[:, None] & in_k[None, :], other=0.0)
        x = tl.load(x_ptrs, mask=in_k[:, None] & in_n[None, :], other=0.0)
        if UPCAST:
            b = b.to(tl.float32)
            x = x.to(tl.float32)
        if TF32X3:
            acc = tl.dot(b, x, acc, input_precision="tf32x3")
        else:
            acc = tl.dot(b, x, acc)
        b_ptrs += BLOCK_K
        x_ptrs += BLOCK_K * stride_xm

    tile_mask = in_m[:, None] & in_n[None, :]
    x_tile = tl.load(x_ptr + rm[:, None] * stride_xm + rn[None, :], mask=tile_mask, other=0.0)
    acc += alpha * x_tile.to(tl.float32)
    if RNE_BF16:
        acc = round_to_bf16_grid(acc)
    tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :] * stride_on, acc.to(out_ptr.dtype.element_ty),
             mask=tile_mask)


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
    check_triton_device((P, "P"), (out, "out"))
    P3, out3 = _batched(P), _batched(out)
    batch, M, K = P3.shape
    if out3.shape != (batch, M, M) or out.dtype != P.dtype:
        raise ValueError(f"out must be {(batch, M, M)} {P.dtype}, got {tuple(out.shape)} {out.dtype}")
    add3 = out3 if add is None else _batched(add)
    if add3.shape != out3.shape or add3.dtype != P.dtype:
        raise ValueError(f"add must be {tuple(out3.shape)} {P.dtype}, got {tuple(add.shape)} {add.dtype}")
    for t, name in ((P3, "P"), (out3, "out"), (add3, "add")):
        _check_rowmajor(t, name)
    cfg = _resolve_config(config, batch, M, K, P.dtype)
    interp = is_interpreter()
    grid = (_triangle_tiles(M, cfg.sym_block), batch)
    _ns_syrk_kernel[grid](
        p_ptr=P3, add_ptr=add3, c_ptr=out3,
        M=M, K=K,
        stride_pb=P3.stride(0), stride_pm=P3.stride(1), stride_ab=add3.stride(0), stride_am=add3.stride(1),
        stride_cb=out3.stride(0), stride_cm=out3.stride(1),
        alpha=float(alpha), beta=float(beta),
        BLOCK=cfg.sym_block, BLOCK_K=cfg.sym_block_k, FUSE_ADD=add is not None,
        UPCAST=interp, TF32X3=(P.dtype == torch.float32 and not interp),
        RNE_BF16=(P.dtype == torch.bfloat16 and interp),
        num_warps=cfg.sym_warps, num_stages=cfg.sym_stages,
    )
    return out


def ns_update(X: torch.Tensor, B: torch.Tensor, *, alpha: float, out: torch.Tensor,
              config: str | None = None) -> torch.Tensor:
    """out = alpha·X + B·X; X (M, N) or (B, M, N) row-major, B (…, M, M) row-major, out any strides.

    `out` must not overlap X or B. Returns `out`.
    """
    check_triton_device((X, "X"), (B, "B"), (out, "out"))
    X3, B3, out3 = _batched(X), _batched(B), _batched(out)
    batch, M, N = X3.shape
    if B3.shape != (batch, M, M) or B.dtype != X.dtype:
        raise ValueError(f"B must be {(batch, M, M)} {X.dtype}, got {tuple(B.shape)} {B.dtype}")
    if out3.shape != X3.shape or out.dtype != X.dtype:
        raise ValueError(f"out must be {tuple(X3.shape)} {X.dtype}, got {tuple(out.shape)} {out.dtype}")
    _check_rowmajor(X3, "X")
    _check_rowmajor(B3, "B")
    cfg = _resolve_config(config, batch, M, N, X.dtype)
    interp = is_interpreter()
    grid = (triton.cdiv(M, cfg.upd_block_m) * triton.cdiv(N, cfg.upd_block_n), batch)
    _ns_update_kernel[grid](
        x_ptr=X3, b_ptr=B3, out_ptr=out3,
        M=M, N=N,
        stride_xb=X3.stride(0), stride_xm=X3.stride(1), stride_bb=B3.stride(0), stride_bm=B3.stride(1),
        stride_ob=out3.stride(0), stride_om=out3.stride(1), stride_on=out3.stride(2),
        alpha=float(alpha),
        BLOCK_M=cfg.upd_block_m, BLOCK_N=cfg.upd_block_n, BLOCK_K=cfg.upd_block_k,
        UPCAST=interp, TF32X3=(X.dtype == torch.float32 and not interp),
        RNE_BF16=(X.dtype == torch.bfloat16 and interp),
        num_warps=cfg.upd_warps, num_stages=cfg.upd_stages,
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


def ns_workspace(shape, dtype: torch.dtype, device) -> NSWorkspace:
    """Allocate the work buffers for G of `shape` ((M, N) or (B, M, N)) and `dtype`."""
    *lead, rows, cols = shape
    batch = lead[0] if lead else 1
    M, N = min(rows, cols), max(rows, cols)
    kw = dict(dtype=dtype, device=device)
    return NSWorkspace(x0=torch.empty(batch, M, N, **kw), x1=torch.empty(batch, M, N, **kw),
                       gram=torch.empty(batch, M, M, **kw), poly=torch.empty(batch, M, M, **kw))


def _check_workspace(ws: NSWorkspace, batch, M, N, dtype, device):
    want = {"x0": (batch, M, N), "x1": (batch, M, N), "gram": (batch, M, M), "poly": (batch, M, M)}
    for name, shape in want.items():
        t = getattr(ws, name)
        if tuple(t.shape) != shape or t.dtype != dtype or t.device != device or not t.is_contiguous():
            raise ValueError(f"workspace.{name} must be a contiguous {shape} {dtype} tensor on {device}, got "
                             f"{tuple(t.shape)} {t.dtype} on {t.device}; build it with ns_workspace()")


def newton_schulz(G: torch.Tensor, *, steps: int = 5, coefficients: str = "quintic", eps: float = 1e-7,
                  out: torch.Tensor | None = None, workspace: NSWorkspace | None = None,
                  config: str | None = None) -> torch.Tensor:
    """Orthogonalise G (M, N) or (B, M, N), bf16 or fp32, with `steps` Newton-Schulz iterations.

    Same semantics as kernels.reference.newton_schulz (returns G's shape and dtype). G may be any strided
    layout (it is read once, by the normalisation). `out` (G's shape/dtype, any strides) receives the
    result; `workspace` (from ns_workspace) avoids allocating the four work buffers; `config` forces a
    tile family from CONFIGS ("b128", "b64") instead of pick_config's choice.
    """
    # 1. check
    check_tensor(G, "G", ndim=(2, 3), dtypes=SUPPORTED_DTYPES)
    device = check_triton_device((G, "G"))
    coeffs = ns_coefficients(coefficients, steps)  # validates both (raises ValueError)
    if out is not None:
        check_tensor(out, "out", ndim=G.ndim, dtypes=(G.dtype,))
        if out.shape != G.shape or out.device != device:
            raise ValueError(f"out must have G's shape {tuple(G.shape)} on {device}, got {tuple(out.shape)} "
                             f"on {out.device}")
    G3 = _batched(G)
    batch, rows, cols = G3.shape
    if batch > _MAX_BATCH:
        raise ValueError(f"batch {batch} > {_MAX_BATCH} (CUDA grid axis 1 limit); split the batch")
    tall = rows > cols
    M, N = (cols, rows) if tall else (rows, cols)
    config_name = pick_config(batch, M, N, G.dtype) if config is None else config
    _resolve_config(config_name, batch, M, N, G.dtype)  # fail before any work on a bad name

    # 2. allocate (once per call)
    ws = workspace if workspace is not None else ns_workspace(G.shape, G.dtype, device)
    _check_workspace(ws, batch, M, N, G.dtype, device)
    if out is None:
        out = torch.empty(G.shape, dtype=G.dtype, device=device)
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
        target = final if step == steps - 1 else x_next
        ns_update(x_cur, ws.poly, alpha=a, out=target, config=config_name)
        x_cur, x_next = x_next, x_cur
    return out


# ---------------------------------------------------------------------------------------------------
# FLOP model and codegen cases
# ---------------------------------------------------------------------------------------------------


def ns_flops(M: int, N: int, steps: int, symmetric: bool, batch: int = 1) -> float:
    """FLOPs of `steps` iterations on a (M, N) matrix (either orientation; the Gram side is min(M, N)).

    naive:     XXᵀ 2m²n + A·A 2m³ + B·X 2m²n per step.
    symmetric: the two Gram products only on their m(m+1)/2 distinct entries: m(m+1)n + m²(m+1) + 2m²n.
    naive / symmetric is the speedup ceiling of the symmetric scheme. (The kernels work on whole tiles,
    so they execute a little more than the symmetric count: T(T+1)/2 of T² tiles.)
    """
    m, n = min(M, N), max(M, N)
    if symmetric:
        per_step = m * (m + 1) * n + m * m * (m + 1) + 2 * m * m * n
    else:
        per_step = 4 * m * m * n + 2 * m**3
    return float(batch * steps * per_step)


def ns_bytes(M: int, N: int, steps: int, itemsize: int, batch: int = 1) -> float:
    """Compulsory memory traffic of `steps` fused iterations (each buffer read or written once per kernel):
    XXᵀ reads X, writes A (mn + m²); bA + cA·A reads A twice, writes B (3m²); aX + BX reads X and B,
    writes X (2mn + m²). The Gram matrices stay in L2 on an H100 at 768, so this is a floor, not a forecast."""
    m, n = min(M, N), max(M, N)
    return float(batch * steps * itemsize * (3 * m * n + 5 * m * m))


_TRITON_DTYPE = {torch.bfloat16: "bf16", torch.float32: "fp32"}


def codegen_cases() -> list[CodegenCase]:
    """Every (config, kernel specialisation) the launcher can launch, at the 124M shapes.

    SYRK on X: 768×3072 (K = 3072); SYRK on A: 768×768; update: 768×3072 with a row-major output, and a
    column-major output (the last step of a tall 3072×768 matrix, stride_om = 1). `divisible` lists what
    the JIT marks 16-divisible there (pointers, sizes, batch and row strides); unit strides are constexpr 1
    as the JIT specialises them. FLOPs are the symmetric (useful) count, bytes the compulsory traffic.
    """
    M, N = 768, 3072
    cases = []
    for (family, dtype), cfg in CONFIGS.items():
        ty, size = _TRITON_DTYPE[dtype], dtype.itemsize
        flags = {"UPCAST": False, "TF32X3": dtype == torch.float32, "RNE_BF16": False}
        syrk_sig = {"p_ptr": f"*{ty}", "add_ptr": f"*{ty}", "c_ptr": f"*{ty}", "M": "i32", "K": "i32",
                    "stride_pb": "i32", "stride_pm": "i32", "stride_ab": "i32", "stride_am": "i32",
                    "stride_cb": "i32", "stride_cm": "i32", "alpha": "fp32", "beta": "fp32",
                    "BLOCK": "constexpr", "BLOCK_K": "constexpr", "FUSE_ADD": "constexpr", "UPCAST": "constexpr",
                    "TF32X3": "constexpr", "RNE_BF16": "constexpr"}
        syrk_div = ("p_ptr", "add_ptr", "c_ptr", "M", "K", "stride_pb", "stride_pm", "stride_ab", "stride_am",
                    "stride_cb", "stride_cm")
        tiles = f"{cfg.sym_block}x{cfg.sym_block}x{cfg.sym_block_k}"
        for fuse, K, label in ((False, N, "XXt"), (True, M, "bA+cAA")):
            cases.append(CodegenCase(
                kernel="ns_syrk" + ("_poly" if fuse else "_gram"), config=f"{family} {ty} {tiles} {label}",
                fn=_ns_syrk_kernel, signature=syrk_sig,
                constexprs={"BLOCK": cfg.sym_block, "BLOCK_K": cfg.sym_block_k, "FUSE_ADD": fuse, **flags},
                divisible=syrk_div, num_warps=cfg.sym_warps, num_stages=cfg.sym_stages,
                flops=float(M * (M + 1) * K), bytes=float(size * (M * K + (2 if fuse else 1) * M * M))))
        tiles = f"{cfg.upd_block_m}x{cfg.upd_block_n}x{cfg.upd_block_k}"
        for unit, label in (("stride_on", "aX+BX"), ("stride_om", "aX+BX tall")):
            other = "stride_om" if unit == "stride_on" else "stride_on"
            sig = {"x_ptr": f"*{ty}", "b_ptr": f"*{ty}", "out_ptr": f"*{ty}", "M": "i32", "N": "i32",
                   "stride_xb": "i32", "stride_xm": "i32", "stride_bb": "i32", "stride_bm": "i32",
                   "stride_ob": "i32", "stride_om": "i32", "stride_on": "i32", "alpha": "fp32",
                   "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr", "UPCAST": "constexpr",
                   "TF32X3": "constexpr", "RNE_BF16": "constexpr"}
            sig[unit] = "constexpr"
            cases.append(CodegenCase(
                kernel="ns_update", config=f"{family} {ty} {tiles} {label}", fn=_ns_update_kernel, signature=sig,
                constexprs={unit: 1, "BLOCK_M": cfg.upd_block_m, "BLOCK_N": cfg.upd_block_n,
                            "BLOCK_K": cfg.upd_block_k, **flags},
                divisible=("x_ptr", "b_ptr", "out_ptr", "M", "N", "stride_xb", "stride_xm", "stride_bb",
                           "stride_bm", "stride_ob", other),
                num_warps=cfg.upd_warps, num_stages=cfg.upd_stages,
                flops=float(2 * M * M * N), bytes=float(size * (2 * M * N + M * M))))
    return cases


registry.register("newton_schulz", "triton", newton_schulz)
