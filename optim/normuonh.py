"""NorMuonH: NorMuon's normalised direction applied through the hyperball, AdamW on the other roles.

Per hidden matrix W (rows × cols) with gradient G (optim.muon's momentum and Newton-Schulz, optim.normuon's
normaliser, optim.hyperball's step):

    B ← lerp(B, G, 1-μ);  U ← lerp(G, B, μ) (Nesterov)          momentum, as Muon
    O ← NewtonSchulz(U in ns_dtype) · s                         s = sqrt(max(1, rows/cols)) in O's dtype
    v ← lerp(v, mean(O²) along the short side, 1-β₂)            one fp32 value per row if rows >= cols, else per
                                                                column (axis="longer"); no bias correction
    D = O · rsqrt(max(v, eps))                                  fp32 (not rescaled: the hyperball normalises)
    W' = W - lr·‖W‖·D/max(‖D‖, ε);  W ← W'·‖W‖/max(‖W'‖, ε)       ‖W‖ stays its initial value

No weight decay. Track 3's result #8 computes exactly this, the Newton-Schulz in bf16 (emulated on CPUs without
native bf16) and everything from D on in fp32; axis="row" takes the NorMuon authors' per-row form instead.
"""

from dataclasses import dataclass
from functools import partial

from optim.hyperball import EPS, TORCH_HYPERBALL_INIT, check_hyperball, hyperball_update
from optim.muon import TRACK3_NEWTON_SCHULZ, lr_scale, muon_kwargs
from optim.muonh import HYPERBALL_AUX, HYPERBALL_SCHEDULE
from optim.normuon import NorMuon, NorMuonConfig
from optim.registry import optimizer, recipe


def _scaled_normalize(directions, moments, *, normalize, scale: float):
    """NorMuon's normalize() of directions × scale (in their dtype): the shape scale before the moments."""
    return normalize(directions * scale, moments)


class NorMuonH(NorMuon):
    """NorMuon's direction, unrescaled, through the hyperball on `hidden`; AdamW on `adam_groups`
    (optim.normuon.NorMuon's arguments, without weight decay on the hidden matrices)."""

    def __init__(self, hidden, adam_groups=(), *, hyperball_eps: float = EPS, **kwargs):
        if kwargs.get("weight_decay"):
            raise ValueError("NorMuonH keeps each hidden matrix's norm: it takes no weight decay")
        super().__init__(hidden, adam_groups, keep_norm=False, **kwargs)
        for group in self.param_groups:
            if group["use_muon"]:
                group["hyperball_eps"] = hyperball_eps

    def _normalizer(self, group: dict, params):
        """NorMuon's normaliser (without its rescale) of the directions times Muon's shape scale, which the
        second moments see, as in the reference."""
        normalize, moments = super()._normalizer(group, params)
        scale = lr_scale(params[0].shape, group["lr_scaling"])
        return (normalize if scale == 1.0 else partial(_scaled_normalize, normalize=normalize, scale=scale)), moments

    def _application(self, group: dict, shape) -> tuple:
        """The hyperball step of each matrix along its normalised direction, at the group's lr."""
        return partial(hyperball_update, eps=group["hyperball_eps"]), group["lr"], None


@dataclass(frozen=True)
class NorMuonHConfig(NorMuonConfig):
    """NorMuonH: NorMuon's per-neuron normalised direction applied through the hyperball (each hidden matrix keeps
    its norm), AdamW on the other roles."""

    lr: float = 0.018
    """Fraction of each hidden matrix's radius (Frobenius norm) a step moves along its direction, before the
    projection back onto the sphere (about the angle, in radians)."""
    weight_decay: float = 0.0
    """Must be 0: the hyperball keeps each hidden matrix's norm."""
    axis: str = "longer"
    """longer: one second moment per row if rows >= cols, else per column (track 3's) | row: one per output row."""
    hyperball_eps: float = EPS
    """ε of the hyperball's divisions by the direction's and the stepped matrix's norms (clamped to at least ε)."""

    def __post_init__(self):
        super().__post_init__()
        check_hyperball(self, step_dtype_field=False)


@optimizer("normuonh", NorMuonHConfig)
def build(cfg: NorMuonHConfig, groups):
    return NorMuonH(**muon_kwargs(cfg, groups), beta2=cfg.beta2, axis=cfg.axis, hyperball_eps=cfg.hyperball_eps)


# Result #8's optimizer and schedule (#13 runs it inside MuLoCo): NorMuonH lr 0.018, momentum 0.95, beta2 0.95, the
# hyperball aux AdamW, its init and fp32 RMSNorms.
TRACK3_NORMUONH = {"optimizer": "normuonh", "optim.lr": 0.018, **TRACK3_NEWTON_SCHULZ, "optim.axis": "longer",
                   "optim.beta2": 0.95, **HYPERBALL_AUX, **HYPERBALL_SCHEDULE, **TORCH_HYPERBALL_INIT,
                   "model.norm_fp32": True}


@recipe("track3-normuonh")
def track3_normuonh() -> dict:
    """Track-3 result #8, NorMuonH: 3250 steps, mean val loss 3.2778 (n=10).
    Source: records/track_3_optimization/results/20260430_normuonh/ (its logs' script; the folder has no .py).

    NorMuonH (Muon's momentum 0.95 with Nesterov, 12 cubic Newton-Schulz steps in bf16, the sqrt(max(1,
    rows/cols)) scale, the second moment of the direction per row, or per column of a wide matrix, beta2 0.95,
    v^(-1/2) with v >= 1e-10, then the hyperball step in fp32 back onto each matrix's initial norm) on the hidden
    matrices with lr 0.018 decaying linearly from step 0 to 0 at the horizon; AdamW on the rest, betas (0.8, 0.95),
    eps 1e-10, no weight decay, embedding lr 0.3, head weight 1/320, 1-D parameters 0.01, flat then linear to 0
    over the last 40%. The schedule's horizon is 3275 steps and the run is scored at 3250 ("end 25 steps early").
    Init: PyTorch's construction init with attn.proj x1.25, mlp.proj x3, mlp.fc x1.5, the head weight and every
    output-projection bias zero (optim.hyperball.TORCH_HYPERBALL_INIT); RMSNorms in fp32 (model.norm_fp32).
    """
    return {**TRACK3_NORMUONH, "max_steps": 3250, "schedule_steps": 3275}
