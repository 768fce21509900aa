"""ReLU² MLP (kernels/relu2_mlp.py, its kernel in kernels/jit/relu2_mlp.py): FLOP and byte models, sm_90 codegen
cases."""

import contextlib

import torch
import torch.nn.functional as F

from bench import modded
from bench.cases import Timed, Unavailable, compiled, dtype_name, jit_case
from kernels import registry
from kernels import relu2_mlp as r2
from kernels.jit import relu2_mlp as K
from kernels.tiles import TRITON_DTYPE, precision_flags

# The 124M MLP at 8192 tokens (4 sequences of 2048): N tokens, H = n_embd, F = 4·n_embd.
CODEGEN_SHAPE = (8192, 768, 3072)


def mlp_flops(N: int, H: int, F: int, mode: str) -> float:
    """Matmul FLOPs: forward 2 GEMMs (4NHF), backward 4 GEMMs (8NHF), full 12NHF."""
    return float({"forward": 4, "backward": 8, "full": 12}[mode] * N * H * F)


def mlp_bytes(N: int, H: int, F: int, mode: str, itemsize: int) -> float:
    """Compulsory HBM traffic of the Triton path, each launch reading its operands and writing its result
    once. Forward: up+relu² reads x, w_fc, writes a; down reads a, w_proj, writes y. Backward: dH reads dy,
    w_proj, a, writes dH; dx reads dH, w_fc, writes dx; dW_fc reads dH, x, writes dW_fc; dW_proj reads dy, a,
    writes dW_proj."""
    nh, hf, nf = N * H, H * F, N * F
    fwd = (nh + hf + nf) + (nf + hf + nh)
    bwd = (nh + hf + 2 * nf) + (nf + hf + nh) + (nf + nh + hf) + (nh + nf + hf)
    return float(itemsize * {"forward": fwd, "backward": bwd, "full": fwd + bwd}[mode])


PROVIDERS = ("eager", "compile", "triton", "liger", "modded")
MODES = ("forward", "backward", "full")


def _provider_fn(provider: str, device, biases: bool, compile_backend, modded_path):
    """(f(x, w_fc, w_proj, **biases), note) for one provider."""
    if provider in ("eager", "triton"):
        return registry.get("relu2_mlp", provider), None
    if provider == "compile":
        # A backward timed with retain_graph=True many times: no donated buffers in that graph (a graph compiled
        # for a single backward may reuse its saved buffers and then refuses the second call).
        import torch._functorch.config as functorch_config

        f = compiled(registry.get("relu2_mlp", "eager"), compile_backend)

        def call(*args, **kwargs):
            patch = functorch_config.patch(donated_buffer=False) if hasattr(functorch_config, "donated_buffer") \
                else contextlib.nullcontext()
            with patch:
                return f(*args, **kwargs)

        return call, None
    if provider == "liger":
        if torch.device(device).type != "cuda":
            raise Unavailable("liger: Liger-Kernel's Triton kernels are timed on CUDA tensors only")
        try:
            from liger_kernel.transformers.functional import liger_relu_squared
        except Exception as exc:  # noqa: BLE001 - any import failure means "not here"
            raise Unavailable(f"liger: liger-kernel does not import ({type(exc).__name__}: {exc})") from None

        def mlp(x, w_fc, w_proj, b_fc=None, b_proj=None):
            return F.linear(liger_relu_squared(F.linear(x, w_fc, b_fc)), w_proj, b_proj)

        return mlp, "cuBLAS GEMMs around Liger's relu² kernel"
    if provider == "modded":
        if biases:
            raise Unavailable("modded: FusedLinearReLUSquareFunction has no biases")
        try:
            fused = modded.peer(modded_path, "FusedLinearReLUSquareFunction", device)
        except modded.ModdedUnavailable as exc:
            raise Unavailable(f"modded: {exc}") from None

        def mlp(x, w_fc, w_proj_t):
            return fused.apply(x, w_fc, w_proj_t)

        return mlp, "modded-nanogpt's FusedLinearReLUSquare (bf16 path), W2 = w_projᵀ stored (F, H)"
    raise ValueError(f"unknown relu2_mlp provider {provider!r}; choose from {PROVIDERS}")


def mlp_case(provider: str, N: int, H: int, F_: int, *, mode: str, device, dtype: torch.dtype, biases: bool = False,
             compile_backend: str | None = None, modded_path=None) -> Timed:
    """x (N, H) → relu(x w_fcᵀ (+ b_fc))² w_projᵀ (+ b_proj) → (N, H), as `provider`: eager (kernels.reference, as
    the model calls it), compile, triton (kernels.relu2_mlp), liger (Liger's relu² between cuBLAS GEMMs; CUDA)
    or modded (modded-nanogpt's FusedLinearReLUSquareFunction; CUDA, bf16, no biases). mode: forward (with
    autograd recording), backward (of one retained graph; grads reset each call) or full (forward + backward)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    f, note = _provider_fn(provider, device, biases, compile_backend, modded_path)
    x = torch.randn(N, H, device=device).to(dtype).requires_grad_()
    w_fc = (torch.randn(F_, H, device=device) / H**0.5).to(dtype).requires_grad_()
    w_proj = (torch.randn(H, F_, device=device) / F_**0.5).to(dtype)
    if provider == "modded":
        w_proj = w_proj.T.contiguous()  # their W2 is (F, H): post @ W2
    w_proj.requires_grad_()
    extra = {}
    if biases:
        extra = {"b_fc": torch.zeros(F_, device=device, dtype=dtype, requires_grad=True),
                 "b_proj": torch.zeros(H, device=device, dtype=dtype, requires_grad=True)}
    leaves = [x, w_fc, w_proj, *extra.values()]
    dy = torch.randn(N, H, device=device).to(dtype)

    def clear_grads():
        for t in leaves:
            t.grad = None

    if mode == "forward":
        def fn():
            return f(x, w_fc, w_proj, **extra)
    elif mode == "backward":
        y = f(x, w_fc, w_proj, **extra)

        def fn():
            clear_grads()
            y.backward(dy, retain_graph=True)
    else:
        def fn():
            clear_grads()
            f(x, w_fc, w_proj, **extra).backward(dy)

    fields = {"shape": {"N": N, "H": H, "F": F_}, "dtype": dtype_name(dtype), "mode": mode, "biases": biases,
              "note": note}
    return Timed(fn, flops=mlp_flops(N, H, F_, mode), bytes=mlp_bytes(N, H, F_, mode, dtype.itemsize), fields=fields)


def codegen_cases() -> list:
    """Every (config, dtype, epilogue) the GPU launch can pick, at the 124M shape; the forward with and without
    the up projection's bias (track 3 has one). Forward: A = x (N, H), B = w_fcᵀ (stride_bk = 1), C = a (N, F).
    Backward: A = dy (N, H), B = w_proj (stride_bn = 1), AUX = a, C = dH. FLOPs and bytes are one launch."""
    N, H, F = CODEGEN_SHAPE
    cases = []
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        ty, size = TRITON_DTYPE[dtype], dtype.itemsize
        for epilogue, bias in ((K.EPILOGUE_RELU2, False), (K.EPILOGUE_RELU2, True), (K.EPILOGUE_DRELU2, False)):
            backward = epilogue == K.EPILOGUE_DRELU2
            stride_bk, stride_bn = (F, 1) if backward else (1, H)
            for tile in r2.usable_configs(dtype):
                args = dict(a_ptr=dtype, b_ptr=dtype, aux_ptr=dtype, bias_ptr=dtype, c_ptr=dtype, M=N, N=F, K=H,
                            stride_am=H, stride_ak=1, stride_bk=stride_bk, stride_bn=stride_bn, stride_xm=F,
                            stride_xn=1, stride_cm=F, stride_cn=1, EPILOGUE=epilogue, HAS_BIAS=bias, **tile.meta(),
                            GROUP_M=r2.GROUP_M, **precision_flags(dtype, interpreter=False))
                cases.append(jit_case(
                    f"relu2_mm_{'bwd' if backward else 'fwd'}", f"{ty} {tile.name}" + (" bias" if bias else ""),
                    K.relu2_mm_kernel, args, num_warps=tile.warps, num_stages=tile.stages, flops=2 * N * H * F,
                    bytes=size * (N * H + H * F + (2 if backward else 1) * N * F + (F if bias else 0)),
                    extra={"epilogue": "bwd drelu2" if backward else "fwd relu2" + (" + bias" if bias else "")}))
    return cases
