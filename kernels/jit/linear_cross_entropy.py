"""The Triton kernels of the linear cross-entropy, one per step of a chunk of tokens:

    lce_logits_kernel      c = softcap(h @ Wᵀ + b) tiles, stored fp32, and their per-row log-sum-exp partials
    lce_loss_grad_kernel   per row: lse from the partials, the loss, then dz over c in place
    lce_grad_kernel        grad_hidden = dz @ W, or grad_weight (+)= dzᵀ @ h with fp32 accumulation across chunks

Device code only: kernels/linear_cross_entropy.py has the op's math, the chunking, the launcher, autograd and
registration.
"""

import triton
import triton.language as tl

from kernels.jit.matmul import store_tile, tile_matmul

# The SOFTCAP constexpr of the logits and loss kernels: which function bounds the logits (linear_cross_entropy
# maps the op's softcap / softcap_kind arguments to these).
SOFTCAP_NONE = 0  # c = z
SOFTCAP_TANH = 1  # c = s·tanh(z/s)                      dc/dz = 1 - (c/s)²
SOFTCAP_ALGEBRAIC = 2  # c = s·z·rsqrt(z² + s²)         dc/dz = s³/(z² + s²)^1.5 = (1 - (c/s)²)^1.5


@triton.jit
def tanh_f32(x, FAST: tl.constexpr):
    """tanh of an fp32 tile. FAST: MUFU tanh.approx.f32 (GPU only, rel. error ~2⁻¹¹). Otherwise a few-ulp
    form: sign·(1 - e)/(1 + e) with e = exp(-2|x|), and an odd Taylor polynomial (to x¹¹, truncation < 2e-9
    relative) for |x| < 0.3, where 1 - e would cancel. Both give ±1 for ±inf and NaN for NaN, as torch.tanh
    (the tests check the second form; PTX documents the first)."""
    if FAST:
        y = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True,
                                      pack=1)
    else:
        ax = tl.abs(x)
        e = tl.exp(-2.0 * ax)
        big = (1.0 - e) / (1.0 + e)
        x2 = x * x
        p = -1382.0 / 155925.0
        p = p * x2 + 62.0 / 2835.0
        p = p * x2 - 17.0 / 315.0
        p = p * x2 + 2.0 / 15.0
        p = p * x2 - 1.0 / 3.0
        p = p * x2 + 1.0
        y = tl.where(ax < 0.3, x * p, tl.where(x < 0, -big, big))
    return y


@triton.jit
def lce_logits_kernel(
    # pointers: H (M, K) row-major chunk of hidden, W (V, K) row-major, B (V,) head bias (read with HAS_BIAS only),
    # Z (M, V) fp32 capped logits, PMAX / PSUM (M, cdiv(V, BLOCK_N)) fp32 per-tile row max and Σexp(c - max)
    h_ptr, w_ptr, b_ptr, z_ptr, pmax_ptr, psum_ptr,
    # sizes: M tokens in this chunk, V vocab, K hidden
    M, V, K,
    # strides, in elements (innermost strides are 1)
    stride_hm, stride_wv, stride_zm, stride_pm,
    # softcap s and 1/s (unused with SOFTCAP_NONE)
    softcap, inv_softcap,
    # meta-parameters
    BLOCK_M: tl.constexpr,  # token rows per tile
    BLOCK_N: tl.constexpr,  # vocab columns per tile (= the width of one log-sum-exp partial)
    BLOCK_K: tl.constexpr,
    HAS_BIAS: tl.constexpr,  # z = h·Wᵀ + b: the bias is added in fp32 in the epilogue
    SOFTCAP: tl.constexpr,  # SOFTCAP_NONE / _TANH / _ALGEBRAIC: the function c = cap(z) applied in the epilogue
    FAST_TANH: tl.constexpr,  # MUFU tanh (GPU, 16-bit inputs)
    UPCAST: tl.constexpr,  # see kernels.tiles.precision_flags
    TF32X3: tl.constexpr,
):
    """One (BLOCK_M, BLOCK_N) tile of c = cap(H·Wᵀ + B), stored, plus its per-row log-sum-exp partials.

    Grid: cdiv(M, BLOCK_M)·cdiv(V, BLOCK_N), row tiles fastest, so consecutive programs share one W tile
    (W is read once from HBM; the chunk of H stays in L2).
    """
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    pid_m = pid % tiles_m
    pid_v = pid // tiles_m

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) token rows
    rv = pid_v * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) vocab columns
    rk = tl.arange(0, BLOCK_K)
    in_m = rm < M
    in_v = rv < V
    h_ptrs = h_ptr + rm[:, None] * stride_hm + rk[None, :]  # (BLOCK_M, BLOCK_K)
    w_ptrs = w_ptr + rv[:, None] * stride_wv + rk[None, :]  # (BLOCK_N, BLOCK_K): Wᵀ's chunk, transposed
    acc = tile_matmul(tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), h_ptrs, w_ptrs, in_m, in_v, K, BLOCK_K,
                      BLOCK_K, BLOCK_K=BLOCK_K, A_T=False, B_T=True, ROUND_A=False, UPCAST=UPCAST, TF32X3=TF32X3)

    if HAS_BIAS:
        acc += tl.load(b_ptr + rv, mask=in_v, other=0.0).to(tl.float32)[None, :]
    if SOFTCAP == 1:  # SOFTCAP_TANH
        acc = softcap * tanh_f32(acc * inv_softcap, FAST_TANH)
    elif SOFTCAP == 2:  # SOFTCAP_ALGEBRAIC, in the eager order (s·z)·rsqrt(z² + s²); NaN for z = ±inf, as eager's
        acc = softcap * acc * tl.math.rsqrt(acc * acc + softcap * softcap)
    z_ptrs = z_ptr + rm.to(tl.int64)[:, None] * stride_zm + rv[None, :]  # M·V can pass 2³¹
    tl.store(z_ptrs, acc, mask=in_m[:, None] & in_v[None, :])

    # Partials of the online log-sum-exp over vocab tiles; every tile has >= 1 valid column, so the max is never
    # the -inf of the padding.
    masked = tl.where(in_v[None, :], acc, float("-inf"))
    row_max = tl.max(masked, axis=1)  # (BLOCK_M,)
    row_sum = tl.sum(tl.exp(masked - row_max[:, None]), axis=1)  # (BLOCK_M,)
    p_offs = rm * stride_pm + pid_v
    tl.store(pmax_ptr + p_offs, row_max, mask=in_m)
    tl.store(psum_ptr + p_offs, row_sum, mask=in_m)


@triton.jit
def lce_loss_grad_kernel(
    # pointers: Z (M, V) fp32 capped logits (overwritten by dz when COMPUTE_GRAD), PMAX / PSUM (M, T) partials,
    # TGT (M,) targets, SCALE (1,) fp32 = 1/#non-ignored (mean) or 1 (sum), LOSS (M,) fp32 per-token loss
    z_ptr, pmax_ptr, psum_ptr, tgt_ptr, scale_ptr, loss_ptr,
    # sizes: V vocab, T = cdiv(V, the logits kernel's BLOCK_N) partials per row
    V, T,
    # strides, in elements
    stride_zm, stride_pm,
    # scalars (softcap s and 1/s unused with SOFTCAP_NONE)
    ignore_index, softcap, inv_softcap, z_loss,
    # meta-parameters
    BLOCK_V: tl.constexpr,  # vocab columns per step of the row loop
    BLOCK_T: tl.constexpr,  # partials per step of the log-sum-exp combine
    SOFTCAP: tl.constexpr,  # multiply dz by the cap's derivative, from c: SOFTCAP_NONE / _TANH / _ALGEBRAIC
    COMPUTE_GRAD: tl.constexpr,  # write dz over Z (False: loss only)
):
    """Row i: lse from the partials, loss_i, then dz_i over the row of Z in place. Grid: (M,).

    A NaN or +inf logit makes the row's lse, loss and dz NaN, as eager's log_softmax does: whether or not a
    maximum keeps the NaN (tl.maximum drops it, on the GPU and under the interpreter), it reaches the partial
    sums through exp(c - max), and exp(inf - inf) is NaN.
    """
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * stride_zm
    p_row = row * stride_pm
    rt = tl.arange(0, BLOCK_T)

    # log-sum-exp of the row: max over the tile maxima, then Σ partial_sum·exp(partial_max - max).
    mx = tl.full((BLOCK_T,), float("-inf"), tl.float32)
    for t0 in range(0, T, BLOCK_T):
        mx = tl.maximum(mx, tl.load(pmax_ptr + p_row + t0 + rt, mask=(t0 + rt) < T, other=float("-inf")))
    m = tl.max(mx, axis=0)
    acc = tl.zeros((BLOCK_T,), tl.float32)
    for t0 in range(0, T, BLOCK_T):
        in_t = (t0 + rt) < T
        pm = tl.load(pmax_ptr + p_row + t0 + rt, mask=in_t, other=float("-inf"))
        ps = tl.load(psum_ptr + p_row + t0 + rt, mask=in_t, other=0.0)
        acc += ps * tl.exp(pm - m)
    log_s = tl.log(tl.sum(acc, axis=0))
    lse = m + log_s

    target = tl.load(tgt_ptr + row).to(tl.int64)
    ignored = target == ignore_index
    in_range = (target >= 0) & (target < V)
    c_target = tl.load(z_row + target, mask=in_range & (target != ignore_index), other=0.0)
    # (m - c_t) + log_s and below (c - m) - log_s, not c - lse: lse ~ 20 carries an fp32 rounding of ~1e-6 that
    # would shift every probability (as torch's log_softmax, subtract the max first).
    loss = (m - c_target) + log_s + z_loss * lse * lse
    loss = tl.where(in_range, loss, float("nan"))  # unchecked out-of-range target: loud NaN, not a wrong loss
    loss = tl.where(ignored, 0.0, loss)
    tl.store(loss_ptr + row, loss)

    if COMPUTE_GRAD:
        g = tl.where(ignored, 0.0, tl.load(scale_ptr))  # ignored rows: dz = 0·p - 0 = exactly 0
        coef = g * (1.0 + 2.0 * z_loss * lse)  # d(lse + z·lse²)/dc = softmax·(1 + 2z·lse)
        rv = tl.arange(0, BLOCK_V)
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + rv
            in_v = cols < V
            c = tl.load(z_row + cols, mask=in_v, other=0.0)
            dz = tl.exp((c - m) - log_s) * coef - tl.where(cols == target, g, 0.0)
            if SOFTCAP == 1:  # SOFTCAP_TANH
                # d(s·tanh(z/s))/dz = 1 - tanh² = 1 - (c/s)²: exactly 0 where the logit saturated at c = ±s, as
                # eager's 1 - tanh² is (c·fl(1/s) need not round to 1), so an infinite z gives 0·inf = NaN in
                # grad_weight as in eager, not ±inf; NaN for a NaN c.
                r = c * inv_softcap
                dz = dz * tl.where(tl.abs(c) >= softcap, 0.0, 1.0 - r * r)
            elif SOFTCAP == 2:  # SOFTCAP_ALGEBRAIC
                # d(s·z·(z² + s²)^-½)/dz = s³/(z² + s²)^1.5 = t^1.5 with t = 1 - (c/s)² = s²/(z² + s²). t is clamped
                # at 0: for |z| > ~4096·s, z² + s² rounds to z² and |c| can round a little above s (the true value
                # is below s³/|z|³ ~ 1e-11); a NaN t (NaN c) stays NaN.
                r = c * inv_softcap
                t = 1.0 - r * r
                t = tl.where(t < 0.0, 0.0, t)
                dz = dz * (t * tl.sqrt_rn(t))
            tl.store(z_row + cols, dz, mask=in_v)  # same elements this program just read


@triton.jit
def lce_grad_kernel(
    # pointers: DZ (tokens, V) fp32 chunk of dz; B (K, N) row-major: W (V, H) for grad_hidden, the chunk of hidden
    # (tokens, H) for grad_weight; ACC (M, N) fp32 running sum of earlier chunks (read when ACCUMULATE; may be C
    # itself); C (M, N) output: a chunk of grad_hidden, or grad_weight (its fp32 running sum or the final gradient)
    dz_ptr, b_ptr, acc_ptr, c_ptr,
    # sizes: M output rows (tokens, or V), N hidden, K the reduction (V, or tokens)
    M, N, K,
    # strides, in elements (innermost strides are 1)
    stride_zm, stride_bk, stride_am, stride_cm,
    # meta-parameters
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DZ_T: tl.constexpr,  # False: C = DZ·B (grad_hidden); True: C = DZᵀ·B (grad_weight)
    ACCUMULATE: tl.constexpr,  # add the earlier chunks' fp32 sum from ACC (grad_weight after the first chunk)
    UPCAST: tl.constexpr,  # see kernels.tiles.precision_flags
    TF32X3: tl.constexpr,
    RNE_BF16: tl.constexpr,
):
    """C = [ACC +] DZ·B or DZᵀ·B, one (BLOCK_M, BLOCK_N) tile per program, dz rounded to B's dtype as an operand
    (as eager rounds the logits' gradient before its matmuls). Each tile is owned by one program (the
    read-add-write needs no atomics). Grid: cdiv(M, BLOCK_M)·cdiv(N, BLOCK_N), column tiles fastest."""
    pid = tl.program_id(0)
    tiles_n = tl.cdiv(N, BLOCK_N)
    pid_m = pid // tiles_n
    pid_n = pid % tiles_n

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    in_m = rm < M
    in_n = rn < N
    if DZ_T:  # (BLOCK_K tokens, BLOCK_M vocab), vocab-contiguous: DZᵀ's chunk, transposed
        dz_ptrs = dz_ptr + rk.to(tl.int64)[:, None] * stride_zm + rm[None, :]
        dz_step = BLOCK_K * stride_zm
    else:  # (BLOCK_M tokens, BLOCK_K vocab)
        dz_ptrs = dz_ptr + rm.to(tl.int64)[:, None] * stride_zm + rk[None, :]
        dz_step = BLOCK_K
    b_ptrs = b_ptr + rk[:, None] * stride_bk + rn[None, :]  # (BLOCK_K, BLOCK_N)
    acc = tile_matmul(tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), dz_ptrs, b_ptrs, in_m, in_n, K, dz_step,
                      BLOCK_K * stride_bk, BLOCK_K=BLOCK_K, A_T=DZ_T, B_T=False, ROUND_A=True, UPCAST=UPCAST,
                      TF32X3=TF32X3)

    tile_mask = in_m[:, None] & in_n[None, :]
    if ACCUMULATE:
        acc += tl.load(acc_ptr + rm[:, None] * stride_am + rn[None, :], mask=tile_mask, other=0.0)
    store_tile(c_ptr + rm[:, None] * stride_cm + rn[None, :], acc, tile_mask, RNE_BF16)
