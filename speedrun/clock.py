"""The run's clock: the training time, measured from boundary to boundary without a host sync per step.

    clock = Clock(synchronize)      # synchronize(): wait for the device's queued work
    clock.start()                   # at the first step after a pause
    ... steps, queued on the device without waiting ...
    clock.stop()                    # at a boundary: the queued steps' time is now counted
    clock.elapsed                   # seconds of training so far

start() and stop() each wait for the device first, so the interval holds exactly the work of the steps queued in
between, and nothing the host did while the clock was stopped (validation, checkpoints, the warm-up) is counted.
On the CPU, whose ops have finished when they return, the waits are no-ops. A resumed run starts from the
checkpoint's elapsed time.
"""

import time


class Clock:
    """Accumulated seconds between start() and stop() calls; `running` between them."""

    def __init__(self, synchronize=lambda: None, elapsed: float = 0.0):
        self.synchronize = synchronize
        self.elapsed = elapsed
        self._start = None

    @property
    def running(self) -> bool:
        return self._start is not None

    def start(self):
        if self._start is not None:
            raise RuntimeError("the clock is already running")
        self.synchronize()
        self._start = time.perf_counter()

    def stop(self) -> float:
        """Stop after the device's queued work; returns the accumulated seconds."""
        if self._start is None:
            raise RuntimeError("the clock is not running")
        self.synchronize()
        self.elapsed += time.perf_counter() - self._start
        self._start = None
        return self.elapsed
