"""gram: the Gram matrices of preconditioners such as Shampoo and SOAP, on the symmetric-tile Triton kernel.

Op (kernels.reference.gram is the test oracle and the eager peer; same semantics):

    G      = X·Xᵀ  (side="left", (m, m))   or   Xᵀ·X  (side="right", (n, n))          for X (m, n)
    result = alpha·G + beta·out                                                      out read only when beta != 0

for one matrix X (m, n) or a batch (B, m, n) of same-shape matrices (B <= 65535, one launch), so the statistics'
usual EMA L ← β·L + (1-β)·G·Gᵀ is gram(G, out=L, alpha=1-β, beta=β).

Dtypes: X bf16 or fp32, any strides; the result is fp32 either way (a statistic accumulated over many steps
keeps fp32 even when gradients are bf16), in a new tensor or in `out` (fp32, (…, s, s) with s the Gram side, unit
stride along its rows), which is then overwritten in place and returned. beta == 0 does not read `out` (as
torch.addmm: a NaN there is not propagated); beta != 0 needs `out`.

Numerics: the products of bf16 operands are exact in fp32; sums accumulate in fp32 (tensor cores; fp32 X uses
tf32x3 products on the GPU, about fp32 accuracy); alpha·G + beta·out is formed in fp32 and rounded once. The
result is exactly symmetric (both triangles hold the same bits) whenever beta == 0 or `out` is exactly symmetric;
a non-symmetric `out` gives alpha·G + beta·out element by element, as eager does. Deterministic: every element
is written by one program, no atomics. How the kernel is organised: docs/kernels/gram.md.

Checked before any launch (errors name the argument): X's rank, dtype, non-emptiness and device (CUDA, or the CPU
under TRITON_INTERPRET=1); side; alpha and beta real numbers; beta != 0 only with out; out's shape, dtype, device
and row stride; the batch limit; the config name. `out` must not overlap X.

Forward only: there is no autograd formula (a backward through it raises); the optimizers are the users. Custom
ops: torch.ops.speedrun.gram (a new result) and torch.ops.speedrun.gram_out (mutates out), each with a fake
implementation, so a call sits inside torch.compile(fullgraph=True). torch.autocast does not change the inputs.
"""

import numbers
from typing import Optional

import torch

from kernels import registry
from kernels.checks import check_out, check_tensor, check_triton_device
from kernels.custom_ops import op_name
from kernels.jit.gram import gram_kernel
from kernels.tiles import MAX_GRID_AXIS1, NUM_SMS_HINT, Tile, lookup_config, precision_flags

SUPPORTED_DTYPES = (torch.bfloat16, torch.float32)
SIDES = ("left", "right")

# ---------------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------------

# Square tiles (a tile and its mirror have one shape), keyed by (tile family, dtype of X). Chosen for the sm_90
# budget, not yet tuned on a GPU (docs/kernels/gram.md); every entry is compiled for sm_90 by `python -m
# bench.codegen`.
CONFIGS = {
    ("b128", torch.bfloat16): Tile(block_m=128, block_n=128, block_k=64, warps=8, stages=3),
    ("b64", torch.bfloat16): Tile(block_m=64, block_n=64, block_k=64, warps=4, stages=3),
    ("b128", torch.float32): Tile(block_m=128, block_n=128, block_k=32, warps=8, stages=3),
    ("b64", torch.float32): Tile(block_m=64, block_n=64, block_k=32, warps=4, stages=3),
}


def triangle_tiles(M: int, block: int) -> int:
    """Programs of the symmetric-tile grid: the T(T+1)/2 tiles on and below the diagonal, T = cdiv(M, block)."""
    t = -(-M // block)
    return t * (t + 1) // 2


def pick_config(batch: int, M: int, dtype: torch.dtype) -> str:
    """Tile family for a batch of M×M results: "b128" once the triangle grid of 128-tiles alone has a program per
    SM (NUM_SMS_HINT), else "b64". A heuristic."""
    return "b128" if batch * triangle_tiles(M, 128) >= NUM_SMS_HINT else "b64"


# ---------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------


def check_rowmajor(t: torch.Tensor, name: str):
    """A tensor the kernels address as rows of unit stride (its last dim, unless that has one element)."""
    if t.stride(-1) != 1 and t.shape[-1] != 1:
        raise ValueError(f"{name} must have unit stride in its last dim (strides {t.stride()})")


def symmetric_product(P: torch.Tensor, *, out: torch.Tensor, tile: Tile, alpha: float = 1.0, beta: float = 0.0,
                      add: torch.Tensor | None = None, add_symmetric: bool = True, trans_p: bool = False,
                      exact_symmetry: bool = False) -> torch.Tensor:
    """The launch of gram_kernel, unchecked (callers check): out = alpha·P·Pᵀ (+ beta·add when `add` is given).

    P (batch, M, K) row-major, or, with trans_p, the (batch, K, M) row-major X whose transpose P is; out and add
    (batch, M, M) with unit-stride rows (add may be out itself). add_symmetric: add is symmetric, its lower
    triangle of tiles is all that is read; else each program also reads its mirrored tile. exact_symmetry: the
    diagonal tiles keep one of (a, b) and (b, a). Precision flags from P's dtype; bf16 rounding (RNE_BF16) only
    when out is bf16. Returns out.
    """
    batch = P.shape[0]
    M, K = (P.shape[2], P.shape[1]) if trans_p else (P.shape[1], P.shape[2])
    flags = precision_flags(P.dtype)
    flags["RNE_BF16"] = flags["UPCAST"] and out.dtype == torch.bfloat16
    fuse_add = add is not None
    add = out if add is None else add  # an unused pointer when not fused
    gram_kernel[(triangle_tiles(M, tile.block_m), batch)](
        p_ptr=P, add_ptr=add, c_ptr=out,
        M=M, K=K,
        stride_pb=P.stride(0), stride_p=P.stride(1), stride_ab=add.stride(0), stride_am=add.stride(1),
        stride_cb=out.stride(0), stride_cm=out.stride(1),
        alpha=float(alpha), beta=float(beta),
        BLOCK=tile.block_m, BLOCK_K=tile.block_k, TRANS_P=trans_p, FUSE_ADD=fuse_add, ADD_SYMMETRIC=add_symmetric,
        EXACT_SYMMETRY=exact_symmetry, **flags, **tile.launch(),
    )
    return out


def _real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def check_inputs(x, *, side: str, out, alpha, beta) -> tuple[int, int, int]:
    """Validate x, side, alpha, beta and out (when given) without touching Triton; returns (batch, s, K): the
    number of matrices, the Gram side and the reduction length."""
    check_tensor(x, "x", ndim=(2, 3), dtypes=SUPPORTED_DTYPES)
    if side not in SIDES:
        raise ValueError(f"side must be 'left' (x·xᵀ) or 'right' (xᵀ·x), got {side!r}")
    _real(alpha, "alpha")
    if _real(beta, "beta") != 0 and out is None:
        raise ValueError("beta != 0 adds beta·out: pass out= (the fp32 statistic to update in place)")
    *lead, m, n = x.shape
    batch = lead[0] if lead else 1
    if batch > MAX_GRID_AXIS1:
        raise ValueError(f"batch {batch} > {MAX_GRID_AXIS1} (CUDA grid axis 1 limit); split the batch")
    s, K = (m, n) if side == "left" else (n, m)
    if out is not None:
        check_tensor(out, "out", dtypes=(torch.float32,))
        if tuple(out.shape) != (*lead, s, s):
            raise ValueError(f"out must have shape {(*lead, s, s)} (the {side} Gram of x {tuple(x.shape)}), got "
                             f"{tuple(out.shape)}")
        check_rowmajor(out, "out")
    return batch, s, K


def gram_launch(x: torch.Tensor, *, side: str = "left", out: torch.Tensor | None = None, alpha: float = 1.0,
                beta: float = 0.0, config: str | None = None) -> torch.Tensor:
    """The launcher: gram's computation (see gram) without the custom op; returns the fp32 result (`out` when
    given). config forces a tile family of CONFIGS ("b128", "b64") instead of pick_config's choice."""
    # 1. check
    batch, s, _ = check_inputs(x, side=side, out=out, alpha=alpha, beta=beta)
    device = check_triton_device((x, "x"), *(() if out is None else ((out, "out"),)))
    tile = lookup_config(CONFIGS, pick_config(batch, s, x.dtype) if config is None else config, x.dtype, "gram")

    # 2. orient: the kernel reads P (the Gram side's rows) from row-major storage, as P itself or as its transpose
    x3 = x if x.ndim == 3 else x.unsqueeze(0)
    left = side == "left"
    if x3.stride(2) != 1 and x3.shape[2] != 1:
        if x3.stride(1) == 1 or x3.shape[1] == 1:  # column-major: x = yᵀ with y row-major, x·xᵀ = yᵀ·y
            x3, left = x3.mT, not left
        else:
            x3 = x3.contiguous()

    # 3. allocate (a fresh result) and launch
    result = check_out(out, "out", (*x.shape[:-2], s, s), dtype=torch.float32, device=device, contiguous=False)
    out3 = result if result.ndim == 3 else result.unsqueeze(0)
    beta = float(beta)
    symmetric_product(x3, out=out3, tile=tile, alpha=alpha, beta=beta, add=out3 if beta != 0 else None,
                      add_symmetric=False, trans_p=not left, exact_symmetry=True)
    return result


# ---------------------------------------------------------------------------------------------------
# Custom ops (torch.ops.speedrun.gram / gram_out) and the public API
# ---------------------------------------------------------------------------------------------------


@torch.library.custom_op(op_name("gram"), mutates_args=())
def _gram_op(x: torch.Tensor, side: str, alpha: float, config: Optional[str]) -> torch.Tensor:
    """alpha·G in a new fp32 tensor."""
    return gram_launch(x, side=side, alpha=alpha, config=config)


@_gram_op.register_fake
def _(x, side, alpha, config):
    *lead, m, n = x.shape
    s = m if side == "left" else n
    return x.new_empty((*lead, s, s), dtype=torch.float32)


@torch.library.custom_op(op_name("gram_out"), mutates_args=("out",))
def _gram_out_op(x: torch.Tensor, out: torch.Tensor, side: str, alpha: float, beta: float,
                 config: Optional[str]) -> None:
    """out ← alpha·G + beta·out, in place."""
    gram_launch(x, side=side, out=out, alpha=alpha, beta=beta, config=config)


@_gram_out_op.register_fake
def _(x, out, side, alpha, beta, config):
    return None


def gram(x: torch.Tensor, *, side: str = "left", out: torch.Tensor | None = None, alpha: float = 1.0,
         beta: float = 0.0, config: str | None = None) -> torch.Tensor:
    """alpha·(x·xᵀ or xᵀ·x) + beta·out for x (m, n) or (B, m, n), bf16 or fp32: an fp32 (…, s, s) tensor, s = m for
    side="left", n for side="right"; `out`, updated in place, when given (beta != 0 reads it). Inputs are checked
    here, so errors name the argument. config: a tile family of CONFIGS. Runs as the custom op
    torch.ops.speedrun.gram (no out) or torch.ops.speedrun.gram_out (out): torch.compile keeps it whole."""
    check_inputs(x, side=side, out=out, alpha=alpha, beta=beta)
    if out is None:
        return torch.ops.speedrun.gram(x, side, float(alpha), config)
    torch.ops.speedrun.gram_out(x, out, side, float(alpha), float(beta), config)
    return out


registry.register("gram", "triton", gram)
