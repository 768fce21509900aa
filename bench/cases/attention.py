"""Attention (kernels/attention.py): the benchmark case and the FLOP model. The backends are not Triton kernels of
ours, so no codegen cases."""

from bench.cases import Timed, Unavailable

PROVIDERS = ("eager", "sdpa", "flex", "fa3", "fa2", "fa4", "auto")


def attention_flops(B: int, T: int, H: int, D: int, *, causal: bool = True, backward: bool = False) -> float:
    """Matmul FLOPs of attention: 4·B·H·T²·D forward (QKᵀ and PV), halved when causal; the backward is 2.5×
    the forward (five matmuls instead of two, as FlashAttention's and Triton's benchmarks count)."""
    flops = 4.0 * B * H * T * T * D / (2 if causal else 1)
    return flops * 2.5 if backward else flops


def window_pairs(T: int, w: int) -> int:
    """Query-key pairs a causal window of w keeps: Σ_i min(i + 1, w)."""
    w = min(w, T)
    return w * (w + 1) // 2 + (T - w) * w


def doc_ids(B: int, T: int, device, *, shortest: int, longest: int, seed: int = 0):
    """(B, T) non-decreasing document ids, documents of shortest..longest tokens drawn from a fixed seed (the last
    one of a row cut at T), and the list of document lengths."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids, lengths = torch.empty(B, T, dtype=torch.long), []
    for b in range(B):
        t, doc = 0, 0
        while t < T:
            length = min(int(torch.randint(shortest, longest + 1, (1,), generator=g)), T - t)
            ids[b, t:t + length] = b * T + doc
            lengths.append(length)
            t, doc = t + length, doc + 1
    return ids.to(device), lengths


def attention_case(provider: str, B: int, T: int, H: int, D: int, *, device, dtype, backward: bool,
                   mask: str = "causal", scale: float | None = None, doc_lengths=(64, 2048)) -> Timed:
    """One attention benchmark case. fn runs the forward (no grad), or the backward of one
    retained forward graph; flops counts only the work the mask leaves. mask: causal | window (T/2) | docs
    (documents of doc_lengths tokens). Raises Unavailable naming why the provider cannot run it here."""
    import torch

    from kernels import attention_select as S
    from kernels import registry

    device = torch.device(device)
    if provider != "auto":
        why = (S.backend_unavailable_reason(provider, device) or S.dtype_unsupported_reason(provider, dtype)
               or S.head_dim_unsupported_reason(provider, D))
        if why:
            raise Unavailable(f"{provider}: {why}")
    if provider == "flex" and device.type == "cpu" and backward:
        raise Unavailable("flex: torch has no flex_attention backward on the CPU")
    attend = registry.get("attention", provider)
    kwargs = {"scale": scale} if scale else {}
    lengths = None
    if mask == "window":
        kwargs["window"] = T // 2
        flops = attention_flops(B, T, H, D, backward=backward) * window_pairs(T, T // 2) / (T * (T + 1) / 2)
    elif mask == "docs":
        kwargs["doc_ids"], lengths = doc_ids(B, T, device, shortest=doc_lengths[0], longest=doc_lengths[1])
        flops = sum(attention_flops(1, L, H, D, backward=backward) for L in lengths)
    elif mask == "causal":
        flops = attention_flops(B, T, H, D, backward=backward)
    else:
        raise ValueError(f"mask must be causal, window or docs, got {mask!r}")
    q, k, v = (torch.randn(B, T, H, D, device=device, dtype=dtype, requires_grad=backward) for _ in range(3))
    fields = {"shape": [B, T, H, D], "dtype": str(dtype).removeprefix("torch."), "window": kwargs.get("window"),
              "documents": len(lengths) if lengths else None, "backend": S.select_backend(provider, device, dtype, D)}
    if not backward:
        def fwd():
            with torch.no_grad():
                return attend(q, k, v, **kwargs)

        return Timed(fwd, flops, 0.0, fields)
    out = attend(q, k, v, **kwargs)
    grad = torch.randn_like(out)

    def bwd():
        for t in (q, k, v):
            t.grad = None
        out.backward(grad, retain_graph=True)

    return Timed(bwd, flops, 0.0, fields)
