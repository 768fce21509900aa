"""MuLoCo's outer optimizer as a wrapper (`--wrapper muloco`): Nesterov SGD on the displacement of every parameter
over each window of `sync_interval` inner steps, around any inner optimizer.

After every sync_interval-th step of the inner optimizer, per parameter p with its snapshot S (the weights at the
start of the window) and its outer momentum u (0 at first):

    δ = S - p                        the pseudo-gradient: minus the window's displacement
    u ← μ·u + η·δ                    (mul then add)
    p ← S - μ·u - η·δ                (copy S, then subtract μ·u, then η·δ: Nesterov)
    S ← p                            the next window starts here

η = outer_lr, μ = outer_momentum. The inner optimizer's state (momenta, second moments, step counts) is left as it
is; its lr schedule runs on. Every parameter takes part, the ones AdamW trains included. Track 3's result #13 (MuLoCo,
Algorithm 1 with one worker, over NorMuonH) ran outer_lr 0.7, outer_momentum 0.5, sync_interval 30. The outer step
moves the hidden matrices off their sphere: a hyperball inner optimizer keeps the new radius from then on.

The snapshot is taken at the first step, before the inner one (the weights the run starts from, whatever
initialised them after the wrapper was built); snapshots and momenta are the wrapper's state (optim.wrappers), so a
checkpoint holds them and a resumed run continues bit for bit, between outer steps too.
"""

from dataclasses import dataclass

import torch

from optim.normuonh import TRACK3_NORMUONH
from optim.registry import Steps, recipe, require, wrapper
from optim.wrappers import Wrapper


@dataclass(frozen=True)
class MuLoCoConfig:
    """MuLoCo's outer Nesterov SGD on each window's displacement, every sync_interval inner steps."""

    outer_lr: float = 0.7
    """η: the outer step's learning rate on the pseudo-gradient (1 with momentum 0 leaves the inner trajectory as
    it is)."""
    outer_momentum: float = 0.5
    """μ: the outer Nesterov momentum (u ← μ·u + η·δ)."""
    sync_interval: Steps = 30
    """H: inner steps per window; an outer step follows every H-th inner step (a step count: scaled to a preset's
    budget like the recipes' others, at least 1)."""

    def __post_init__(self):
        require(self.outer_lr > 0 and self.outer_lr == self.outer_lr,
                f"--wrapper.outer_lr={self.outer_lr} must be a number > 0")
        require(0 <= self.outer_momentum < 1, f"--wrapper.outer_momentum={self.outer_momentum} must lie in [0, 1)")
        require(self.sync_interval >= 1, f"--wrapper.sync_interval={self.sync_interval} must be >= 1")


class MuLoCo(Wrapper):
    """The outer optimizer around `inner` over `params` (the model's trainable parameters, in model order)."""

    def __init__(self, cfg: MuLoCoConfig, inner, params):
        super().__init__(inner, params)
        self.cfg = cfg

    @torch.no_grad()
    def step(self, closure=None):
        if not self.state:  # the window's start: the weights before the first inner step
            for p in self.params:
                self.state[p] = {"snapshot": p.detach().clone(), "outer_momentum": torch.zeros_like(p)}
        return super().step(closure)

    def after_inner_step(self):
        if (self.steps + 1) % self.cfg.sync_interval == 0:
            self.outer_step()

    @torch.no_grad()
    def outer_step(self):
        """Nesterov SGD on every parameter's pseudo-gradient S - p; the snapshots move to the new weights."""
        lr, mu = self.cfg.outer_lr, self.cfg.outer_momentum
        for p in self.params:
            state = self.state[p]
            snapshot, u = state["snapshot"], state["outer_momentum"]
            delta = snapshot - p
            u.mul_(mu).add_(delta, alpha=lr)
            p.copy_(snapshot)
            p.add_(u, alpha=-mu)
            p.add_(delta, alpha=-lr)
            snapshot.copy_(p)


@wrapper("muloco", MuLoCoConfig)
def wrap(cfg: MuLoCoConfig, optimizer, model: torch.nn.Module) -> MuLoCo:
    return MuLoCo(cfg, optimizer, [p for p in model.parameters() if p.requires_grad])




@recipe("track3-muloco-normuonh")
def track3_muloco_normuonh() -> dict:
    """Track-3 result #13, NorMuonH inside MuLoCo's outer Nesterov SGD: 3210 steps, mean val loss 3.2785 (n=10).
    Source: records/track_3_optimization/results/20260504_muloco_normuonh/ (its .py, which its logs ran with the
    environment OUTER_LR=0.7 TRAIN_STEPS=3210, as each log prints).

    NorMuonH and its AdamW, schedule and init exactly as track3-normuonh (#8), on a 3210-step horizon (= 107
    windows of 30), inside MuLoCo: after every 30th inner step, every parameter takes the outer step with
    outer_lr 0.7 and outer_momentum 0.5 (the last one after the last inner step, before the final validation).
    """
    return {**TRACK3_NORMUONH, "max_steps": 3210, "wrapper": "muloco", "wrapper.outer_lr": 0.7,
            "wrapper.outer_momentum": 0.5, "wrapper.sync_interval": 30}
