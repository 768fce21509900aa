"""ReLU² MLP (kernels/relu2_mlp.py, its kernel in kernels/jit/relu2_mlp.py): FLOP and byte models, sm_90 codegen
cases."""

import torch

from bench.cases import jit_case
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
