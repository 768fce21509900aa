"""EMA-Nesterov: a look-ahead wrapper around any optimizer (`--wrapper ema_nesterov`).

The wrapper keeps, per parameter p, the weights after the previous step (`prev`) and an exponential moving
average of the per-step displacement (`buf`). With it the number of optimizer steps taken so far (0-based step
index) and β = `lookahead`:

    before the forward of step it:
        if prefill_steps <= it < rest_steps:   p ← p + s·buf,   s = β·ρ          (the look-ahead)
        ρ = lr/initial_lr of one param group of the inner optimizer as the *previous* step left it
            (1 at the first step; 1 always when `scheduled` is off)
    forward and backward at these (shifted) weights; the inner optimizer steps from them
    after the inner step:
        buf ← buf + (1 − γ)·((p − prev) − buf)      γ = `ema`; p − prev includes the shift
        prev ← p

buf accumulates from the first step on, before the look-ahead window opens too. Outside the window s = 0, so
validation, which runs between steps, always reads the post-step weights (never a shifted point). ρ lags the
schedule by one step because the look-ahead is taken before the step's lr is known in the published form of this
wrapper; here the trainer applies the step's schedule first, so the ratio is read after each inner step and kept
for the next one (`lr_ratio`, part of the state). It follows the first param group with role `schedule_role`
(track 3: the embedding group, an AdamW group under Muon), so that roles on different schedules are told apart.

The state (prev, buf per parameter; the step count; ρ) is in state_dict(), so a run stopped anywhere and resumed
continues bit for bit, inside the look-ahead window included. prev and buf are created at the first
before_forward(), from the weights the first step starts from.
"""

import math
from dataclasses import dataclass

import torch

from optim.muon import TRACK3_NEWTON_SCHULZ
from optim.registry import Steps, recipe, require, wrapper
from optim.roles import ROLES
from optim.schedules import TRACK3_SCHEDULE
from optim.wrappers import Wrapper


@dataclass(frozen=True)
class EmaNesterovConfig:
    """EMA-Nesterov: before each forward, every weight moves ahead by lookahead·(lr ratio)·buf, buf an EMA of the
    weights' per-step displacement; the wrapped optimizer steps from there."""

    lookahead: float = 0.6
    """β: inside the window each parameter moves by β·ρ·buf before the forward (ρ: see `scheduled`); 0 = never."""
    scheduled: bool = True
    """ρ = lr/initial_lr of the schedule_role group as the previous step left it (1 at step 0); False: ρ = 1."""
    schedule_role: str = "embed"
    """Role of the param group whose lr ratio is ρ (its first group of that role); "" = the inner optimizer's first
    param group."""
    ema: float = 0.99
    """γ: buf <- γ·buf + (1-γ)·(p - prev) after every step (from step 0, before the window opens too)."""
    prefill_steps: Steps = 0
    """The look-ahead window opens at this step (0-based): before it buf only accumulates."""
    rest_steps: Steps | None = None
    """The window closes at this step (steps >= rest_steps take no look-ahead); None = open to the end."""

    def __post_init__(self):
        require(math.isfinite(self.lookahead) and self.lookahead >= 0,
                f"--wrapper.lookahead={self.lookahead} must be a number >= 0")
        require(0 <= self.ema < 1, f"--wrapper.ema={self.ema} must lie in [0, 1)")
        require(self.prefill_steps >= 0, f"--wrapper.prefill_steps={self.prefill_steps} must be >= 0")
        require(self.rest_steps is None or self.rest_steps >= self.prefill_steps,
                f"--wrapper.rest_steps={self.rest_steps} must be >= prefill_steps={self.prefill_steps} "
                "(or None: the window stays open to the end)")
        require(self.schedule_role in ("", *ROLES),
                f"--wrapper.schedule_role={self.schedule_role!r}; choose from {', '.join(ROLES)} or '' (the first "
                "param group)")


class EmaNesterov(Wrapper):
    """EMA-Nesterov around `inner` over `params` (every trainable parameter of the model)."""

    def __init__(self, inner, params, cfg: EmaNesterovConfig):
        super().__init__(inner, params)
        self.cfg = cfg
        self.group_index = self._find_group(cfg.schedule_role)
        self.lr_ratio = 1.0  # ρ for the next step: the schedule_role group's lr / initial_lr after the last step
        self.shift = 0.0  # s of the current (last) step's look-ahead
        self._ahead = False  # before_forward ran for the step not taken yet

    def _find_group(self, role: str) -> int:
        if not role:
            return 0
        roles = [g.get("role", "hidden") for g in self.inner.param_groups]
        require(role in roles, f"--wrapper.schedule_role={role!r}: the optimizer has no param group of that role "
                               f"(its roles: {', '.join(dict.fromkeys(roles))}); pick one of them, or '' for its "
                               "first group")
        return roles.index(role)

    def active(self, it: int) -> bool:
        """Whether step `it` (0-based) takes the look-ahead."""
        cfg = self.cfg
        return cfg.prefill_steps <= it and (cfg.rest_steps is None or it < cfg.rest_steps)

    def _current_ratio(self) -> float:
        group = self.inner.param_groups[self.group_index]
        initial = group.get("initial_lr", group["lr"])
        return group["lr"] / initial if initial else 0.0

    @torch.no_grad()
    def before_forward(self, step: int):
        """Create prev and buf at the first call; inside the window move every parameter by s·buf."""
        if self._ahead:  # this step's look-ahead is taken already
            return
        if not self.state:
            for p in self.params:
                self.state[p] = {"prev": p.detach().clone(memory_format=torch.preserve_format),
                                 "buf": torch.zeros_like(p, memory_format=torch.preserve_format)}
        self.shift = 0.0
        if self.active(self.steps):
            self.shift = self.cfg.lookahead * (self.lr_ratio if self.cfg.scheduled else 1.0)
            if self.shift:
                torch._foreach_add_(self.params, [self.state[p]["buf"] for p in self.params], alpha=self.shift)
        self._ahead = True

    @torch.no_grad()
    def step(self, closure=None):
        if not self._ahead:
            raise RuntimeError("EmaNesterov.step(): call before_forward(step) before each step's forward pass "
                               "(the trainer does)")
        loss = super().step(closure)
        self._ahead = False
        return loss

    @torch.no_grad()
    def after_inner_step(self):
        """buf <- lerp(buf, p - prev, 1 - γ); prev <- p; ρ for the next step from the lr this step used."""
        prevs = [self.state[p]["prev"] for p in self.params]
        bufs = [self.state[p]["buf"] for p in self.params]
        torch._foreach_lerp_(bufs, torch._foreach_sub(self.params, prevs), 1 - self.cfg.ema)
        torch._foreach_copy_(prevs, self.params)
        self.lr_ratio = self._current_ratio()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "lr_ratio": self.lr_ratio}

    def load_state_dict(self, state: dict):
        super().load_state_dict(state)
        self.lr_ratio = state["lr_ratio"]
        self._ahead, self.shift = False, 0.0


@wrapper("ema_nesterov", EmaNesterovConfig)
def wrap(cfg: EmaNesterovConfig, optimizer, model: torch.nn.Module) -> EmaNesterov:
    return EmaNesterov(optimizer, [p for p in model.parameters() if p.requires_grad], cfg)


@recipe("track3-ema-nesterov-muon")
def track3_ema_nesterov_muon() -> dict:
    """Track-3 result #39, Muon + AdamW inside EMA-Nesterov: 3125 steps, mean val loss 3.2786 (n=20).
    Source: records/track_3_optimization/results/20260522_ema_nesterov_muon/ (its log; no .py).

    The #12 setup: Muon (momentum 0.95, Nesterov, 12 cubic Newton-Schulz steps in bf16, sqrt(max(1, rows/cols))
    scale) on the hidden matrices with lr 0.035 and decoupled weight decay 0.025; AdamW on the rest, betas
    (0.8, 0.95), eps 1e-10, no weight decay: embedding lr 0.3, head weight 1/320, 1-D parameters 0.01; the track's
    baseline init. All of it inside EMA-Nesterov: look-ahead 0.6·ρ (ρ the embedding group's lr ratio, one step
    late), displacement EMA 0.99, the look-ahead on from step 500 to step 2399 (the script's train_steps - 750).
    The schedule's horizon is 3150 steps; the published 3125 is read from the dense late validation (every 25
    steps from 90% of the horizon), so the run stops (and is scored) at 3125.
    """
    return {"optimizer": "muon", "optim.lr": 0.035, "optim.weight_decay": 0.025, **TRACK3_NEWTON_SCHULZ,
            "optim.embed_lr": 0.3, "optim.head_lr": 1 / 320, "optim.scalar_lr": 0.01, "optim.aux_betas": (0.8, 0.95),
            "optim.aux_eps": 1e-10, "optim.aux_weight_decay": 0.0, "max_steps": 3125, **TRACK3_SCHEDULE,
            "schedule_steps": 3150, "wrapper": "ema_nesterov", "wrapper.lookahead": 0.6, "wrapper.scheduled": True,
            "wrapper.schedule_role": "embed", "wrapper.ema": 0.99, "wrapper.prefill_steps": 500,
            "wrapper.rest_steps": 2400}
