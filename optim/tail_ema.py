"""Tail-EMA: validation reads a blend of the weights with their exponential moving average over the run's tail.

From the step count `start` on (optimizer steps taken) the readout keeps an fp32 EMA of every parameter but the
embeddings, created from the weights at `start` and advanced after each later step while steps < `end`:

    ema ← ema + (w - ema)/tau

Validation then evaluates (1 - blend)·w + blend·ema (in each parameter's dtype), the trained weights put back
after; before `start` it evaluates the trained weights. Training never reads the EMA. Track 3's record (result
#46) validates on it with start 2400, end 2900, tau 150, blend 0.6 (`--readout tail_ema`); the trainer logs the
raw weights' val loss beside it.
"""

import contextlib
from dataclasses import dataclass

import torch

from optim.readouts import Readout
from optim.registry import Steps, readout, require
from optim.roles import EMBEDDINGS
from optim.schedules import StepPoint


@dataclass(frozen=True)
class TailEmaConfig:
    """Validation on a blend of the weights and their EMA over the run's tail (embeddings excluded)."""

    start: Steps = 2400
    """The step count at which the EMA is created from the weights."""
    end: Steps = 2900
    """The EMA is advanced after each step while the step count is below this."""
    tau: StepPoint = 150.0
    """The EMA's horizon in steps: ema <- ema + (w - ema)/tau."""
    blend: float = 0.6
    """Validation reads (1 - blend)·w + blend·ema."""
    embeddings: bool = False
    """Average the embeddings too."""

    def __post_init__(self):
        require(self.start >= 0 and self.end >= self.start,
                f"--readout.start={self.start} and --readout.end={self.end} must satisfy 0 <= start <= end")
        require(self.tau >= 1, f"--readout.tau={self.tau} must be >= 1")
        require(0 <= self.blend <= 1, f"--readout.blend={self.blend} must lie in [0, 1]")


class TailEma(Readout):
    def __init__(self, cfg: TailEmaConfig, model: torch.nn.Module):
        super().__init__(model)
        self.cfg = cfg
        self.params = [p for name, p in model.named_parameters()
                       if cfg.embeddings or not name.startswith(EMBEDDINGS)]
        self.ema: list[torch.Tensor] | None = None

    @torch.no_grad()
    def update(self, step: int):
        if not self.cfg.start <= step < self.cfg.end:
            return
        if self.ema is None:
            self.ema = [p.detach().float().clone() for p in self.params]
            return
        for avg, p in zip(self.ema, self.params):
            avg.add_(p.detach().float() - avg, alpha=1.0 / self.cfg.tau)

    def blends(self) -> bool:
        return self.ema is not None

    @contextlib.contextmanager
    def weights(self):
        if self.ema is None:
            yield
            return
        stash = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for avg, p in zip(self.ema, self.params):
                p.copy_(((1.0 - self.cfg.blend) * p.float() + self.cfg.blend * avg).to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for saved, p in zip(stash, self.params):
                    p.copy_(saved)

    def state_dict(self) -> dict:
        return {"ema": self.ema}

    def load_state_dict(self, state: dict):
        ema = state.get("ema")
        self.ema = None if ema is None else [e.to(device=p.device, copy=True) for e, p in zip(ema, self.params)]


@readout("tail_ema", TailEmaConfig)
def make(cfg: TailEmaConfig, model: torch.nn.Module) -> TailEma:
    return TailEma(cfg, model)
