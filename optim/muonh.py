"""MuonH: Muon's orthogonalised momentum applied through the hyperball, AdamW on the other roles.

Per hidden matrix W (rows × cols) with gradient G (optim.muon's machinery up to the direction, optim.hyperball's
step after it):

    B ← lerp(B, G, 1-μ);  U ← lerp(G, B, μ) (Nesterov)      momentum, as Muon
    O ← NewtonSchulz(U in ns_dtype) · s                     s = sqrt(max(1, rows/cols)) in O's dtype (lr_scaling)
    W' = W - lr·‖W‖·O/max(‖O‖, ε);  W ← W'·‖W‖/max(‖W'‖, ε)   the hyperball: ‖W‖ stays its initial value

No weight decay: the sphere bounds the weights. lr is the fraction of each matrix's radius a step moves (an angle
of about lr radians). With track 3's bf16 Newton-Schulz the step term lr·O·‖W‖/‖O‖ is computed in bf16, as the
reference does (step_dtype="direction"; "fp32" computes it from O cast to fp32); the subtraction and the
projection are fp32. On a CPU without native bf16 the Newton-Schulz products are emulated (optim.muon).
"""

from dataclasses import dataclass
from functools import partial

from optim.hyperball import (
    EPS,
    TORCH_HYPERBALL_INIT,
    TRACK3_HYPERBALL_INIT,
    check_hyperball,
    hyperball_update,
    resolve_step_dtype,
)
from optim.muon import TRACK3_NEWTON_SCHULZ, Muon, MuonConfig, lr_scale, muon_kwargs
from optim.registry import optimizer, recipe
from optim.schedules import TRACK3_SCHEDULE


class MuonH(Muon):
    """Muon's direction through the hyperball on `hidden`; AdamW on `adam_groups` (optim.muon.Muon's arguments,
    without weight decay on the hidden matrices)."""

    def __init__(self, hidden, adam_groups=(), *, hyperball_eps: float = EPS, step_dtype: str = "direction",
                 **kwargs):
        if kwargs.get("weight_decay"):
            raise ValueError("MuonH keeps each hidden matrix's norm: it takes no weight decay")
        resolve_step_dtype(step_dtype)  # a ValueError for an unknown name, now
        super().__init__(hidden, adam_groups, **kwargs)
        for group in self.param_groups:
            if group["use_muon"]:
                group.update(hyperball_eps=hyperball_eps, step_dtype=step_dtype)

    def _application(self, group: dict, shape) -> tuple:
        """The hyperball step of each matrix along its direction times Muon's shape scale, at the group's lr."""
        return (partial(hyperball_update, scale=lr_scale(shape, group["lr_scaling"]), eps=group["hyperball_eps"],
                        dtype=resolve_step_dtype(group["step_dtype"])), group["lr"], None)


@dataclass(frozen=True)
class MuonHConfig(MuonConfig):
    """MuonH: Muon's orthogonalised momentum applied through the hyperball (each hidden matrix keeps its norm), AdamW
    on the other roles."""

    lr: float = 0.018
    """Fraction of each hidden matrix's radius (Frobenius norm) a step moves along its direction, before the
    projection back onto the sphere (about the angle, in radians)."""
    weight_decay: float = 0.0
    """Must be 0: the hyperball keeps each hidden matrix's norm."""
    hyperball_eps: float = EPS
    """ε of the hyperball's divisions by the direction's and the stepped matrix's norms (clamped to at least ε)."""
    step_dtype: str = "direction"
    """The dtype of the step term lr·O·‖W‖/‖O‖: direction (the Newton-Schulz output's: bf16 with ns_dtype bf16, as
    the reference) | fp32."""

    def __post_init__(self):
        super().__post_init__()
        check_hyperball(self)


@optimizer("muonh", MuonHConfig)
def build(cfg: MuonHConfig, groups):
    return MuonH(**muon_kwargs(cfg, groups), hyperball_eps=cfg.hyperball_eps, step_dtype=cfg.step_dtype)


# The aux AdamW of the hyperball results (untuned): betas (0.8, 0.95), eps 1e-10, no weight decay; embedding 0.3, head
# weight 1/320, 1-D parameters 0.01.
HYPERBALL_AUX = {"optim.embed_lr": 0.3, "optim.head_lr": 1 / 320, "optim.scalar_lr": 0.01,
                 "optim.aux_betas": (0.8, 0.95), "optim.aux_eps": 1e-10, "optim.aux_weight_decay": 0.0}
# Their schedule: the hidden matrices' lr linear from step 0 to 0 at the horizon (cooldown_frac 1.0), the aux roles
# flat, then linear to 0 over the last 40%.
HYPERBALL_SCHEDULE = {**TRACK3_SCHEDULE, "schedule.cooldown_frac": 1.0, "schedule.aux_cooldown_frac": 0.4}


@recipe("track3-muonh")
def track3_muonh() -> dict:
    """Track-3 result #5, MuonH: 3325 steps, mean val loss 3.2782 (n=10).
    Source: records/track_3_optimization/results/20260430_muonh/ (the script its ten logs ran).

    MuonH (Muon's momentum 0.95 with Nesterov, 12 cubic Newton-Schulz steps in bf16, the sqrt(max(1, rows/cols))
    scale, then the hyperball step in bf16 and the projection back to each matrix's initial norm) on the hidden
    matrices with lr 0.018 decaying linearly from step 0 to 0 at step 3325; AdamW on the rest, betas (0.8, 0.95),
    eps 1e-10, no weight decay, embedding lr 0.3, head weight 1/320, 1-D parameters 0.01, flat then linear to 0
    over the last 40%.

    Init, and the choice between the folder's two scripts: the published numbers come from the ten logs, whose
    script keeps PyTorch's construction init (uniform Linear weights and biases, the bf16-rounded N(0,1) embedding)
    with attn.proj x1.25, mlp.proj x3, mlp.fc x1.5, the head weight and every output-projection bias zero, and
    computes its RMSNorms in fp32 (model.init="torch" and the fields of optim.hyperball.TORCH_HYPERBALL_INIT,
    model.norm_fp32): this recipe reproduces them. The folder's train_gpt_simple_muonh.py, rebased later onto the
    baseline's script, draws the baseline's normal rule with the same multipliers and zeroes nothing, the head
    included; it is the recipe with TRACK3_HYPERBALL_INIT's model fields:
        --model.init=track3 --model.zero_init_proj=False --model.zero_init_head=False
        --model.zero_init_proj_bias=False --model.norm_fp32=False
    (the multipliers stay). tests/optim/test_hyperball_golden.py runs both against their scripts.
    """
    return {"optimizer": "muonh", "optim.lr": 0.018, **TRACK3_NEWTON_SCHULZ, **HYPERBALL_AUX, "max_steps": 3325,
            **HYPERBALL_SCHEDULE, **TORCH_HYPERBALL_INIT, "model.norm_fp32": True}


@recipe("track3-muonh-tuned")
def track3_muonh_tuned() -> dict:
    """Track-3 result #37, MuonH with the aux AdamW re-tuned: 3250 steps, mean val loss 3.2786 (n=10).
    Source: records/track_3_optimization/results/20260611_muonh_tuned_aux_3250/ (its .py, which its logs ran).

    MuonH as in track3-muonh (#5): lr 0.018 decaying linearly from step 0 to 0 at step 3250. AdamW as the tuned
    baseline (#36) re-tuned for MuonH: embedding lr 0.91, head weight 0.0064, 1-D parameters 0.0195, betas
    (0.8, 0.95), eps 1e-10, decoupled weight decay 0.001 on all of them, flat for the first 15% then linear to 0
    (cooldown 0.85). Init: the baseline's normal rule (N(0, 0.33/fan_in) weights, zero biases) with attn.proj
    x1.25, mlp.proj x3, mlp.fc x1.5 and nothing zeroed: the head starts non-zero, as the script's code (not its
    comment) does and its logs' step-0 val loss 10.95 > ln(50304) confirms.
    """
    return {"optimizer": "muonh", "optim.lr": 0.018, **TRACK3_NEWTON_SCHULZ, **HYPERBALL_AUX,
            "optim.embed_lr": 0.91, "optim.head_lr": 0.0064, "optim.scalar_lr": 0.0195,
            "optim.aux_weight_decay": 0.001, "max_steps": 3250, **HYPERBALL_SCHEDULE,
            "schedule.aux_cooldown_frac": 0.85, **TRACK3_HYPERBALL_INIT, "model.norm_fp32": False}
