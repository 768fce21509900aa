"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): the sign of an interpolated momentum.

    python train.py --preset track3-cpu --optimizer docs/examples/lion.py:lion-track3
"""

from dataclasses import dataclass

import torch

from optim.registry import optimizer, recipe


@dataclass(frozen=True)
class LionConfig:
    lr: float = 3e-4
    """Learning rate of every parameter."""
    betas: tuple = (0.9, 0.99)
    """(beta1, beta2): the update's interpolation and the momentum's EMA coefficient."""
    weight_decay: float = 0.0
    """Decoupled weight decay: p <- p·(1 - lr·wd)."""


class Lion(torch.optim.Optimizer):
    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            (b1, b2), lr, wd = group["betas"], group["lr"], group["weight_decay"]
            for p in (p for p in group["params"] if p.grad is not None):
                m = self.state[p].setdefault("m", torch.zeros_like(p))
                p.mul_(1 - lr * wd).add_(torch.sign(m.lerp(p.grad, 1 - b1)), alpha=-lr)
                m.lerp_(p.grad, 1 - b2)


@optimizer("lion", LionConfig)
def build(cfg: LionConfig, groups: dict) -> torch.optim.Optimizer:
    return Lion([{"params": ps, "role": role} for role, ps in groups.items() if ps],
                dict(lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay))


@recipe("lion-track3")
def lion_track3() -> dict:
    """Lion on every parameter with track 3's schedule; lr 3e-4, wd 0.1: a first guess, untuned.
    Source: our own (an example of the optimizer seam)."""
    return {"optimizer": "lion", "optim.lr": 3e-4, "optim.weight_decay": 0.1, "max_steps": 3250,
            "schedule": "stable_decay", "schedule.warmup_steps": 0, "schedule.cooldown_frac": 0.7, "grad_clip": 0.0}
