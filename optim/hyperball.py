"""The hyperball: every hidden matrix kept on the sphere of its own Frobenius radius, without weight decay.

Track 3's hyperball family (AdamH, MuonH, NorMuonH, SOAPH, PSGD-hyperball) takes a direction D for each hidden
matrix W from its optimizer (Adam's preconditioned moment, Muon's orthogonalised momentum, NorMuon's normalised
one, a SOAP or PSGD direction) and moves W by a fixed fraction lr of its radius along it, then projects back:

    W' = W - lr·‖W‖·D / max(‖D‖, ε)              a step of length lr·‖W‖ (before the projection)
    W  ← W'·‖W‖ / max(‖W'‖, ε)                    back onto the sphere of radius ‖W‖         ε = 1e-10

so ‖W‖ keeps its initial value for the whole run (up to rounding) and the lr is an angle (≈ lr radians a step when
D ⟂ W): the hidden matrices must start non-zero, and weight decay has nothing to do. An outer optimizer that moves
W off its sphere (optim.muloco) sets a new radius, which the hyperball keeps from then on.

hyperball_step() is that projection for one matrix, written once with the variants that change its rounding:

    step_dtype   the dtype of the step term lr·D·‖W‖/‖D‖: D's own by default, so MuonH's bf16 Newton-Schulz
                 output gives a bf16 term (each product rounded to bf16, ‖D‖ a bf16 norm; the 0-D fp32 ‖W‖ does
                 not promote a bf16 tensor) and the subtraction and projection are fp32; torch.float32 computes
                 the whole step in fp32 (AdamH's and NorMuonH's directions are fp32 already).
    clamp        True: max(‖·‖, ε) as above, the term evaluated left to right ((lr·D)·‖W‖)/max(‖D‖, ε);
                 False: the "+ ε" form lr·D·(‖W‖/(‖D‖ + ε)) and W'·‖W‖/(‖W'‖ + ε) (track 3's PSGD).

The AdamW aux roles and the recipes' model init that the hyperball needs (non-zero hidden matrices: PyTorch's
construction init or the baseline's normal rule, with per-module multipliers) are GPTConfig options set by each
recipe; TORCH_HYPERBALL_INIT and TRACK3_HYPERBALL_INIT below are the two that track 3's results use.
"""

import torch

from optim.registry import require

EPS = 1e-10
STEP_DTYPES = ("direction", "fp32")

# The per-module multipliers of track 3's hyperball results on the default init's std: attn.proj x1.25 (std .026 at
# d=768), mlp.proj x3.0 (.031), mlp.fc x1.5 (.031), q/k/v x1.
HYPERBALL_MULTIPLIERS = {"model.init_scale_attn_proj": 1.25, "model.init_scale_mlp_proj": 3.0,
                         "model.init_scale_mlp_fc": 1.5}
# PyTorch's construction init (uniform Linear weights and biases, the bf16-rounded N(0,1) embedding) with the
# multipliers, the head weight and every output-projection bias zero (q/k/v/fc biases keep their uniform draw): the
# scripts of results 4, 8, 13 and #5's logs.
TORCH_HYPERBALL_INIT = {"model.init": "torch", "model.zero_init_proj": False, "model.zero_init_head": True,
                        "model.zero_init_proj_bias": True, **HYPERBALL_MULTIPLIERS}
# The baseline's normal rule (N(0, 0.33/fan_in) weights, zero biases) with the multipliers and nothing zeroed (the
# head included): the .py files of results 5 and 37.
TRACK3_HYPERBALL_INIT = {"model.init": "track3", "model.zero_init_proj": False, "model.zero_init_head": False,
                         "model.zero_init_proj_bias": False, **HYPERBALL_MULTIPLIERS}


def check_hyperball(cfg, *, step_dtype_field: bool = True):
    """ConfigErrors of a hyperball optimizer's config: no weight decay on the hidden matrices (the sphere keeps their
    norm), hyperball_eps > 0, a known step_dtype."""
    require(getattr(cfg, "weight_decay", 0.0) == 0.0,
            f"--optim.weight_decay={cfg.weight_decay}: a hyperball optimizer keeps each hidden matrix's norm and "
            "takes no weight decay (0)")
    require(cfg.hyperball_eps > 0, f"--optim.hyperball_eps={cfg.hyperball_eps} must be a number > 0")
    if step_dtype_field:
        require(cfg.step_dtype in STEP_DTYPES,
                f"--optim.step_dtype={cfg.step_dtype!r}; choose from {', '.join(STEP_DTYPES)}")


def resolve_step_dtype(name: str) -> torch.dtype | None:
    """"direction" -> None (the direction's own dtype), "fp32" -> torch.float32."""
    if name not in STEP_DTYPES:
        raise ValueError(f"unknown hyperball step dtype {name!r}; choose from {', '.join(STEP_DTYPES)}")
    return None if name == "direction" else torch.float32


@torch.no_grad()
def hyperball_step(p: torch.Tensor, direction: torch.Tensor, lr, *, eps: float = EPS, clamp: bool = True,
                   dtype: torch.dtype | None = None):
    """Move matrix `p` in place by lr times its Frobenius radius along `direction`, then back onto its sphere (module
    docstring). `lr` a Python float (or a 0-D tensor); `dtype` the step term's dtype (None: the direction's)."""
    d = direction if dtype is None else direction.to(dtype)
    p_norm = p.norm()
    d_norm = d.norm()
    if clamp:
        new = p - lr * d * p_norm / torch.clamp(d_norm, min=eps)
        p.copy_(new / torch.clamp(new.norm(), min=eps) * p_norm)
    else:
        new = p - lr * d * (p_norm / (d_norm + eps))
        p.copy_(new / (new.norm() + eps) * p_norm)


def hyperball_update(params, directions, lr, *, scale: float = 1.0, eps: float = EPS, dtype=None):
    """The hyperball step of each matrix in `params` along its direction (an application for
    optim.muon.muon_shape_update: `directions` is the batch of orthogonalised, or normalised, directions). `scale`
    multiplies each direction first, in its dtype (Muon's shape scale; it cancels in the step up to rounding)."""
    for p, d in zip(params, directions):
        if scale != 1.0:
            d = d * scale
        hyperball_step(p, d, lr, eps=eps, dtype=dtype)
