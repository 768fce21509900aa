"""The Triton kernel of the ReLU² MLP: one matmul whose epilogue applies relu(·)² (forward) or its derivative
(backward).

    relu2_mm_kernel   C = relu(A·B [+ BIAS])² (EPILOGUE_RELU2: a from x, w_fc, b_fc) or
                      C = (A·B) · 2·sqrt(AUX) (EPILOGUE_DRELU2: dH from dy, w_proj and AUX = a)

C = epilogue(A·B) with A (M, K) and B addressed as B[k, n] through strides (forward: B = w_fcᵀ, K-contiguous;
backward: B = w_proj, N-contiguous). One (BLOCK_M, BLOCK_N) tile per program, fp32 accumulation on the tensor
cores, fp32 epilogue, one rounding at the store. Tile order: GROUP_M-swizzled (programs walk GROUP_M tile-rows
column by column, so a wave of programs shares A row-blocks and B column-blocks in L2). Edges are masked (loads
with other=0, masked stores): no alignment assumption. The backward epilogue runs on two column halves of the
tile (fewer live registers: no spills on sm_90). The epilogues select rather than take maxima, so NaN and inf
land where eager's do. Interpreter and fp32 switches (UPCAST, RNE_BF16, TF32X3): kernels.tiles.precision_flags.

Device code only: kernels/relu2_mlp.py has the op's math, the configs and autotuning, the launchers with their
input checks, the autograd formula, the custom ops and the registration.
"""

import triton
import triton.language as tl

from kernels.jit.matmul import store_tile, tile_matmul

# Epilogue selectors (a tl.constexpr: the unused branch is not compiled).
EPILOGUE_RELU2 = 1  # C = relu(acc)²
EPILOGUE_DRELU2 = 2  # C = acc · 2·sqrt(AUX), AUX = relu(h)² saved by the forward


@triton.jit
def _epilogue(acc, rm, rn, M, N, aux_ptr, bias_ptr, c_ptr, stride_xm, stride_xn, stride_cm, stride_cn,
              EPILOGUE: tl.constexpr, HAS_BIAS: tl.constexpr, RNE_BF16: tl.constexpr):
    """Store epilogue(acc) at rows rm, columns rn of C (masked); acc is fp32 (len(rm), len(rn))."""
    tile_mask = (rm < M)[:, None] & (rn < N)[None, :]
    rm64 = rm.to(tl.int64)
    rn64 = rn.to(tl.int64)
    # NaN and inf go where eager's go: selects on the finite condition, not tl.maximum (which drops a NaN).
    if EPILOGUE == 1:  # EPILOGUE_RELU2: a = relu(h)², h = acc (+ bias[n]); NaN for a NaN h
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        r = tl.where(acc < 0.0, 0.0, acc)
        out = r * r
    else:  # EPILOGUE_DRELU2: dH = dA · 2·relu(h), relu(h) = sqrt(a); exactly 0 where a = 0 (h <= 0), whatever dA
        # is (a NaN or inf dA too: eager's relu backward selects 0 there), NaN where a is NaN
        aux = tl.load(aux_ptr + rm64[:, None] * stride_xm + rn64[None, :] * stride_xn, mask=tile_mask, other=0.0)
        two_r = 2.0 * tl.sqrt_rn(aux.to(tl.float32))  # 0 exactly where a = 0; NaN where a is NaN
        out = tl.where(two_r == 0.0, 0.0, acc * two_r)
    store_tile(c_ptr + rm64[:, None] * stride_cm + rn64[None, :] * stride_cn, out, tile_mask, RNE_BF16)


@triton.jit
def relu2_mm_kernel(
    # pointers: A (M, K); B addressed as B[k, n]; AUX (M, N) (read by EPILOGUE_DRELU2 only); BIAS (N,) (read by
    # EPILOGUE_RELU2 with HAS_BIAS only); C (M, N)
    a_ptr, b_ptr, aux_ptr, bias_ptr, c_ptr,
    # sizes
    M, N, K,
    # strides, in elements
    stride_am, stride_ak, stride_bk, stride_bn, stride_xm, stride_xn, stride_cm, stride_cn,
    # meta-parameters
    EPILOGUE: tl.constexpr,  # EPILOGUE_RELU2 (forward) or EPILOGUE_DRELU2 (backward)
    HAS_BIAS: tl.constexpr,  # forward: h = A·B + BIAS (the up projection's bias), before relu²
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,  # tile-rows per swizzle group (L2 reuse)
    UPCAST: tl.constexpr,  # see kernels.tiles.precision_flags
    TF32X3: tl.constexpr,
    RNE_BF16: tl.constexpr,
):
    """C = relu(A·B [+ BIAS])² (EPILOGUE_RELU2) or C = (A·B) · 2·sqrt(AUX) (EPILOGUE_DRELU2); one tile per program.

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
    # the AUX tile, its pointers and the converted output of only half the tile are live at once (what that
    # does to registers and spills on sm_90: docs/kernels/relu2_mlp.md).
    if EPILOGUE == 2:
        halves = tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))  # (BLOCK_M, BLOCK_N/2, 2)
        acc0, acc1 = tl.split(halves)  # columns [0, BLOCK_N/2) and [BLOCK_N/2, BLOCK_N)
        rn0 = pid_n * BLOCK_N + tl.arange(0, BLOCK_N // 2)
        _epilogue(acc0, rm, rn0, M, N, aux_ptr, bias_ptr, c_ptr, stride_xm, stride_xn, stride_cm, stride_cn, EPILOGUE,
                  False, RNE_BF16)
        _epilogue(acc1, rm, rn0 + BLOCK_N // 2, M, N, aux_ptr, bias_ptr, c_ptr, stride_xm, stride_xn, stride_cm,
                  stride_cn, EPILOGUE, False, RNE_BF16)
    else:
        _epilogue(acc, rm, rn, M, N, aux_ptr, bias_ptr, c_ptr, stride_xm, stride_xn, stride_cm, stride_cn, EPILOGUE,
                  HAS_BIAS, RNE_BF16)
