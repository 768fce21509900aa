"""Stop signals: SIGINT (Ctrl-C) and SIGTERM (a scheduler's preemption; torchrun passes it to every rank).

    with StopSignals(device, world_size, announce=rank == 0) as signals:
        ... at a boundary: the flag is read with the boundary's other values, then signals.agree(value) ...
        if signals.agreed: write a checkpoint, stop

The first signal asks the run to stop at its next boundary, where the ranks agree on it (the largest signal
number any rank received, all-reduced with the boundary's values, so every rank stops at the same step) and a
checkpoint is written. Signals after the first are held: the stop and its checkpoint go on, so impatient repeated
Ctrl-C cannot interrupt a checkpoint being written. Two further signals within ABORT_WINDOW_S seconds of each
other (a third Ctrl-C in quick succession) abort at once by raising `Aborted` wherever the main thread is; an
interrupted checkpoint write leaves the previous checkpoint as it was (speedrun.checkpoint.save_atomic), so the
last good checkpoint survives an abort. When a stopped run leaves the block, signals in the next ABORT_WINDOW_S
seconds are swallowed (the process is ending; they cannot break its last line), then the previous handlers return.
Outside the main thread signals keep their handlers.
"""

import signal
import sys
import threading
import time

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
ABORT_WINDOW_S = 3.0


class Aborted(KeyboardInterrupt):
    """A run aborted by repeated stop signals, without a checkpoint for this stop."""

    def __init__(self, signum: int):
        super().__init__(f"aborted by {signal.Signals(signum).name}")
        self.signum = signum


class StopSignals:
    """The stop requested by a signal (`signum`, 0: none) and the one the ranks agreed on (`agreed`)."""

    def __init__(self, device="cpu", world_size: int = 1, *, announce: bool = True,
                 abort_window_s: float = ABORT_WINDOW_S):
        self.world_size, self.announce, self.abort_window_s = world_size, announce, abort_window_s
        self.signum = 0  # the first signal received
        self.agreed = 0  # the signal every rank agreed on at the last boundary
        self._held = []  # monotonic times of the signals after the first
        self.aborted = False
        self._flag = torch.zeros((), dtype=torch.float64, device=device) if world_size > 1 else None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        return self

    def __exit__(self, *exc):
        previous, self._previous = self._previous, {}
        if not self.signum:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            return False
        # A stopped run is ending (its process exits next): signals within the abort window are the impatient
        # repeats of the stop's and are swallowed, so they cannot break its last line; later ones find the old
        # handlers again.
        until = time.monotonic() + self.abort_window_s

        def after_stop(signum, frame):
            if time.monotonic() <= until:
                return
            for number, handler in previous.items():
                signal.signal(number, handler)
            handler = previous.get(signum)
            if callable(handler):
                handler(signum, frame)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)

        for signum in previous:
            signal.signal(signum, after_stop)
        return False

    def _say(self, text: str):
        if self.announce:
            print(text, file=sys.stderr, flush=True)

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if not self.signum:
            self.signum = signum
            self._say(f"{name}: stopping after the next logged step with a checkpoint (send it twice more within "
                      f"{self.abort_window_s:g} s to abort at once, without one)")
            return
        if self.aborted:
            return  # the abort is under way
        now = time.monotonic()
        self._held.append(now)
        if len(self._held) >= 2 and now - self._held[-2] <= self.abort_window_s:
            self.aborted = True
            raise Aborted(signum)
        self._say(f"{name}: already stopping with a checkpoint; send it once more within {self.abort_window_s:g} s "
                  "to abort at once, without one")

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
