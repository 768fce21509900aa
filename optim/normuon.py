"""NorMuon: Muon followed by neuron-wise second-moment normalization.

Li, Liu, Liang, Chen, Zhao 2025, "NorMuon: Making Muon more efficient and scalable", arXiv:2510.05491.
For each hidden matrix W (rows = output neurons, cols = inputs), after Muon's orthogonalized direction O:

    v ← β₂·v + (1-β₂)·mean(O²) along the axis  one second moment per row (or column), fp32, no bias correction
    Ô ← O · v^(-1/2)                             equalizes the update scale across rows (columns)
    Ô ← Ô · ‖O‖_F / ‖Ô‖_F                        norm-preserving: the step size stays Muon's

then Muon's update W ← W·(1 - lr·wd) - lr·s·Ô with Muon's shape scale s (`lr_scaling`). No bias correction
is needed: a uniform scale of v cancels in the rescale.

`axis` picks one of two published forms:

    "row"     one moment per output row: the NorMuon authors' code (github.com/zichongli5/NorMuon, normuon.py),
              computed here in fp32 with Ô = O / (sqrt(v) + eps) and ‖Ô‖_F + eps.
    "longer"  one moment per row if rows >= cols, else per column (the longer side keeps its own scales):
              modded-nanogpt's NorMuon (optimization benchmark, result #10), computed as it does in the
              update's dtype (bf16) with an fp32 v, Ô = O · rsqrt(max(v, eps)) rounded to that dtype, and
              ‖Ô‖_F clamped to eps. The reference multiplies O by s before normalizing; with s a power of two
              (1 or 2 at the 124M shapes) that gives the numbers of scaling the step afterwards, as here.

The paper's Algorithm 1 instead sets the step to η̂ = 0.2·η·sqrt(rows·cols)/‖Ô‖_F (update RMS 0.2·η, as
AdamW); with --optim.lr_scaling=match_rms_adamw this rule gives the same step up to the factor
‖O‖_F / sqrt(min(rows, cols)), which is 1 for an exactly orthogonal O (measured 0.85-0.89 for Gaussian
gradients after 5 quintic Newton-Schulz steps in bf16).
"""

from dataclasses import dataclass
from functools import partial

import torch

from optim.muon import TRACK3_NEWTON_SCHULZ, Muon, MuonConfig, muon_kwargs
from optim.registry import optimizer, recipe, require
from optim.roles import check_fraction
from optim.schedules import TRACK3_SCHEDULE

AXES = ("row", "longer")


class NorMuon(Muon):
    def __init__(self, hidden, adam_groups=(), *, beta2: float = 0.95, norm_eps: float = 1e-10, axis: str = "row",
                 keep_norm: bool = True, **kwargs):
        if not 0.0 <= beta2 < 1.0:
            raise ValueError(f"NorMuon beta2 must be in [0, 1), got {beta2}")
        if axis not in AXES:
            raise ValueError(f"unknown NorMuon axis {axis!r}; choose from {AXES}")
        super().__init__(hidden, adam_groups, **kwargs)
        for group in self.param_groups:
            if group["use_muon"]:
                group.update(beta2=beta2, norm_eps=norm_eps, axis=axis, keep_norm=keep_norm)

    def _normalizer(self, group, params):
        """normalize() with this group's settings, and the second moments of same-shape `params` (created at 0)."""
        rows, cols = params[0].shape
        shape = (rows, 1) if group["axis"] == "row" or rows >= cols else (1, cols)  # broadcasts against the matrix
        moments = self._state_tensors(params, "second_moment",
                                      lambda p: torch.zeros(shape, device=p.device, dtype=torch.float32))
        return partial(normalize, weight=1 - group["beta2"], eps=group["norm_eps"], axis=group["axis"],
                       keep_norm=group.get("keep_norm", True)), moments


def normalize(directions: torch.Tensor, moments: list, *, weight: float, eps: float, axis: str,
              keep_norm: bool = True) -> torch.Tensor:
    """directions (B, rows, cols) -> normalized directions (fp32 for "row", directions' dtype for "longer");
    advances each matrix's second moment in `moments` ((rows, 1) or (1, cols), fp32) by lerp with `weight` = 1-β₂.
    keep_norm=False returns the normalized directions without the rescale to the input's norm: for "longer"
    O · rsqrt(max(v, eps)) as the fp32 product of the bf16 O and the fp32 factor (a hyperball step normalizes by
    itself: NorMuonH). Part of optim.muon.muon_shape_update (eager or compiled)."""
    rows, cols = directions.shape[-2:]
    reduce_dim = -1 if axis == "row" or rows >= cols else -2
    v = torch.stack(moments)  # (B, rows, 1) or (B, 1, cols)
    if axis == "row":
        ortho = directions.float()
        v.lerp_(ortho.square().mean(dim=reduce_dim, keepdim=True), weight)
        normalized = ortho / (v.sqrt() + eps)
        if not keep_norm:
            out = normalized
        else:
            norms = ortho.norm(dim=(-2, -1), keepdim=True)
            out = normalized * (norms / (normalized.norm(dim=(-2, -1), keepdim=True) + eps))
    elif not keep_norm:
        v.lerp_((directions * directions).mean(dim=reduce_dim, keepdim=True).float(), weight)
        out = directions * v.clamp_min(eps).rsqrt()
    else:
        norms = directions.norm(dim=(-2, -1), keepdim=True)  # (B, 1, 1), directions' dtype
        v.lerp_((directions * directions).mean(dim=reduce_dim, keepdim=True).float(), weight)
        normalized = directions * v.clamp_min(eps).rsqrt().to(directions.dtype)
        out = normalized * (norms / normalized.norm(dim=(-2, -1), keepdim=True).clamp_min(eps))
    torch._foreach_copy_(moments, list(v.unbind(0)))
    return out


@dataclass(frozen=True)
class NorMuonConfig(MuonConfig):
    """NorMuon: Muon's orthogonalized direction normalized per neuron by a second moment, norm kept; AdamW on the
    other roles."""

    beta2: float = 0.95
    """EMA coefficient of the per-row (per-column) second moment of the direction."""
    axis: str = "row"
    """row: one moment per output row (the NorMuon authors') | longer: per row if rows >= cols, else per column
    (modded-nanogpt's)."""

    def __post_init__(self):
        super().__post_init__()
        check_fraction(self, "beta2")
        require(self.axis in AXES, f"--optim.axis={self.axis!r}; choose from {', '.join(AXES)}")


@optimizer("normuon", NorMuonConfig)
def build(cfg: NorMuonConfig, groups):
    return NorMuon(**muon_kwargs(cfg, groups), beta2=cfg.beta2, axis=cfg.axis)


@recipe("track3-normuon")
def track3_normuon() -> dict:
    """Track-3 result #10, NorMuon: 3250 steps, mean val loss 3.2789 (n=20).
    Source: records/track_3_optimization/results/20260503_normuon/.

    Muon as in #36 followed by modded-nanogpt's NorMuon normalization (axis="longer": one second moment per
    row if rows >= cols, else per column; beta2 0.95, v^(-1/2) with v >= 1e-10, Frobenius norm kept), lr 0.035,
    weight decay 0.025. AdamW as in #2's non-hidden groups: betas (0.8, 0.95), eps 1e-10, no weight decay;
    embedding lr 0.3, head weight 1/320, 1-D parameters 0.01. The schedule's horizon is 3300 steps and the run
    stops (and is scored) at 3250 ("end 50 steps early").
    """
    return {"optimizer": "normuon", "optim.lr": 0.035, "optim.weight_decay": 0.025, **TRACK3_NEWTON_SCHULZ,
            "optim.axis": "longer", "optim.beta2": 0.95, "optim.embed_lr": 0.3, "optim.head_lr": 1 / 320,
            "optim.scalar_lr": 0.01, "optim.aux_betas": (0.8, 0.95), "optim.aux_eps": 1e-10,
            "optim.aux_weight_decay": 0.0, "max_steps": 3250, **TRACK3_SCHEDULE, "schedule_steps": 3300}
