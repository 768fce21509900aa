"""speedrun.signals.StopSignals with real signals sent to this process: the first asks for a stop at the next
boundary, the agreed stop, and the handlers put back afterwards."""

import os
import signal

import pytest

from speedrun.signals import StopSignals


def test_the_first_signal_asks_for_a_stop_and_says_so(capsys):
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as signals:
        assert signals.signum == 0 and signals.flag() is None  # one rank: nothing to all-reduce
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.signum == signal.SIGTERM and signals.agreed == 0  # agreed only at a boundary
        signals.agree()
        assert signals.agreed == signal.SIGTERM
    assert "SIGTERM: stopping after the next logged step with a checkpoint" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_signal_stops_at_once():
    with StopSignals(announce=False) as signals:
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        assert signals.signum == signal.SIGINT
