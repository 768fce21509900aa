"""speedrun.guard: the device-side record of the first non-finite step (no host sync), the host check that names the
parameter, the replay, and the weights check before a checkpoint."""

import math

import pytest
import torch

from speedrun.guard import Diverged, NonFiniteGuard, check_weights, first_bad_grad
from tests.host_syncs import HostSyncs


def _values(*xs):
    return [torch.tensor(x, dtype=torch.float64) for x in xs]


def test_records_the_first_non_finite_step_without_reading_the_device():
    guard = NonFiniteGuard("cpu")
    steps = [(0, 2.5, 1.0), (1, 2.4, 1.1), (2, 2.3, float("inf")), (3, float("nan"), 1.0)]
    with HostSyncs("cpu") as syncs:
        for step, loss, norm in steps:
            guard.record(step, *_values(loss, norm))
    assert syncs.events == []  # nothing waited for the device
    assert guard.first.tolist() == [2.0, 2.3, math.inf]  # step 2 is the first; step 3 does not overwrite it
    guard.reset()
    assert guard.first.tolist() == [-1.0, 0.0, 0.0]
    guard.record(7, *_values(1.0, 1.0))
    assert guard.first.tolist() == [-1.0, 0.0, 0.0]


def _model_with_grads(bad: str | None):
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    model(torch.ones(4, 2)).sum().backward()
    if bad:
        dict(model.named_parameters())[bad].grad[0] = float("nan")
    return model


def test_the_host_check_names_the_step_the_value_and_the_first_bad_gradient():
    model = _model_with_grads("1.weight")
    NonFiniteGuard.check(5, *_values(2.0, 1.0), model.named_parameters())  # finite: nothing
    with pytest.raises(Diverged, match="step 5: training loss is nan; first parameter with a non-finite gradient: "
                                       "1.weight"):
        NonFiniteGuard.check(5, *_values(float("nan"), 1.0), model.named_parameters())
    with pytest.raises(FloatingPointError, match="step 6: gradient norm is inf; first parameter .*: 1.weight"):
        NonFiniteGuard.check(6, *_values(2.0, float("inf")), model.named_parameters())
    assert first_bad_grad(_model_with_grads(None).named_parameters()) == "every gradient is finite"


def test_the_replay_runs_from_the_rollback_point_and_reports():
    ran = []

    def step(s):
        ran.append(s)
        if s == 4:
            raise Diverged("step 4: gradient norm is nan; first parameter with a non-finite gradient: w")

    with pytest.raises(Diverged, match="step 4: .*: w"):
        NonFiniteGuard.replay(4, 1.0, float("nan"), start=2, step=step)
    assert ran == [2, 3, 4]
    ran.clear()
    with pytest.raises(Diverged, match=r"step 6: training loss is nan; replayed from step 5, the step was finite .*"
                                       "not deterministic"):
        NonFiniteGuard.replay(6, float("nan"), 1.0, start=5, step=step)
    assert ran == [5, 6]
    with pytest.raises(Diverged, match="^step 3: gradient norm is inf$"):  # nothing to roll back to
        NonFiniteGuard.replay(3, 1.0, float("inf"), start=None, step=step)


def test_non_finite_weights_are_named():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    check_weights(model.named_parameters(), 9)
    with torch.no_grad():
        model[1].bias.fill_(float("-inf"))
        model[1].weight[0, 0] = float("nan")
    with pytest.raises(Diverged, match="parameter 1.weight is not finite after 9 steps.*no checkpoint written"):
        check_weights(model.named_parameters(), 9)
