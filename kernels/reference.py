"""Eager PyTorch version of every op: the test oracle, the bench baseline and the CPU fallback.

Each function takes `upcast`: True computes in float64 (the oracle of the parity tests); False computes
in the input dtype, as a plain PyTorch model would (the "peer" whose error sets the tolerance).
These are registered as impl "eager" in kernels.registry; the Triton kernels must match them.
"""

import math

import torch
import torch.nn.functional as F

from kernels import registry
from kernels.device import native_bf16

# ---------------------------------------------------------------------------------------------------
# Newton-Schulz orthogonalization (Muon / NorMuon)
# ---------------------------------------------------------------------------------------------------

# Quintic iteration X <- aX + (bA + cA²)X with A = XXᵀ, from the NanoGPT speedrun (Keller Jordan's Muon);
# the same (a, b, c) every step. Chosen to push singular values into roughly [0.7, 1.2] fast, not to converge.
QUINTIC = (3.4445, -4.7750, 2.0315)

# Polar Express (Amsel, Persson, Musco, Gower 2025, arXiv:2505.16932): per-iteration optimal coefficients
# for 5 iterations (safety factor 2e-2, cushion 2), as used by the current speedrun record.
POLAR_EXPRESS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)

# The baseline iteration of modded-nanogpt's optimization benchmark (track 3), 12 steps: x <- 2x - 1.5x³ + 0.5x⁵
# has slope 2 at 0 and f(1) = 1 with f'(1) = 0, so it converges to 1 (quadratically near it; the largest value
# on [0, 1] is 1.0018) instead of settling in a band; 12 steps take every x in [1e-2, 1] to 1 within 1e-12.
CUBIC = (2.0, -1.5, 0.5)

NS_COEFFICIENT_SETS = ("quintic", "polar_express", "cubic")
# Iterations used when the caller gives none: what each set was designed or tuned for.
NS_DEFAULT_STEPS = {"quintic": 5, "polar_express": 5, "cubic": 12}
# Polar Express divides by ||X||_F·(1 + 2e-2) so the spectral norm is safely below 1 (its safety factor).
NS_NORM_SCALE = {"quintic": 1.0, "polar_express": 1.02, "cubic": 1.0}


def ns_coefficients(name: str, steps: int | None = None) -> list[tuple[float, float, float]]:
    """The (a, b, c) of each of `steps` iterations (default NS_DEFAULT_STEPS[name]) for a named set."""
    if name not in NS_COEFFICIENT_SETS:
        raise ValueError(f"unknown Newton-Schulz coefficients {name!r}; choose from {NS_COEFFICIENT_SETS}")
    steps = NS_DEFAULT_STEPS[name] if steps is None else steps
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if name == "polar_express":
        # Past the tabulated iterations, the last polynomial is repeated (it is a fixed point map near 1).
        return [POLAR_EXPRESS[min(i, len(POLAR_EXPRESS) - 1)] for i in range(steps)]
    return [QUINTIC if name == "quintic" else CUBIC] * steps


def emulated_bf16_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for bf16 a, b as an fp32 matmul rounded to bf16.

    The products of two bf16 numbers are exact in fp32 and a bf16 GEMM accumulates in fp32, so this gives a
    native bf16 GEMM's values up to the order of summation (tests/optim/test_newton_schulz.py measures how
    often that changes the rounded result). It exists for CPUs without a bf16 matmul unit, where torch's
    bf16 matmul is ~100-300x slower than fp32 and this costs an fp32 matmul plus two casts.
    """
    return torch.matmul(a.float(), b.float()).bfloat16()


def newton_schulz(G: torch.Tensor, *, steps: int | None = None, coefficients: str = "quintic", eps: float = 1e-7,
                  upcast: bool = False, emulate_bf16: bool | None = None) -> torch.Tensor:
    """Approximate the orthogonal polar factor UVᵀ of G = USVᵀ, for one matrix (M, N) or a batch (B, M, N).

    Computes in G's dtype (bf16 in the optimizer), or float64 when `upcast`, with `steps` iterations of
    `coefficients` (default: NS_DEFAULT_STEPS). Tall matrices are transposed so the Gram matrix A = XXᵀ is the
    small one. bf16 matmuls are emulated (emulated_bf16_matmul; elementwise ops stay bf16) when
    `emulate_bf16`, which defaults to "G is a bf16 tensor on a CPU without native bf16"
    (kernels.device.native_bf16). Returns a tensor of G's shape and dtype.

    B = b·A + c·(A·A) is formed as written; the speedrun scripts write `b * A + c * A @ A`, which Python
    evaluates as (c·A)·A: the same values when c is a power of two (the cubic set's 0.5), not in general.
    In fp32 and float64 the scalings and sums go into the GEMMs (addmm/baddbmm: B = b·A + c·(A·A) and
    X = a·X + B·X, each rounded once), which saves five elementwise passes an iteration on the CPU; bf16 keeps
    the scripts' separate, bf16-rounded operations, so it gives their numbers.
    """
    if G.ndim not in (2, 3):
        raise ValueError(f"newton_schulz expects a (M, N) or (B, M, N) tensor, got shape {tuple(G.shape)}")
    coeffs = ns_coefficients(coefficients, steps)
    X = G.double() if upcast else G
    if emulate_bf16 is None:
        emulate_bf16 = X.dtype == torch.bfloat16 and X.device.type == "cpu" and not native_bf16(X.device)
    if emulate_bf16 and X.dtype != torch.bfloat16:
        raise ValueError(f"emulate_bf16 applies to bf16 inputs, got {X.dtype}")
    matmul = emulated_bf16_matmul if emulate_bf16 else torch.matmul
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    norm = X.norm(dim=(-2, -1), keepdim=True)
    X = X / (norm * NS_NORM_SCALE[coefficients] + eps)
    fused = X.dtype in (torch.float32, torch.float64)
    add_matmul = torch.baddbmm if X.ndim == 3 else torch.addmm  # beta·C + alpha·(A @ B)
    for a, b, c in coeffs:
        A = matmul(X, X.mT)
        if fused:
            B = add_matmul(A, A, A, beta=b, alpha=c)
            X = add_matmul(X, B, X, beta=a)
        else:
            B = b * A + c * matmul(A, A)
            X = a * X + matmul(B, X)
    if tall:
        X = X.mT
    return X.to(G.dtype).contiguous()


# ---------------------------------------------------------------------------------------------------
# Gram matrices (the statistics of Shampoo / SOAP preconditioners)
# ---------------------------------------------------------------------------------------------------

GRAM_SIDES = ("left", "right")


def gram(x: torch.Tensor, *, side: str = "left", out: torch.Tensor | None = None, alpha: float = 1.0,
         beta: float = 0.0, upcast: bool = False) -> torch.Tensor:
    """alpha·G + beta·out with G = x·xᵀ (side "left", (…, m, m)) or xᵀ·x ("right", (…, n, n)) for x (m, n) or
    (B, m, n): x taken to fp32 (float64 when `upcast`), one GEMM with the scaling and the sum in it (addmm /
    baddbmm), fp32 result. `out` (fp32, float64 when upcast) is read only when beta != 0 (beta = 0 ignores it,
    NaN included, as torch.addmm does) and, when given, receives the result in place and is returned."""
    if x.ndim not in (2, 3):
        raise ValueError(f"gram expects x of shape (m, n) or (B, m, n), got {tuple(x.shape)}")
    if side not in GRAM_SIDES:
        raise ValueError(f"side must be 'left' (x·xᵀ) or 'right' (xᵀ·x), got {side!r}")
    if beta != 0 and out is None:
        raise ValueError("beta != 0 adds beta·out: pass out=")
    acc = torch.float64 if upcast else torch.float32
    X = x.to(acc)
    a, b = (X, X.mT) if side == "left" else (X.mT, X)
    if out is None:
        return torch.matmul(a, b) if alpha == 1 else alpha * torch.matmul(a, b)
    if out.dtype != acc:
        raise TypeError(f"out must be {acc}, got {out.dtype}")
    if x.ndim == 3:
        return out.baddbmm_(a, b, beta=beta, alpha=alpha)
    return out.addmm_(a, b, beta=beta, alpha=alpha)


# ---------------------------------------------------------------------------------------------------
# Linear cross-entropy with logit softcap (the LM head)
# ---------------------------------------------------------------------------------------------------


SOFTCAP_KINDS = ("tanh", "algebraic")


def softcap_logits(logits: torch.Tensor, softcap: float | None, kind: str = "tanh") -> torch.Tensor:
    """Bound logits to (-softcap, softcap) smoothly: "tanh" softcap·tanh(logits/softcap) (the speedrun's), or
    "algebraic" softcap·z·rsqrt(z² + softcap²) (modded-nanogpt's track 3; derivative softcap³/(z² + softcap²)^1.5,
    which decays like 1/|z|³ instead of exponentially). None: unchanged."""
    if kind not in SOFTCAP_KINDS:
        raise ValueError(f"softcap_kind must be one of {SOFTCAP_KINDS}, got {kind!r}")
    if softcap is None:
        return logits
    if kind == "algebraic":
        return softcap * logits * (logits.square() + softcap**2).rsqrt()
    return softcap * torch.tanh(logits / softcap)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                         bias: torch.Tensor | None = None, softcap: float | None = None, softcap_kind: str = "tanh",
                         ignore_index: int = -100, reduction: str = "mean", z_loss: float = 0.0,
                         upcast: bool = False) -> torch.Tensor:
    """Cross-entropy of softcap(hidden @ weightᵀ + bias) against targets; hidden (N, H), weight (V, H), bias (V,)
    or None, targets (N,). softcap_kind: "tanh" or "algebraic" (softcap_logits).

    Logits are computed in the input dtype and taken to fp32 (as a bf16-autocast model does), float64 if `upcast`.
    `z_loss` adds z_loss · logsumexp² per token (PaLM's auxiliary loss). Mean is over non-ignored tokens.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    acc = torch.float64 if upcast else torch.float32
    if upcast:
        logits = F.linear(hidden.double(), weight.double(), None if bias is None else bias.double())
    else:
        logits = F.linear(hidden, weight, bias).to(acc)
    logits = softcap_logits(logits, softcap, softcap_kind)
    loss = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="none")
    if z_loss:
        lse = torch.logsumexp(logits, dim=-1)
        loss = loss + z_loss * lse.square() * (targets != ignore_index)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (targets != ignore_index).sum().clamp(min=1)


# ---------------------------------------------------------------------------------------------------
# ReLU² MLP
# ---------------------------------------------------------------------------------------------------


class _ReluSquare(torch.autograd.Function):
    """relu(h)² with autograd's own numbers and NaN/inf semantics, bit for bit, in two elementwise passes each
    way: the chain F.relu(h).square() also makes a copy for its pow backward and one more product."""

    @staticmethod
    def forward(ctx, h):
        r = torch.relu(h)
        ctx.save_for_backward(r)
        return r * r

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (r,) = ctx.saved_tensors
        # pow's backward is grad·(2·r) (a doubling is exact, so = 2·(grad·r)); relu's keeps 0 where r <= 0 even
        # for a NaN grad
        return torch.ops.aten.threshold_backward((grad * r).mul_(2.0), r, 0)


def relu_square(h: torch.Tensor) -> torch.Tensor:
    """relu(h)², differentiable once."""
    return _ReluSquare.apply(h)


def relu2_mlp(x: torch.Tensor, w_fc: torch.Tensor, w_proj: torch.Tensor, b_fc: torch.Tensor | None = None,
              b_proj: torch.Tensor | None = None, *, upcast: bool = False) -> torch.Tensor:
    """proj(relu(fc(x))²) = relu(x w_fcᵀ + b_fc)² w_projᵀ + b_proj: x (N, H), w_fc (F, H), w_proj (H, F), optional
    biases b_fc (F,) and b_proj (H,) -> (N, H). float64 if `upcast`."""
    if upcast:
        x, w_fc, w_proj = x.double(), w_fc.double(), w_proj.double()
        b_fc = None if b_fc is None else b_fc.double()
        b_proj = None if b_proj is None else b_proj.double()
    h = F.linear(x, w_fc, b_fc)  # (N, F)
    return F.linear(relu_square(h), w_proj, b_proj)  # (N, H)


# ---------------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------------


def attention_keep(b, q_idx, kv_idx, *, causal: bool = True, window: int | None = None,
                   doc_ids: torch.Tensor | None = None):
    """The one definition of the attention masks: True where query q_idx of batch row b may attend key kv_idx.

    Index tensors that broadcast (flex_attention's mask_mod calls it with scalars; b is unused without doc_ids).
    causal keeps kv <= q; window w keeps q - kv < w (the query and the w-1 keys before it, FlashAttention's
    window_size=(w-1, 0)); doc_ids (B, T) keeps the keys of the query's document.
    """
    keep = (q_idx >= 0) & (kv_idx >= 0)  # all True, in the broadcast shape
    if causal:
        keep = keep & (kv_idx <= q_idx)
    if window is not None:
        keep = keep & (q_idx - kv_idx < window)
    if doc_ids is not None:
        keep = keep & (doc_ids[b, q_idx] == doc_ids[b, kv_idx])
    return keep


def attention_mask(T: int, *, causal: bool = True, window: int | None = None, doc_ids: torch.Tensor | None = None,
                   device=None) -> torch.Tensor:
    """attention_keep as a dense boolean mask: (1, 1, T, T), or (B, 1, T, T) with doc_ids (B, T)."""
    i = torch.arange(T, device=device)
    if doc_ids is None:
        return attention_keep(None, i[:, None], i[None, :], causal=causal, window=window)[None, None]
    b = torch.arange(doc_ids.shape[0], device=device)[:, None, None]
    return attention_keep(b, i[None, :, None], i[None, None, :], causal=causal, window=window, doc_ids=doc_ids)[:, None]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True, window: int | None = None,
              doc_ids: torch.Tensor | None = None, scale: float | None = None, upcast: bool = False) -> torch.Tensor:
    """Softmax attention on the model's layout: q, k, v (B, T, H, D) -> (B, T, H, D). float64 if `upcast`."""
    B, T, H, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    dtype = torch.float64 if upcast else torch.float32
    qh, kh, vh = (t.transpose(1, 2).to(dtype) for t in (q, k, v))  # (B, H, T, D)
    scores = (qh @ kh.transpose(-2, -1)) * scale  # (B, H, T, T)
    mask = attention_mask(T, causal=causal, window=window, doc_ids=doc_ids, device=q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    out = torch.softmax(scores, dim=-1) @ vh  # (B, H, T, D)
    return out.transpose(1, 2).to(q.dtype if not upcast else torch.float64)


registry.register("newton_schulz", "eager", newton_schulz)
registry.register("linear_cross_entropy", "eager", linear_cross_entropy)
registry.register("relu2_mlp", "eager", relu2_mlp)
registry.register("gram", "eager", gram)
registry.register("attention", "eager", attention)
