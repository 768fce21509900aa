"""Learning-rate and momentum schedules: parts a run picks with `--schedule NAME` and sets with `--schedule.FIELD`.

A schedule maps (a param group's initial lr, the step, the horizon, the group's role) to the step's lr; the
trainer applies it to every param group before each step. Roles fall in two families that may follow different
curves: the hidden matrices ("matrix", role hidden, whatever optimizer takes them) and every other role ("aux":
embeddings, head, scalars). The horizon is the run's schedule_steps (default max_steps): a horizon beyond
max_steps ends the run before the decay finishes ("end N steps early").

Every schedule also carries a momentum ramp (MomentumRamp): the matrix optimizer's momentum rising from a start
value over the first steps and falling back over the last ones, applied to every param group that has one.

    stable_decay   the track's: linear warm-up, flat, then linear decay to 0 over the last cooldown_frac of the
                   horizon (a cooldown per family: aux_cooldown_frac)
    power_cool     flat, then lr·((end - step)/(end - flat_until))^power down to 0 at `end` (a flat_until per
                   family), never above the initial lr; or, per role, min(lr, c·(end - step)^power) with the
                   coefficient c given (track 3's record states its schedule so)
"""

import math
from dataclasses import dataclass, field
from typing import Annotated

from optim.registry import STEPS, Steps, require, schedule

# A step position that may fall between steps (PowerCool's flat_until); scaled to a preset's budget like Steps.
StepPoint = Annotated[float, STEPS]


def family(role: str) -> str:
    """'matrix' for the hidden matrices, 'aux' for every other role."""
    return "matrix" if role == "hidden" else "aux"


@dataclass(frozen=True)
class MomentumRamp:
    """The matrix optimizer's momentum over the run: from `start` up to its configured value over `warmup_steps`,
    flat, then back down to `end` over the last `cooldown_steps` of the horizon (linear both ways)."""

    warmup_steps: Steps = 0
    """Steps over which the momentum rises linearly from `start` to the optimizer's momentum (0 = no warm-up)."""
    start: float = 0.85
    """The momentum at step 0 when warmup_steps > 0."""
    cooldown_steps: Steps = 0
    """Steps before the horizon over which the momentum falls linearly to `end` (0 = no cool-down)."""
    end: float = 0.85
    """The momentum reached at the horizon when cooldown_steps > 0."""

    def __post_init__(self):
        require(self.warmup_steps >= 0 and self.cooldown_steps >= 0,
                f"--schedule.momentum: warmup_steps={self.warmup_steps} and cooldown_steps={self.cooldown_steps} "
                "must be >= 0")
        for name in ("start", "end"):
            value = getattr(self, name)
            require(0 <= value < 1, f"--schedule.momentum.{name}={value} must lie in [0, 1)")

    def momentum(self, peak: float, step: int, horizon: int) -> float:
        """The momentum at `step` for an optimizer configured with `peak`."""
        cooldown_start = horizon - self.cooldown_steps
        if step < self.warmup_steps:
            return self.start + step / self.warmup_steps * (peak - self.start)
        if self.cooldown_steps and step > cooldown_start:
            return peak - (step - cooldown_start) / self.cooldown_steps * (peak - self.end)
        return peak


def apply_schedule(schedule, optimizer, step: int, horizon: int):
    """Each param group's lr (and the hidden matrices' momentum) at `step`, from the initial_lr (and
    initial_momentum) optim.build_optimizer recorded: the one place a schedule reaches the param groups, so the
    trainer and the benchmarks step with the same values."""
    for group in optimizer.param_groups:
        role = group.get("role", "hidden")
        group["lr"] = schedule.lr(group["initial_lr"], step, horizon, role)
        if role == "hidden" and "initial_momentum" in group:
            group["momentum"] = schedule.momentum.momentum(group["initial_momentum"], step, horizon)


@dataclass(frozen=True)
class Schedule:
    """Base of every schedule: `lr()` per role family, and the momentum ramp."""

    momentum: MomentumRamp = field(default_factory=MomentumRamp)
    """The matrix optimizer's momentum warm-up and cool-down."""

    def lr(self, initial_lr: float, step: int, horizon: int, role: str) -> float:
        raise NotImplementedError


@schedule("stable_decay")
@dataclass(frozen=True)
class StableDecay(Schedule):
    """Linear warm-up, flat, then linear decay to 0 over the last cooldown_frac of the horizon (track 3's
    arithmetic: progress = step / horizon), with a cooldown fraction per role family."""

    warmup_steps: Steps = 0
    """Linear warm-up of every role: lr × (step + 1) / warmup_steps for step < warmup_steps."""
    cooldown_frac: float = 0.4
    """Fraction of the horizon over which the lr of the hidden matrices decays linearly to 0."""
    aux_cooldown_frac: float | None = None
    """The same for the embed, head and scalar roles; None = cooldown_frac."""

    def __post_init__(self):
        require(self.warmup_steps >= 0, f"--schedule.warmup_steps={self.warmup_steps} must be >= 0")
        require(0 <= self.cooldown_frac <= 1, f"--schedule.cooldown_frac={self.cooldown_frac} must lie in [0, 1]")
        require(self.aux_cooldown_frac is None or 0 <= self.aux_cooldown_frac <= 1,
                f"--schedule.aux_cooldown_frac={self.aux_cooldown_frac} must lie in [0, 1] or be None")

    def factor(self, step: int, horizon: int, role: str) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        cooldown = self.cooldown_frac
        if family(role) == "aux" and self.aux_cooldown_frac is not None:
            cooldown = self.aux_cooldown_frac
        progress = step / horizon
        if progress < 1 - cooldown:
            return 1.0
        return max(0.0, (1 - progress) / cooldown)

    def lr(self, initial_lr: float, step: int, horizon: int, role: str) -> float:
        return initial_lr * self.factor(step, horizon, role)


ROLE_COEFFICIENTS = {"hidden": "c_hidden", "embed": "c_embed", "head": "c_head", "scalar": "c_scalar"}


@schedule("power_cool")
@dataclass(frozen=True)
class PowerCool(Schedule):
    """PowerCool: lr = min(lr0, lr0·((end - step) / (end - flat_until))^power), 0 from `end` on; the lr stays at
    its initial value until flat_until, then follows a power law down to 0 at `end`. A flat_until per role family.

    A role with a coefficient (c_hidden, c_embed, c_head, c_scalar > 0) follows lr = min(lr0, c'·max(0, end -
    step)^power) instead, c' = c·(c_end / end)^power: c as stated for a run whose `end` is c_end, rescaled so that
    the lr leaves its initial value at the same fraction of the run when a preset scales `end` (c' = c bit for bit
    at end = c_end). The lr then leaves lr0 at step end - (lr0/c')^(1/power)."""

    power: float = 1.2
    """Exponent of the fall (1 = linear)."""
    end: Steps = 2900
    """The step at which the lr reaches 0 (independent of the run's horizon)."""
    flat_until: StepPoint = 514.0
    """The step up to which the hidden matrices' lr stays at its initial value."""
    aux_flat_until: StepPoint | None = None
    """The same for the embed, head and scalar roles; None = flat_until."""
    c_hidden: float = 0.0
    """Coefficient c of the hidden matrices: lr = min(lr0, c·(c_end/end)^power·max(0, end - step)^power);
    0 = flat_until's form."""
    c_embed: float = 0.0
    """The same for the embeddings; 0 = aux_flat_until's form."""
    c_head: float = 0.0
    """The same for the LM head weight; 0 = aux_flat_until's form."""
    c_scalar: float = 0.0
    """The same for gains and biases; 0 = aux_flat_until's form."""
    c_end: int = 2900
    """The `end` the coefficients are stated for (not scaled with a preset: `end` is, and c with it)."""
    coefficients: bool = True
    """Use the c_* coefficients that are set; False: every role follows its flat_until form."""

    def __post_init__(self):
        require(self.power > 0, f"--schedule.power={self.power} must be > 0")
        require(self.end > 0 and self.c_end > 0, f"--schedule.end={self.end} and --schedule.c_end={self.c_end} "
                "must be > 0")
        for name in ("flat_until", "aux_flat_until"):
            value = getattr(self, name)
            require(value is None or 0 <= value < self.end,
                    f"--schedule.{name}={value} must lie in [0, end={self.end})")
        for name in ROLE_COEFFICIENTS.values():
            value = getattr(self, name)
            require(math.isfinite(value) and value >= 0, f"--schedule.{name}={value} must be a number >= 0 "
                    "(0: the role follows flat_until)")

    def coefficient(self, role: str) -> float:
        """The role's coefficient at this `end` (c·(c_end/end)^power), 0 when it has none."""
        c = getattr(self, ROLE_COEFFICIENTS[role]) if self.coefficients and role in ROLE_COEFFICIENTS else 0.0
        return c * (self.c_end / self.end) ** self.power if c else 0.0

    def factor(self, step: int, horizon: int, role: str) -> float:
        flat = self.flat_until
        if family(role) == "aux" and self.aux_flat_until is not None:
            flat = self.aux_flat_until
        return min(1.0, (max(0.0, self.end - step) / (self.end - flat)) ** self.power)

    def lr(self, initial_lr: float, step: int, horizon: int, role: str) -> float:
        c = self.coefficient(role)
        if c:
            return min(initial_lr, c * max(0.0, self.end - step) ** self.power)
        return initial_lr * self.factor(step, horizon, role)


# Track 3's shared schedule (records/track_3_optimization/train_gpt_simple.py): no warm-up, lr × 1 until 30% of
# the horizon, then linear to 0 at the horizon; no gradient clipping.
TRACK3_SCHEDULE = {"schedule": "stable_decay", "schedule.warmup_steps": 0, "schedule.cooldown_frac": 0.7,
                   "schedule_steps": 0, "grad_clip": 0.0}
