"""The non-finite guard: a NaN or inf found without making the training step wait for the device.

Each step records on the device, with tensor ops only (no read by the host), the first step whose loss or gradient
norm is not finite, with both values: `record`. The trainer reads that record together with the loss at its next
boundary (one host sync). When it is set, the run rolls back to its last good state and `replay`s the steps up to
the recorded one with a host check after each (`check`), which stops the run naming the step, the value and the
first parameter whose gradient is not finite. Where the replay finds every step finite (non-deterministic
arithmetic), the run still stops, with the recorded values. Weights are checked (`check_weights`) before every
checkpoint, so a checkpoint never holds non-finite weights and the last one is always a good rollback point.
"""

import math
from typing import Callable, Iterable

import torch

from speedrun.cli import UserError


class Diverged(UserError, FloatingPointError):
    """A non-finite loss, gradient norm or weight; the message names the step (and the parameter when known)."""


def first_bad_grad(named_parameters: Iterable) -> str:
    for name, p in named_parameters:
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return f"first parameter with a non-finite gradient: {name}"
    return "every gradient is finite"


def check_weights(named_parameters: Iterable, steps: int):
    """Raise Diverged naming the first non-finite parameter (one host read for all of them)."""
    named = list(named_parameters)
    finite = torch.stack([torch.isfinite(p).all() for _, p in named])
    if not finite.all():
        name = named[int((~finite).nonzero()[0, 0])][0]
        raise Diverged(f"parameter {name} is not finite after {steps} steps, although every loss and gradient norm "
                       "was finite; no checkpoint written")


class NonFiniteGuard:
    """The device-side record [first bad step (-1: none), its loss, its gradient norm], float64 on `device`."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.reset()

    def reset(self):
        self.first = torch.tensor([-1.0, 0.0, 0.0], dtype=torch.float64, device=self.device)

    def record(self, step: int, loss: torch.Tensor, norm: torch.Tensor):
        """If this is the first step with a non-finite loss or norm, remember (step, loss, norm), on the device."""
        values = torch.stack((loss, norm.double()))
        first = ~torch.isfinite(values).all() & (self.first[0] < 0)
        self.first = torch.where(first, torch.cat((values.new_full((1,), step), values)), self.first)

    @staticmethod
    def check(step: int, loss: torch.Tensor, norm: torch.Tensor, named_parameters: Iterable):
        """The host check of one step (reads the device): Diverged naming the step and the first bad gradient."""
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise Diverged(f"step {step}: training loss is {loss_value}; {first_bad_grad(named_parameters)}")
        if not torch.isfinite(norm):
            raise Diverged(f"step {step}: gradient norm is {norm.item()}; {first_bad_grad(named_parameters)}")

    @staticmethod
    def replay(bad_step: int, loss: float, norm: float, *, start: int | None, step: Callable[[int], None]):
        """The boundary found `bad_step` (with `loss` and `norm`) and the run was rolled back to `start` (None:
        nothing to roll back to). Run step(s) for s = start..bad_step, each checked; raise the replay's Diverged,
        or, where the replay does not reproduce it, one with the recorded values."""
        what = f"training loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {norm}"
        if start is None:
            raise Diverged(f"step {bad_step}: {what}")
        for s in range(start, bad_step + 1):
            step(s)
        raise Diverged(f"step {bad_step}: {what}; replayed from step {start}, the step was finite "
                       "(the device's arithmetic is not deterministic), so the parameter is not known")
