"""Attention (kernels/attention.py): the FLOP model. The backends are not Triton kernels of ours, so no codegen
cases."""


def attention_flops(B: int, T: int, H: int, D: int, *, causal: bool = True, backward: bool = False) -> float:
    """Matmul FLOPs of attention: 4·B·H·T²·D forward (QKᵀ and PV), halved when causal; the backward is 2.5×
    the forward (five matmuls instead of two, as FlashAttention's and Triton's benchmarks count)."""
    flops = 4.0 * B * H * T * T * D / (2 if causal else 1)
    return flops * 2.5 if backward else flops
