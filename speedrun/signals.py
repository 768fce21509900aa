"""Stop signals: SIGINT (Ctrl-C) and SIGTERM (a scheduler's preemption; torchrun passes it to every rank).

    with StopSignals(device, world_size, announce=rank == 0) as signals:
        ... at a boundary: the flag is read with the boundary's other values, then signals.agree(value) ...
        if signals.agreed: write a checkpoint, stop

The first signal asks the run to stop at its next boundary, where the ranks agree on it (the largest signal
number any rank received, all-reduced with the boundary's values, so every rank stops at the same step) and a
checkpoint is written. A second signal stops at once, without a checkpoint (KeyboardInterrupt). Outside the main
thread signals keep their handlers.
"""

import signal
import sys
import threading

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """The stop requested by a signal (`signum`, 0: none) and the one the ranks agreed on (`agreed`)."""

    def __init__(self, device="cpu", world_size: int = 1, *, announce: bool = True):
        self.world_size, self.announce = world_size, announce
        self.signum = 0  # the first signal received
        self.agreed = 0  # the signal every rank agreed on at the last boundary
        self._flag = torch.zeros((), dtype=torch.float64, device=device) if world_size > 1 else None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        return False

    def _say(self, text: str):
        if self.announce:
            print(text, file=sys.stderr, flush=True)

    def _handle(self, signum, frame):
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum
        self._say(f"{signal.Signals(signum).name}: stopping after the next logged step with a checkpoint (send it "
                  "again to stop at once, without one)")

    def flag(self) -> torch.Tensor | None:
        """On several ranks: the largest signal number any rank received, all-reduced on the device as a 1-element
        tensor for the boundary's single read; None on one rank."""
        if self._flag is None:
            return None
        self._flag.fill_(self.signum)
        dist.all_reduce(self._flag, op=dist.ReduceOp.MAX)
        return self._flag.view(1)

    def agree(self, value: float | None = None):
        """At a boundary: the stop every rank takes (the flag's value read by the host; this rank's on one rank)."""
        self.agreed = int(value) if value is not None else self.signum
