"""speedrun.clock.Clock: the time between start() and stop() is counted, pauses are not, and each end waits for the
device first (the work queued by the timed steps is counted, none queued before)."""

import time

import pytest

from speedrun.clock import Clock


def test_counts_the_intervals_and_not_the_pauses():
    clock = Clock()
    clock.start()
    time.sleep(0.05)
    first = clock.stop()
    assert 0.05 <= first == clock.elapsed and not clock.running
    time.sleep(0.1)  # a pause: validation, a checkpoint
    assert clock.elapsed == first
    clock.start()
    assert clock.running
    time.sleep(0.02)
    clock.stop()
    assert first + 0.02 <= clock.elapsed < first + 0.02 + 0.09  # the 0.1 s pause is not in it


def test_the_device_wait_at_stop_is_counted_and_the_one_at_start_is_not():
    """synchronize() stands for the device finishing its queued work: at stop() that work belongs to the timed steps,
    at start() it belongs to what ran before (validation, the warm-up)."""
    waits = []

    def synchronize():
        waits.append(time.perf_counter())
        time.sleep(0.05)

    clock = Clock(synchronize, elapsed=1.0)  # a resumed run starts from the checkpoint's time
    clock.start()
    clock.stop()
    assert len(waits) == 2 and 1.05 <= clock.elapsed < 1.05 + 0.045


def test_misuse_is_an_error():
    clock = Clock()
    with pytest.raises(RuntimeError, match="not running"):
        clock.stop()
    clock.start()
    with pytest.raises(RuntimeError, match="already running"):
        clock.start()
