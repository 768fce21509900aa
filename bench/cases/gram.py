"""gram (kernels/gram.py; its kernel: kernels/jit/gram.py): FLOP and byte models, track-3 shapes, sm_90 codegen
cases."""

import torch

from bench.cases import jit_case
from kernels import gram as g
from kernels.jit.gram import gram_kernel
from kernels.tiles import TRITON_DTYPE, precision_flags
from model.config import model_preset


def track3_matrices() -> dict:
    """The track-3 model's hidden matrices by shape, {name: (rows, cols)}: what Shampoo / SOAP keep statistics of.
    Attention q, k, v and proj are d×d, the MLP's c_fc (4d, d) and c_proj (d, 4d); d = 768."""
    cfg = model_preset("track3")
    d, f = cfg.n_embd, cfg.mlp_ratio * cfg.n_embd
    return {"attn": (d, d), "mlp.c_fc": (f, d), "mlp.c_proj": (d, f)}


def gram_side(rows: int, cols: int, side: str) -> tuple[int, int]:
    """(s, K): the Gram side (the result is s×s) and the reduction length of x (rows, cols)."""
    return (rows, cols) if side == "left" else (cols, rows)


def gram_flops(rows: int, cols: int, side: str, *, symmetric: bool = True, batch: int = 1) -> float:
    """FLOPs of one Gram of x (rows, cols): naive 2·s²·K; symmetric (the s(s+1)/2 distinct entries) s(s+1)·K. (The
    kernel works on whole tiles: T(T+1)/2 of T² tiles, a little more than the symmetric count.)"""
    s, K = gram_side(rows, cols, side)
    return float(batch * (s * (s + 1) * K if symmetric else 2 * s * s * K))


def gram_bytes(rows: int, cols: int, side: str, itemsize: int, *, accumulate: bool, batch: int = 1) -> float:
    """Compulsory traffic: x read once (the triangle grid reads each block row of x about T/2 times; L2 holds
    them at these sizes, so this is a floor), the fp32 result written, and read too when accumulating (beta != 0)."""
    s, _ = gram_side(rows, cols, side)
    return float(batch * (itemsize * rows * cols + 4 * s * s * (2 if accumulate else 1)))


def codegen_cases() -> list:
    """Every (config, specialisation) the launcher can run, on the track-3 MLP weight c_proj (768×3072, row-major):
    the left Gram (768×768, K = 3072, P = x) and the right one (3072×3072, K = 768, P = xᵀ read by columns), each
    as a fresh result (beta = 0) and as the EMA update (beta != 0: out read in the epilogue, both tiles). The
    result is fp32, exact symmetry on."""
    rows, cols = track3_matrices()["mlp.c_proj"]
    cases = []
    for (family, dtype), tile in g.CONFIGS.items():
        ty, size = TRITON_DTYPE[dtype], dtype.itemsize
        flags = dict(precision_flags(dtype, interpreter=False), RNE_BF16=False)  # the result is fp32
        for side in ("left", "right"):
            s, K = gram_side(rows, cols, side)
            for accumulate in (False, True):
                args = dict(p_ptr=dtype, add_ptr=torch.float32, c_ptr=torch.float32, M=s, K=K,
                            stride_pb=rows * cols, stride_p=cols, stride_ab=s * s, stride_am=s, stride_cb=s * s,
                            stride_cm=s, alpha=0.05, beta=0.95 if accumulate else 0.0, BLOCK=tile.block_m,
                            BLOCK_K=tile.block_k, TRANS_P=side == "right", FUSE_ADD=accumulate,
                            ADD_SYMMETRIC=False, EXACT_SYMMETRY=True, **flags)
                cases.append(jit_case(
                    f"gram_{side}", f"{family} {ty} {tile.block_m}x{tile.block_n}x{tile.block_k}"
                    + (" ema" if accumulate else ""), gram_kernel, args, num_warps=tile.warps,
                    num_stages=tile.stages, flops=gram_flops(rows, cols, side),
                    bytes=gram_bytes(rows, cols, side, size, accumulate=accumulate)))
    return cases
