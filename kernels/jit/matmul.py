"""Device-side building blocks of every Triton matmul kernel of the project: the K loop of one output tile
(tile_matmul), operand rounding (as_operand, round_to_bf16_grid) and the rounding store (store_tile).

Their numerics switches (UPCAST, TF32X3, RNE_BF16) come from kernels.tiles.precision_flags.
"""

import triton
import triton.language as tl


@triton.jit
def round_to_bf16_grid(x):
    """Round fp32 `x` to the nearest bf16 value, ties to even, keeping fp32 type (NaN and inf pass through).

    The interpreter's fp32->bf16 cast truncates while the GPU's cvt.rn rounds to nearest even; after this the
    cast is exact, so interpreted results carry the GPU's rounding.
    """
    bits = x.to(tl.int32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536  # -65536 = 0xFFFF0000: clear 16 low mantissa bits
    return tl.where(x != x, x, rounded.to(tl.float32, bitcast=True))


@triton.jit
def as_operand(x, DTYPE: tl.constexpr, UPCAST: tl.constexpr):
    """An fp32 tile as a tensor-core operand of DTYPE: cast (round to nearest even) on the GPU; under the
    interpreter (UPCAST) rounded to DTYPE's grid but kept fp32, since bf16 math is wrong there."""
    if DTYPE == tl.float32:
        y = x
    elif not UPCAST:
        y = x.to(DTYPE)
    elif DTYPE == tl.bfloat16:
        y = round_to_bf16_grid(x)
    else:
        y = x.to(DTYPE).to(tl.float32)
    return y


@triton.jit
def tile_matmul(acc, a_ptrs, b_ptrs, in_m, in_n, K, step_a, step_b, BLOCK_K: tl.constexpr,
                A_T: tl.constexpr, B_T: tl.constexpr, ROUND_A: tl.constexpr, UPCAST: tl.constexpr,
                TF32X3: tl.constexpr):
    """acc + A[rows, :K]·B[:K, cols] for one output tile, in fp32, BLOCK_K of the reduction at a time.

    a_ptrs points at the first chunk of A's rows, (BLOCK_M, BLOCK_K), or at its transpose (BLOCK_K, BLOCK_M)
    when A_T (A stored with its rows contiguous); b_ptrs at B's first (BLOCK_K, BLOCK_N) chunk, or its transpose
    when B_T. They advance by step_a / step_b elements a chunk. in_m / in_n mask the tile's rows / columns; the
    K edge is masked here (loads outside give 0). ROUND_A: A is fp32 and is rounded to B's dtype first (as
    eager autograd rounds a gradient before its matmul). UPCAST / TF32X3: see kernels.tiles.precision_flags.
    """
    rk = tl.arange(0, BLOCK_K)
    for k0 in range(0, K, BLOCK_K):
        in_k = (k0 + rk) < K
        if A_T:
            a = tl.load(a_ptrs, mask=in_k[:, None] & in_m[None, :], other=0.0)
        else:
            a = tl.load(a_ptrs, mask=in_m[:, None] & in_k[None, :], other=0.0)
        if B_T:
            b = tl.load(b_ptrs, mask=in_n[:, None] & in_k[None, :], other=0.0)
        else:
            b = tl.load(b_ptrs, mask=in_k[:, None] & in_n[None, :], other=0.0)
        if ROUND_A:
            a = as_operand(a, b_ptrs.dtype.element_ty, UPCAST)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        if A_T:
            a = tl.trans(a)
        if B_T:
            b = tl.trans(b)
        if TF32X3:
            acc = tl.dot(a, b, acc, input_precision="tf32x3")
        else:
            acc = tl.dot(a, b, acc)
        a_ptrs += step_a
        b_ptrs += step_b
    return acc


@triton.jit
def store_tile(ptrs, x, mask, RNE_BF16: tl.constexpr):
    """Store fp32 `x` at `ptrs` (masked) in the pointers' dtype, one rounding. RNE_BF16
    (kernels.tiles.precision_flags): round to the bf16 grid first when that dtype is bf16."""
    if RNE_BF16:
        if ptrs.dtype.element_ty == tl.bfloat16:
            x = round_to_bf16_grid(x)
    tl.store(ptrs, x.to(ptrs.dtype.element_ty), mask=mask)
