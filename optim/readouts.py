"""Readouts: which weights validation reads (`--readout NAME`, `--readout.FIELD=value`).

By default validation evaluates the trained weights. A readout keeps its own statistics of them, updated after
every optimizer step (update(step)), and within `weights()` puts the weights to evaluate in the model, restoring
the trained ones after. state_dict() holds its statistics, so a checkpoint round-trips them. A readout module
registers make(cfg, model) with optim.registry.readout.
"""

import contextlib

import torch


class Readout:
    """Base of every readout: evaluates the trained weights as they are."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def update(self, step: int):
        """Called after optimizer step `step` (1-based: the number of steps taken)."""

    @contextlib.contextmanager
    def weights(self):
        """Inside: the model holds the weights validation reads."""
        yield

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict):
        pass
