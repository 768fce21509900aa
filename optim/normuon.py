"""NorMuon: Muon followed by neuron-wise (per-row) second-moment normalization.

Li, Liu, Liang, Chen, Zhao 2025, "NorMuon: Making Muon more efficient and scalable", arXiv:2510.05491.
For each hidden matrix W (rows = output neurons, cols = inputs), after Muon's orthogonalized direction O:

    v ← β₂·v + (1-β₂)·mean_j(O_ij²)          one second moment per row (neuron), fp32, no bias correction
    Ô ← O / (sqrt(v) + eps)                   equalizes the update scale across neurons
    Ô ← Ô · ‖O‖_F / ‖Ô‖_F                     norm-preserving: the step size stays Muon's

then Muon's update W ← W·(1 - lr·wd) - lr·s·Ô with Muon's shape scale s (`lr_scaling`).

This is the form of the authors' reference code (github.com/zichongli5/NorMuon, normuon.py: norm-preserving
rescale, then Keller's sqrt(max(1, rows/cols))). The paper's Algorithm 1 instead sets the step to
η̂ = 0.2·η·sqrt(rows·cols)/‖Ô‖_F (update RMS 0.2·η, as AdamW); with --optim.muon_lr_scaling=match_rms_adamw
this rule gives the same step up to the factor ‖O‖_F / sqrt(min(rows, cols)), which is 1 for an exactly
orthogonal O (measured 0.85-0.89 for Gaussian gradients after 5 quintic Newton-Schulz steps in bf16).
No bias correction is needed: a uniform scale of v cancels in the rescale.
"""

import torch

from optim.muon import Muon, adam_roles, muon_kwargs
from optim.registry import register_optimizer


class NorMuon(Muon):
    def __init__(self, hidden, other=(), *, beta2: float = 0.95, norm_eps: float = 1e-10, **kwargs):
        if not 0.0 <= beta2 < 1.0:
            raise ValueError(f"NorMuon beta2 must be in [0, 1), got {beta2}")
        super().__init__(hidden, other, **kwargs)
        for group in self.param_groups:
            if group["use_muon"]:
                group.update(beta2=beta2, norm_eps=norm_eps)

    def _normalize(self, group, p, direction):
        state = self.state[p]
        ortho = direction.float()  # (rows, cols)
        if "row_second_moment" not in state:
            state["row_second_moment"] = torch.zeros(ortho.size(0), device=ortho.device, dtype=torch.float32)
        v = state["row_second_moment"]  # (rows,)
        v.lerp_(ortho.square().mean(dim=1), 1 - group["beta2"])
        normalized = ortho / (v.sqrt() + group["norm_eps"]).unsqueeze(1)  # (rows, cols)
        return normalized * (ortho.norm() / (normalized.norm() + group["norm_eps"]))


@register_optimizer("normuon")
def build(cfg, groups):
    return NorMuon(groups["hidden"], adam_roles(groups), beta2=cfg.normuon_beta2, **muon_kwargs(cfg))
