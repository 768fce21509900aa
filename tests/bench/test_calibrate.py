"""bench.calibrate: σ, the target and the loss per 100 steps of a preset from its baseline's seeds, on a worked
example computed by hand."""

import math

import pytest

from bench import calibrate


def _run(seed, at96, at112, final):
    return {"seed": seed, "final_val_loss": final,
            "curve": [{"step": 0, "val_loss": 10.8}, {"step": 96, "val_loss": at96}, {"step": 112, "val_loss": at112},
                      {"step": 160, "val_loss": final}]}


def test_worked_example():
    """Finals 4.40, 4.42, 4.38, 4.44: mean 4.41, squared deviations sum 0.002, σ = √(0.002/3) = 0.025820.
    The 4-seed mean at step 112 (70% of 160) is 4.73; + z·σ/√4 = 3·0.025820/2 = 0.038730 gives 4.768730, rounded
    up to 4.77; margin there (4.77 - 4.73)·2 = 0.08 >= z·σ = 0.07746; at step 96 the mean 5.0 is not reached.
    Short runs (128 steps) of seeds 1000 and 1001 end 0.20 and 0.22 higher: 0.21 per 32 steps = 0.65625 per 100."""
    full = [_run(1000, 5.0, 4.70, 4.40), _run(1001, 5.0, 4.72, 4.42), _run(1002, 5.0, 4.74, 4.38),
            _run(1003, 5.0, 4.76, 4.44)]
    short = {1000: {"final_val_loss": 4.60}, 1001: {"final_val_loss": 4.64}}
    c = calibrate.calibrate(full, short, budget=160, short_steps=128, z=3.0, target_frac=0.7, rounding=0.01)
    assert c["sigma"] == pytest.approx(math.sqrt(0.002 / 3), abs=1e-12) and c["sigma"] == pytest.approx(0.025820, 1e-4)
    assert c["target_step"] == 112 and c["mean_there"] == pytest.approx(4.73)
    assert c["target_exact"] == pytest.approx(4.768730, abs=1e-6) and c["target"] == pytest.approx(4.77)
    assert c["margin_there"] == pytest.approx(0.08) and c["reached_there"] and not c["reached_before"]
    assert c["rises"] == {1000: pytest.approx(0.20), 1001: pytest.approx(0.22)}
    assert c["loss_per_100_steps"] == pytest.approx(0.65625)
    lo, hi = c["sigma_ci95"]
    assert lo < c["sigma"] < hi
    text = calibrate.report(c, "track3-cpu", 3.0)
    assert "target_val_loss=4.77, target_sigma=0.0258, loss_per_100_steps=0.66" in text
    assert "not reached" in text


def test_a_target_reached_before_its_step_is_flagged():
    full = [_run(1000, 4.70, 4.60, 4.40), _run(1001, 4.72, 4.62, 4.42)]
    c = calibrate.calibrate(full, {}, budget=160, short_steps=128, z=3.0, target_frac=0.7, rounding=0.5)
    assert c["target"] == 5.0 and c["reached_before"] and c["loss_per_100_steps"] is None
    assert "REACHED already" in calibrate.report(c, "p", 3.0)
