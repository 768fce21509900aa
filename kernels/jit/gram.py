"""The symmetric-tile Triton kernel: C = α·P·Pᵀ (+ β·ADD) computed on one triangle of tiles and mirrored.

    gram_kernel   one BLOCK×BLOCK tile (i, j), i >= j, of C per program, stored at (i, j) and transposed at (j, i)

Device code only. Its launchers: kernels/gram.py (the gram op: X·Xᵀ or Xᵀ·X, fp32 result) and
kernels/newton_schulz.py (A = X·Xᵀ and B = b·A + c·A·A of every Newton-Schulz step).
"""

import triton
import triton.language as tl

from kernels.jit.matmul import round_to_bf16_grid, tile_matmul


@triton.jit
def gram_kernel(
    # pointers: P (batch, M, K) read through stride_p (see TRANS_P), ADD (batch, M, M), C (batch, M, M); the
    # innermost strides of ADD and C are 1. ADD may be C itself (each element is read by the program that writes it).
    p_ptr, add_ptr, c_ptr,
    # sizes: M rows of P (C is M×M), K the reduction
    M, K,
    # strides, in elements. P[r, k] is at r·stride_p + k, or at k·stride_p + r when TRANS_P.
    stride_pb, stride_p, stride_ab, stride_am, stride_cb, stride_cm,
    # epilogue scalars: C = alpha·PPᵀ + beta·ADD when FUSE_ADD, else C = alpha·PPᵀ
    alpha, beta,
    # meta-parameters
    BLOCK: tl.constexpr,  # square output tile
    BLOCK_K: tl.constexpr,  # reduction chunk
    TRANS_P: tl.constexpr,  # P stored transposed (P = Xᵀ of a row-major X: the right Gram Xᵀ·X)
    FUSE_ADD: tl.constexpr,  # load ADD in the epilogue
    ADD_SYMMETRIC: tl.constexpr,  # ADD is symmetric: its (i, j) tile serves both stores; else (j, i) is read too
    EXACT_SYMMETRY: tl.constexpr,  # diagonal tiles: P·Pᵀ's lower triangle mirrored, so C is exactly symmetric
    UPCAST: tl.constexpr,  # see kernels.tiles.precision_flags
    TF32X3: tl.constexpr,
    RNE_BF16: tl.constexpr,
):
    """Symmetric rank-K product C = α·P·Pᵀ (+ β·ADD) on the lower triangle of tiles, mirrored.

    Grid: (T(T+1)/2, batch) with T = cdiv(M, BLOCK). Program t computes tile (i, j), i >= j, with
    t = i(i+1)/2 + j, stores it at (i, j) and, when i != j, its transpose at (j, i). Every element of C is
    written by exactly one program (diagonal tiles are not mirrored): deterministic, and ADD may alias C.
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
    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    if TRANS_P:  # chunks of X = Pᵀ, (BLOCK_K, BLOCK), contiguous along P's rows
        pi_ptrs = p_ptr + rk[:, None] * stride_p + rows_i[None, :]  # P's chunk, transposed
        pj_ptrs = p_ptr + rk[:, None] * stride_p + rows_j[None, :]  # Pᵀ's chunk
        acc = tile_matmul(acc, pi_ptrs, pj_ptrs, in_i, in_j, K, BLOCK_K * stride_p, BLOCK_K * stride_p,
                          BLOCK_K=BLOCK_K, A_T=True, B_T=False, ROUND_A=False, UPCAST=UPCAST, TF32X3=TF32X3)
    else:  # chunks of P, (BLOCK, BLOCK_K), contiguous along K
        pi_ptrs = p_ptr + rows_i[:, None] * stride_p + rk[None, :]  # P's chunk
        pj_ptrs = p_ptr + rows_j[:, None] * stride_p + rk[None, :]  # Pᵀ's chunk, transposed
        acc = tile_matmul(acc, pi_ptrs, pj_ptrs, in_i, in_j, K, BLOCK_K, BLOCK_K,
                          BLOCK_K=BLOCK_K, A_T=False, B_T=True, ROUND_A=False, UPCAST=UPCAST, TF32X3=TF32X3)
    if EXACT_SYMMETRY:
        if i == j:  # the MMA need not sum (a, b) and (b, a) in one order (tf32x3 does not): keep one of them
            r = tl.arange(0, BLOCK)
            acc = tl.where(r[:, None] >= r[None, :], acc, tl.trans(acc))

    tile_mask = in_i[:, None] & in_j[None, :]
    mirror_mask = in_j[:, None] & in_i[None, :]
    if FUSE_ADD:
        add_ptr += pid_b * stride_ab
        add = tl.load(add_ptr + rows_i[:, None] * stride_am + rows_j[None, :], mask=tile_mask, other=0.0)
        res = alpha * acc + beta * add.to(tl.float32)
    else:
        res = alpha * acc
    if RNE_BF16:
        res = round_to_bf16_grid(res)
    out = res.to(c_ptr.dtype.element_ty)
    tl.store(c_ptr + rows_i[:, None] * stride_cm + rows_j[None, :], out, mask=tile_mask)
    if i != j:  # mirror; the diagonal tile is already complete (and is written once: deterministic)
        if FUSE_ADD and not ADD_SYMMETRIC:
            add_t = tl.load(add_ptr + rows_j[:, None] * stride_am + rows_i[None, :], mask=mirror_mask, other=0.0)
            res_t = alpha * tl.trans(acc) + beta * add_t.to(tl.float32)
            if RNE_BF16:
                res_t = round_to_bf16_grid(res_t)
            out_t = res_t.to(c_ptr.dtype.element_ty)
        else:
            out_t = tl.trans(out)
        tl.store(c_ptr + rows_j[:, None] * stride_cm + rows_i[None, :], out_t, mask=mirror_mask)
