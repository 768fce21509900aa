"""Newton-Schulz orthogonalisation (Muon / NorMuon) in Triton: three launches per iteration, symmetry exploited.

Op (kernels.reference.newton_schulz is the test oracle and the eager peer; same semantics): the approximate polar
factor UVᵀ of G = USVᵀ, for one matrix (M, N) or a batch (B, M, N) of same-shape matrices,

    X₀ = G / (‖G‖_F · NS_NORM_SCALE[coefficients] + eps)           per matrix, in fp32; Gᵀ when G is tall
    for (a, b, c) in ns_coefficients(coefficients, steps):
        A = X Xᵀ                        kernels.jit.gram.gram_kernel        (M, M), symmetric
        B = b·A + c·A·A                 kernels.jit.gram.gram_kernel, ADD   (M, M), symmetric (A·A = A·Aᵀ)
        X = a·X + B·X                   kernels.jit.newton_schulz.ns_update_kernel
    result: X (Xᵀ when G is tall), G's shape and dtype

Shapes and dtypes: G (M, N) or (B, M, N), B <= 65535, bf16 or fp32, any strides (read once, by the
normalisation); the kernels work on the wide orientation M <= N (the last update of a tall G stores transposed,
through the output's strides). Numerics: operands and work buffers in G's dtype, fp32 accumulation and epilogue,
one rounding per kernel output; fp32 inputs use tf32x3 tensor-core products on the GPU (about fp32 accuracy). The
triangle scheme, the configs and the FLOP count: docs/kernels/newton_schulz.md.

Checked before any launch (errors name the argument): rank, dtype, non-empty, device (CUDA, or the CPU under
TRITON_INTERPRET=1), coefficient set and step count, batch limit, config name, out and workspace buffers.
Forward only: no autograd (the optimizer is the only user). Custom op: torch.ops.speedrun.newton_schulz
(torch.compile keeps it whole in its graph; its fake implementation gives the shape); under torch.autocast the
iteration runs in the autocast dtype.
"""

from dataclasses import dataclass
from typing import Optional

import torch
import triton

from kernels import registry
from kernels.checks import check_out, check_tensor, check_triton_device, check_workspace
from kernels.custom_ops import autocast_inputs, op_name
from kernels.gram import check_rowmajor, symmetric_product, triangle_tiles
from kernels.jit.newton_schulz import ns_update_kernel
from kernels.reference import NS_NORM_SCALE, ns_coefficients
from kernels.tiles import MAX_GRID_AXIS1, NUM_SMS_HINT, Tile, lookup_config, precision_flags

# ---------------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------------

SUPPORTED_DTYPES = (torch.bfloat16, torch.float32)


# ---------------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NSConfig:
    """Tiles of the two kernels. The SYRK tile is square: a tile and its mirror must have the same shape."""

    syrk: Tile  # both Gram products, A = XXᵀ and bA + cA·A
    update: Tile  # aX + B·X

    def __post_init__(self):
        if self.syrk.block_m != self.syrk.block_n:
            raise ValueError(f"the SYRK tile must be square, got {self.syrk.name}")


# Keyed by (tile family, dtype): chosen for the sm_90 budget, not yet tuned on a GPU (where the sizes come from:
# docs/kernels/newton_schulz.md). Every entry is compiled for sm_90 by `python -m bench.codegen`.
CONFIGS = {
    ("b128", torch.bfloat16): NSConfig(syrk=Tile(block_m=128, block_n=128, block_k=64, warps=8, stages=4),
                                       update=Tile(block_m=128, block_n=128, block_k=64, warps=8, stages=3)),
    ("b64", torch.bfloat16): NSConfig(syrk=Tile(block_m=64, block_n=64, block_k=64, warps=4, stages=3),
                                      update=Tile(block_m=64, block_n=128, block_k=64, warps=4, stages=3)),
    ("b64", torch.float32): NSConfig(syrk=Tile(block_m=64, block_n=64, block_k=32, warps=4, stages=3),
                                     update=Tile(block_m=64, block_n=128, block_k=32, warps=4, stages=3)),
}


def pick_config(batch: int, M: int, dtype: torch.dtype) -> str:
    """Tile family for a batch of M-row Gram matrices: "b128" (bf16) once the triangle grid of 128-tiles alone
    has a program per SM (NUM_SMS_HINT), else "b64". A heuristic (docs/kernels/newton_schulz.md)."""
    if dtype == torch.bfloat16 and batch * triangle_tiles(M, 128) >= NUM_SMS_HINT:
        return "b128"
    return "b64"


def _resolve_config(name, batch, M, dtype) -> NSConfig:
    return lookup_config(CONFIGS, pick_config(batch, M, dtype) if name is None else name, dtype, "Newton-Schulz")


# ---------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------


def _batched(t):
    return t if t.ndim == 3 else t.unsqueeze(0)


def ns_syrk(P: torch.Tensor, *, out: torch.Tensor, alpha: float = 1.0, beta: float = 0.0,
            add: torch.Tensor | None = None, config: str | None = None) -> torch.Tensor:
    """out = P·Pᵀ, or alpha·P·Pᵀ + beta·add when `add` (symmetric, (…, M, M)) is given; P (M, K) or (B, M, K).

    Only the lower triangle of tiles is computed, and mirrored: every element of `out` is written.
    `out` and `add` must not alias P's or each other's memory. Returns `out`.
    """
    device = check_triton_device((P, "P"), (out, "out"))
    P3 = _batched(P)
    batch, M, K = P3.shape
    out3 = check_out(_batched(out), "out", (batch, M, M), dtype=P.dtype, device=device, contiguous=False)
    add3 = None if add is None else check_out(_batched(add), "add", out3.shape, dtype=P.dtype, device=device,
                                              contiguous=False)
    for t, name in ((P3, "P"), (out3, "out"), (add3, "add")):
        if t is not None:
            check_rowmajor(t, name)
    tile = _resolve_config(config, batch, M, P.dtype).syrk
    symmetric_product(P3, out=out3, tile=tile, alpha=alpha, beta=beta, add=add3)
    return out


def ns_update(X: torch.Tensor, B: torch.Tensor, *, alpha: float, out: torch.Tensor,
              config: str | None = None) -> torch.Tensor:
    """out = alpha·X + B·X; X (M, N) or (B, M, N) row-major, B (…, M, M) row-major, out any strides.

    `out` must not overlap X or B. Returns `out`.
    """
    device = check_triton_device((X, "X"), (B, "B"), (out, "out"))
    X3 = _batched(X)
    batch, M, N = X3.shape
    B3 = check_out(_batched(B), "B", (batch, M, M), dtype=X.dtype, device=device, contiguous=False)
    out3 = check_out(_batched(out), "out", X3.shape, dtype=X.dtype, device=device, contiguous=False)
    check_rowmajor(X3, "X")
    check_rowmajor(B3, "B")
    tile = _resolve_config(config, batch, M, X.dtype).update
    ns_update_kernel[(triton.cdiv(M, tile.block_m) * triton.cdiv(N, tile.block_n), batch)](
        x_ptr=X3, b_ptr=B3, out_ptr=out3,
        M=M, N=N,
        stride_xb=X3.stride(0), stride_xm=X3.stride(1), stride_bb=B3.stride(0), stride_bm=B3.stride(1),
        stride_ob=out3.stride(0), stride_om=out3.stride(1), stride_on=out3.stride(2),
        alpha=float(alpha),
        **tile.meta(), **precision_flags(X.dtype), **tile.launch(),
    )
    return out


@dataclass
class NSWorkspace:
    """Work buffers of one newton_schulz call, all in the compute dtype, wide orientation (M <= N):
    x0/x1 (batch, M, N) ping-pong iterates, gram (batch, M, M) = XXᵀ, poly (batch, M, M) = bA + cA²."""

    x0: torch.Tensor
    x1: torch.Tensor
    gram: torch.Tensor
    poly: torch.Tensor


def _workspace_shapes(batch, M, N) -> dict:
    return {"x0": (batch, M, N), "x1": (batch, M, N), "gram": (batch, M, M), "poly": (batch, M, M)}


def ns_workspace(shape, dtype: torch.dtype, device) -> NSWorkspace:
    """Allocate the work buffers for G of `shape` ((M, N) or (B, M, N)) and `dtype`."""
    *lead, rows, cols = shape
    shapes = _workspace_shapes(lead[0] if lead else 1, min(rows, cols), max(rows, cols))
    return NSWorkspace(**{name: torch.empty(s, dtype=dtype, device=device) for name, s in shapes.items()})


def newton_schulz_launch(G: torch.Tensor, *, steps: int | None = None, coefficients: str = "quintic",
                         eps: float = 1e-7, out: torch.Tensor | None = None, workspace: NSWorkspace | None = None,
                         config: str | None = None) -> torch.Tensor:
    """The launcher: newton_schulz's computation, in G's dtype, with optional output and work buffers (see
    newton_schulz); no autocast handling and no custom op (tests and benches call it with buffers)."""
    # 1. check
    check_tensor(G, "G", ndim=(2, 3), dtypes=SUPPORTED_DTYPES)
    device = check_triton_device((G, "G"))
    coeffs = ns_coefficients(coefficients, steps)  # validates both (raises ValueError)
    G3 = _batched(G)
    batch, rows, cols = G3.shape
    if batch > MAX_GRID_AXIS1:
        raise ValueError(f"batch {batch} > {MAX_GRID_AXIS1} (CUDA grid axis 1 limit); split the batch")
    tall = rows > cols
    M, N = (cols, rows) if tall else (rows, cols)
    config_name = pick_config(batch, M, G.dtype) if config is None else config
    _resolve_config(config_name, batch, M, G.dtype)  # fail before any work on a bad name

    # 2. allocate (once per call)
    out = check_out(out, "out", G.shape, dtype=G.dtype, device=device, contiguous=False)
    ws = workspace if workspace is not None else ns_workspace(G.shape, G.dtype, device)
    check_workspace(ws, _workspace_shapes(batch, M, N), dtype=G.dtype, device=device, builder="ns_workspace")
    out3 = _batched(out)
    final = out3.mT if tall else out3  # (batch, M, N) view; strided when tall

    # 3. normalise per matrix in fp32: X₀ = X / (‖X‖_F·scale + eps)
    Xw = G3.mT if tall else G3  # (batch, M, N) view
    norm = torch.linalg.vector_norm(Xw, dim=(-2, -1), keepdim=True, dtype=torch.float32)
    ws.x0.copy_(Xw.float() / (norm * NS_NORM_SCALE[coefficients] + eps))

    # 4. iterate: A = XXᵀ; B = bA + cA·A; X = aX + BX (the last step stores into `out`)
    x_cur, x_next = ws.x0, ws.x1
    for step, (a, b, c) in enumerate(coeffs):
        ns_syrk(x_cur, out=ws.gram, config=config_name)
        ns_syrk(ws.gram, out=ws.poly, alpha=c, beta=b, add=ws.gram, config=config_name)
        target = final if step == len(coeffs) - 1 else x_next
        ns_update(x_cur, ws.poly, alpha=a, out=target, config=config_name)
        x_cur, x_next = x_next, x_cur
    return out


# ---------------------------------------------------------------------------------------------------
# Custom op (torch.ops.speedrun.newton_schulz) and the public API
# ---------------------------------------------------------------------------------------------------


@torch.library.custom_op(op_name("newton_schulz"), mutates_args=())
def _newton_schulz_op(G: torch.Tensor, steps: int, coefficients: str, eps: float,
                      config: Optional[str]) -> torch.Tensor:
    return newton_schulz_launch(G, steps=steps, coefficients=coefficients, eps=eps, config=config)


@_newton_schulz_op.register_fake
def _(G, steps, coefficients, eps, config):
    return G.new_empty(G.shape)  # contiguous, whatever G's strides, as the launcher's fresh output


def newton_schulz(G: torch.Tensor, *, steps: int | None = None, coefficients: str = "quintic", eps: float = 1e-7,
                  out: torch.Tensor | None = None, workspace: NSWorkspace | None = None,
                  config: str | None = None) -> torch.Tensor:
    """Orthogonalise G (M, N) or (B, M, N), bf16 or fp32, with `steps` Newton-Schulz iterations (default: the
    coefficient set's own, kernels.reference.NS_DEFAULT_STEPS).

    Same semantics as kernels.reference.newton_schulz (returns G's shape and dtype). G may be any strided
    layout (it is read once, by the normalisation). Under torch.autocast the iteration runs in the autocast dtype
    (the eager reference's matmuls do too) and the result is cast back to G's dtype. `out` (G's shape/dtype, any
    strides) receives the result; `workspace` (from ns_workspace) avoids allocating the four work buffers;
    `config` forces a tile family from CONFIGS ("b128", "b64") instead of pick_config's choice.

    Without `out` and `workspace` it runs as the custom op torch.ops.speedrun.newton_schulz (torch.compile keeps it
    whole in its graph); with either, the launcher runs directly (buffers are an eager-mode feature).
    """
    (X,) = autocast_inputs(G)
    if out is not None or workspace is not None:
        if X.dtype != G.dtype:
            raise ValueError("out= and workspace= are for calls outside autocast (the buffers have G's dtype)")
        return newton_schulz_launch(G, steps=steps, coefficients=coefficients, eps=eps, out=out,
                                    workspace=workspace, config=config)
    check_tensor(X, "G" if X.dtype == G.dtype else "G (cast by autocast)", ndim=(2, 3), dtypes=SUPPORTED_DTYPES)
    steps = len(ns_coefficients(coefficients, steps))  # the set's default when None; validates both
    return torch.ops.speedrun.newton_schulz(X, steps, coefficients, float(eps), config).to(G.dtype)


registry.register("newton_schulz", "triton", newton_schulz)
