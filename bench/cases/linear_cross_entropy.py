"""Linear cross-entropy (kernels/linear_cross_entropy.py, its kernels in kernels/jit/linear_cross_entropy.py): the
benchmark case, FLOP and byte models, sm_90 codegen cases."""

import torch
import triton

from bench import modded
from bench.cases import Timed, Unavailable, compiled, dtype_name, jit_case
from kernels import linear_cross_entropy as lce
from kernels import registry
from kernels.jit import linear_cross_entropy as K
from kernels.tiles import TRITON_DTYPE, precision_flags

# The 124M shape the codegen rows are labelled with: 8192 tokens (chunks of 4096 at the default budget),
# d = 768, GPT-2 vocab padded to 50304.
SPEEDRUN_N, SPEEDRUN_H, SPEEDRUN_V = 8192, 768, 50304


def lce_flops(N: int, H: int, V: int) -> float:
    """Matmul FLOPs of loss + both gradients: logits, grad_hidden, grad_weight, 2·N·H·V each."""
    return 6.0 * N * H * V


def lce_bytes(N: int, H: int, V: int, itemsize: int, chunk_rows: int) -> float:
    """Compulsory HBM traffic of one call: hidden and weight read by the two matmuls that use each, the
    grads written once, the fp32 chunk buffer written (logits), read + written (dz), read twice (the grad
    matmuls): 20 B per logit; plus the fp32 grad_weight running sum (written, read + written per middle
    chunk, read by the last)."""
    chunks = triton.cdiv(N, chunk_rows)
    io = itemsize * (2 * N * H + 2 * V * H + N * H + V * H)
    logits = 20.0 * N * V
    acc = 4.0 * V * H * max(0, 2 * chunks - 2)  # fp32 inputs: the same traffic, in grad_weight itself
    return float(io + logits + acc)


PROVIDERS = ("eager", "compile", "triton", "chunked", "liger", "modded")
IGNORED_FRACTION = 0.05  # a few ignore_index tokens, as padded batches have
# modded-nanogpt's LM head scales (train_gpt.py, CastedLinearT(..., x_s=100/448, w_s=1.6/448, grad_s=0.75/448)).
MODDED_SCALES = {"x_s": 100 / 448, "w_s": 1.6 / 448, "grad_s": 0.75 / 448}


def make_inputs(N, H, V, device, dtype, ignored_fraction=IGNORED_FRACTION):
    """hidden (N, H) and weight (V, H) leaves that need grad, at the model's scale, and targets with some ignored."""
    hidden = torch.randn(N, H, device=device).to(dtype).requires_grad_()
    weight = (torch.randn(V, H, device=device) / H**0.5).to(dtype).requires_grad_()
    targets = torch.randint(0, V, (N,), device=device)
    targets[torch.rand(N, device=device) < ignored_fraction] = -100
    return hidden, weight, targets


def lce_case(provider: str, N: int, H: int, V: int, *, device, dtype: torch.dtype, softcap: float | None,
              softcap_kind: str = "tanh", bias: bool = False, reduction: str = "mean",
              compile_backend: str | None = None, modded_path=None) -> Timed:
    """One forward + backward of the LM head loss (hidden (N, H) @ weightᵀ (+ bias), softcap, cross-entropy; the
    gradients of every leaf), as `provider`: eager (kernels.reference, as the model calls it), compile, triton
    (kernels.linear_cross_entropy), chunked (kernels.linear_cross_entropy_chunked, any device), liger (Liger-Kernel's
    fused linear cross-entropy; tanh softcap only, CUDA) or modded (modded-nanogpt's FusedSoftcappedCrossEntropy:
    fp8 head, its own sigmoid cap, no bias, vocabulary 50304, sm_90; a speed peer, not the same function). One
    mode: the fused kernels finish the gradients during forward, so a forward-only time would not compare like
    with like. Each call allocates its gradients, as a training step."""
    hidden, weight, targets = make_inputs(N, H, V, device, dtype)
    b = torch.zeros(V, device=device, dtype=dtype, requires_grad=True) if bias else None
    leaves = [hidden, weight] + ([b] if bias else [])
    fields = {"shape": [N, H, V], "dtype": dtype_name(dtype), "softcap": softcap, "softcap_kind": softcap_kind,
              "bias": bias, "reduction": reduction, "logits_mb": N * V * 4 / 2**20}
    if provider in ("eager", "compile", "triton", "chunked"):
        f = registry.get("linear_cross_entropy", "eager" if provider == "compile" else provider)
        if provider == "compile":
            f = compiled(f, compile_backend)
        kwargs = {"softcap": softcap, "softcap_kind": softcap_kind, "reduction": reduction, "bias": b}

        def loss_fn():
            return f(hidden, weight, targets, **kwargs)
    elif provider == "liger":
        if torch.device(device).type != "cuda":
            raise Unavailable("liger: Liger-Kernel's Triton kernels are timed on CUDA tensors only")
        try:
            from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy as liger
        except Exception as exc:  # noqa: BLE001 - any import failure means "not here"
            raise Unavailable(f"liger: liger-kernel does not import ({type(exc).__name__}: {exc})") from None
        capped = softcap if softcap_kind == "tanh" else None
        if softcap is not None and capped is None:
            fields["note"] = f"Liger has no {softcap_kind} softcap: timed without one"

        def loss_fn():
            return liger(hidden, weight, targets, bias=b, softcap=capped, reduction=reduction)
    elif provider == "modded":
        try:
            fused = modded.peer(modded_path, "FusedSoftcappedCrossEntropy", device)
        except modded.ModdedUnavailable as exc:
            raise Unavailable(f"modded: {exc}") from None
        if V != modded.CE_VOCAB:
            raise Unavailable(f"modded: FusedSoftcappedCrossEntropy is compiled for vocabulary {modded.CE_VOCAB}, "
                              f"not {V}")
        weight_t = weight.detach().T.contiguous().requires_grad_()  # their head stores (H, V)
        leaves = [hidden, weight_t]
        s = MODDED_SCALES
        fields["note"] = ("modded-nanogpt's fp8 head + A·sigmoid((z+B)/C) cap (A=23, B=5, C=7.5), loss summed, no "
                          "bias: a speed peer, not the same function")

        def loss_fn():
            return fused.apply(hidden, targets, None, None, None, weight_t, s["x_s"], s["w_s"], s["grad_s"],
                               1.0).sum()
    else:
        raise ValueError(f"unknown linear_cross_entropy provider {provider!r}; choose from {PROVIDERS}")

    def step():
        loss = loss_fn()
        loss.backward()
        for t in leaves:
            t.grad = None  # after the peak: each call allocates its gradients, as a training step
        return loss.detach()

    return Timed(step, flops=lce_flops(N, H, V),
                 bytes=lce_bytes(N, H, V, dtype.itemsize, lce.pick_chunk_rows(N, V, 128)), fields=fields)


# The logits-kernel variants compiled per config: (softcap kind, head bias). 16-bit: the speedrun's tanh head, no
# softcap, and track 3's algebraic softcap with a bias; fp32 (the accuracy path) runs the two capped forms.
LOGITS_VARIANTS = {False: (("tanh", False), ("none", False), ("algebraic", True)),
                   True: (("tanh", False), ("algebraic", True))}
SOFTCAP_CODES = {"none": K.SOFTCAP_NONE, "tanh": K.SOFTCAP_TANH, "algebraic": K.SOFTCAP_ALGEBRAIC}


def codegen_cases() -> list:
    """Every (config, kernel specialisation) the launcher can run on a GPU, at the 124M shape: per config and
    dtype, logits (LOGITS_VARIANTS), loss/grad with each softcap's derivative, grad_hidden, and grad_weight in
    its three forms (first chunk to the fp32 sum; a middle chunk read-add-write; the last chunk storing the input
    dtype; fp32 has no last form). FLOPs and bytes are one launch on a 4096-row chunk."""
    N, H, V = SPEEDRUN_N, SPEEDRUN_H, SPEEDRUN_V
    cases = []
    for (name, dtype), cfg in lce.CONFIGS.items():
        ty, size = TRITON_DTYPE[dtype], dtype.itemsize
        fp32 = dtype == torch.float32
        flags = precision_flags(dtype, interpreter=False)
        label = f"{name} {ty}"
        M = lce.pick_chunk_rows(N, V, cfg.logits.block_m)
        lg, T = cfg.logits, triton.cdiv(V, cfg.logits.block_n)

        for kind, bias in LOGITS_VARIANTS[fp32]:
            args = dict(h_ptr=dtype, w_ptr=dtype, b_ptr=dtype, z_ptr=torch.float32, pmax_ptr=torch.float32,
                        psum_ptr=torch.float32, M=M, V=V, K=H, stride_hm=H, stride_wv=H, stride_zm=V, stride_pm=T,
                        softcap=15.0, inv_softcap=1 / 15.0, **lg.meta(), HAS_BIAS=bias, SOFTCAP=SOFTCAP_CODES[kind],
                        FAST_TANH=not fp32, UPCAST=flags["UPCAST"], TF32X3=flags["TF32X3"])
            cases.append(jit_case(
                "lce_logits", f"{label} {lg.block_m}x{lg.block_n}x{lg.block_k} {kind}" + (" bias" if bias else ""),
                K.lce_logits_kernel, args, num_warps=lg.warps, num_stages=lg.stages, flops=2 * M * V * H,
                bytes=size * (M * H + V * H) + 4 * M * V))

        for kind in ("tanh", "algebraic"):
            args = dict(z_ptr=torch.float32, pmax_ptr=torch.float32, psum_ptr=torch.float32, tgt_ptr=torch.int64,
                        scale_ptr=torch.float32, loss_ptr=torch.float32, V=V, T=T, stride_zm=V, stride_pm=T,
                        ignore_index=-100, softcap=15.0, inv_softcap=1 / 15.0, z_loss=0.0, BLOCK_V=cfg.loss.block_v,
                        BLOCK_T=cfg.loss.block_t, SOFTCAP=SOFTCAP_CODES[kind], COMPUTE_GRAD=True)
            cases.append(jit_case(
                "lce_loss_grad", f"{label} {cfg.loss.block_v}/{cfg.loss.block_t} {kind}", K.lce_loss_grad_kernel,
                args, num_warps=cfg.loss.warps, num_stages=1, bytes=8 * M * V, expect_hgmma=False))

        gh = cfg.grad_hidden
        args = dict(dz_ptr=torch.float32, b_ptr=dtype, acc_ptr=dtype, c_ptr=dtype, M=M, N=H, K=V, stride_zm=V,
                    stride_bk=H, stride_am=H, stride_cm=H, **gh.meta(), DZ_T=False, ACCUMULATE=False, **flags)
        cases.append(jit_case(
            "lce_grad_hidden", f"{label} {gh.block_m}x{gh.block_n}x{gh.block_k}", K.lce_grad_kernel, args,
            num_warps=gh.warps, num_stages=gh.stages, flops=2 * M * V * H, bytes=4 * M * V + size * (V * H + M * H)))

        gw = cfg.grad_weight
        forms = [("first", False, torch.float32), ("middle", True, torch.float32)] + ([] if fp32 else
                                                                                      [("last", True, dtype)])
        for form, accumulate, out_dtype in forms:
            args = dict(dz_ptr=torch.float32, b_ptr=dtype, acc_ptr=torch.float32, c_ptr=out_dtype, M=V, N=H, K=M,
                        stride_zm=V, stride_bk=H, stride_am=H, stride_cm=H, **gw.meta(), DZ_T=True,
                        ACCUMULATE=accumulate, **flags)
            cases.append(jit_case(
                "lce_grad_weight", f"{label} {gw.block_m}x{gw.block_n}x{gw.block_k} {form}", K.lce_grad_kernel,
                args, num_warps=gw.warps, num_stages=gw.stages, flops=2 * M * V * H,
                bytes=4 * M * V + size * M * H + (4 * V * H if accumulate else 0) + out_dtype.itemsize * V * H))
    return cases
