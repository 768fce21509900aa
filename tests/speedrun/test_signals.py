"""speedrun.signals.StopSignals with real signals sent to this process: the first asks for a stop at the next
boundary, later ones are held, a third in quick succession aborts, even inside a checkpoint write, whose previous
checkpoint survives."""

import os
import signal
import threading
import time

import pytest
import torch

from speedrun import checkpoint
from speedrun.signals import Aborted, StopSignals


def test_the_first_signal_asks_for_a_stop_and_says_so(capsys):
    with StopSignals(abort_window_s=0.05) as signals:
        assert signals.signum == 0 and signals.flag() is None  # one rank: nothing to all-reduce
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.signum == signal.SIGTERM and signals.agreed == 0  # agreed only at a boundary
        signals.agree()
        assert signals.agreed == signal.SIGTERM
    assert "SIGTERM: stopping after the next logged step with a checkpoint" in capsys.readouterr().err


def test_a_second_signal_is_held_and_a_third_in_quick_succession_aborts(capsys):
    with StopSignals(abort_window_s=0.5) as signals:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)  # held: the stop and its checkpoint go on
        assert signals.signum == signal.SIGINT
        with pytest.raises(Aborted) as aborted:
            os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # the abort is under way: swallowed
    assert aborted.value.signum == signal.SIGINT and isinstance(aborted.value, KeyboardInterrupt)
    assert "SIGTERM: already stopping with a checkpoint; send it once more within 0.5 s to abort" in \
        capsys.readouterr().err


def test_held_signals_far_apart_do_not_abort():
    with StopSignals(announce=False, abort_window_s=0.05) as signals:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)  # more than the window after the second: held again
        with pytest.raises(Aborted):
            os.kill(os.getpid(), signal.SIGINT)
        assert signals.signum == signal.SIGINT


def test_an_abort_during_a_checkpoint_write_leaves_the_last_checkpoint(tmp_path):
    """The second and third signal arrive while a 200 MB checkpoint is being written (sent when its temporary file
    has begun to fill): the write stops with Aborted, not with torch's failure to finish the half-written file, the
    temporary file is gone, and the previous checkpoint is the one on disk, whole."""
    path = tmp_path / "checkpoint.pt"
    checkpoint.save_atomic({"step": 1, "w": torch.arange(5)}, str(path))
    big = {"step": 2, "w": [torch.full((512, 1024), float(i)) for i in range(100)]}

    def interrupt_the_write():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if any(p.name.endswith(".tmp") and p.stat().st_size > 0 for p in tmp_path.iterdir()):
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.001)
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)

    with StopSignals(announce=False, abort_window_s=0.5):
        os.kill(os.getpid(), signal.SIGTERM)  # the stop whose checkpoint is being written
        thread = threading.Thread(target=interrupt_the_write)
        thread.start()
        try:
            with pytest.raises(Aborted):
                checkpoint.save_atomic(big, str(path))
        finally:
            thread.join()
    state = checkpoint.load(str(path))
    assert state["step"] == 1 and torch.equal(state["w"], torch.arange(5))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt"]


def test_after_a_stop_repeats_are_swallowed_then_the_old_handlers_return():
    """A stopped run leaving the block (its process about to exit): signals within the window cannot break its
    last line; after the window the previous handlers are back. A run never signalled puts them back at once."""
    time.sleep(0.6)  # the windows of the tests above have passed
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals(announce=False):
        pass
    assert signal.getsignal(signal.SIGTERM) is before
    with StopSignals(announce=False, abort_window_s=0.2):
        os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGINT)  # swallowed
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.3)
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)  # the handler before the run (Python's or pytest's) again

