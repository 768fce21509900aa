"""NorMuon: Muon followed by neuron-wise (per-row) second-moment normalization (Li et al. 2025, arXiv:2510.05491).

For each hidden matrix, after Muon's orthogonalized direction O (rows = output neurons):

    v ← β₂·v + (1-β₂)·mean_j(O_ij²)          one second moment per row (neuron), fp32
    Ô ← O / (sqrt(v) + eps)                   equalizes the update scale across neurons
    Ô ← Ô · ‖O‖_F / ‖Ô‖_F                     norm-preserving: the step size stays Muon's

then Muon's update with its shape-aware lr scale. The paper states the rescale as
η̂ = 0.2·η·sqrt(rows·cols)/‖Ô‖_F (the update RMS of AdamW); that is this rule with
--optim.muon_lr_scaling=match_rms_adamw up to ‖O‖_F ≈ sqrt(min(rows, cols)) for an orthogonal O.
"""

import torch

from optim.muon import Muon, muon_kwargs
from optim.registry import register_optimizer


class NorMuon(Muon):
    def __init__(self, hidden, other, *, beta2: float = 0.95, norm_eps: float = 1e-8, **kwargs):
        super().__init__(hidden, other, **kwargs)
        for group in self.param_groups:
            if group["kind"] == "muon":
                group.update(beta2=beta2, norm_eps=norm_eps)

    def normalize(self, group, p, direction):
        state = self.state[p]
        ortho = direction.float()  # (rows, cols)
        if "row_second_moment" not in state:
            state["row_second_moment"] = torch.zeros(ortho.size(0), device=ortho.device, dtype=torch.float32)
        v = state["row_second_moment"]  # (rows,)
        v.lerp_(ortho.square().mean(dim=1), 1 - group["beta2"])
        normalized = ortho / (v.sqrt() + group["norm_eps"]).unsqueeze(1)  # (rows, cols)
        return normalized * (ortho.norm() / normalized.norm().clamp_min(group["norm_eps"]))


@register_optimizer("normuon")
def build(cfg, groups):
    return NorMuon(groups["hidden"], groups["embed"] + groups["head"] + groups["scalar"], beta2=cfg.normuon_beta2,
                   **muon_kwargs(cfg))
