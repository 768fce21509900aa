"""The Newton-Schulz update kernel: X ← a·X + B·X, the last of a step's three launches (the first two, A = X·Xᵀ
and B = b·A + c·A·A, are the symmetric-tile kernel of kernels/jit/gram.py).

    ns_update_kernel   one (BLOCK_M, BLOCK_N) tile of OUT = α·X + B·X per program; OUT may be strided (a tall
                       matrix's result is stored transposed in place)

Device code only: kernels/newton_schulz.py has the op's math, the configs, the launchers with their input checks,
the custom op and the registration.
"""

import triton
import triton.language as tl

from kernels.jit.matmul import store_tile, tile_matmul


@triton.jit
def ns_update_kernel(
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
    UPCAST: tl.constexpr,  # see kernels.tiles.precision_flags
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
