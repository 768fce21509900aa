"""bench.optimizer_cost at a tiny shape: each optimizer's step time beside its forward+backward, its state memory
against the state's tensors counted another way, a recipe registered later measured with no change, the wrapper's
look-ahead counted as optimizer time, bad inputs as one-line errors."""

import json
import time

import pytest
import torch

from bench import optimizer_cost
from optim import registry
from speedrun import cli

TINY = ["--model.n_layer=1", "--model.n_embd=128", "--model.n_head=1", "--model.max_seq_len=16", "--batch_size=1",
        "--seq_len=16", "--threads=1"]


def _state_dict_bytes(optimizer) -> int:
    """The state's bytes through state_dict(), the checkpoint's view, not the bench's walk over `.state`."""
    sd = optimizer.state_dict()
    states = [*sd["inner"]["state"].values(), *sd["wrapper"].values()] if "inner" in sd else sd["state"].values()
    return sum(t.numel() * t.element_size() for s in states for t in s.values() if torch.is_tensor(t))


def _expected_bytes(optimizer, hidden_buffers: int, wrapper_buffers: int) -> int:
    """What the algorithm must keep: `hidden_buffers` fp32 tensors shaped like each hidden matrix, AdamW's two
    moments and 4-byte step count for every other parameter, `wrapper_buffers` copies of every parameter."""
    total = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            total += hidden_buffers * p.numel() * 4 if group["role"] == "hidden" else 2 * p.numel() * 4 + 4
            total += wrapper_buffers * p.numel() * p.element_size()
    return total


@pytest.mark.parametrize("name,hidden_buffers,wrapper_buffers", [
    ("track3-muon", 1, 0),                # momentum
    ("track3-muon2", 2, 0),               # momentum and the gradient's second moment
    ("track3-spectral-descent", 1, 0),    # Muon's momentum buffer, kept though momentum is 0
    ("track3-sgd", 1, 0),                 # momentum
    ("track3-ema-nesterov-muon", 1, 2),   # Muon's momentum, the wrapper's prev and buf
])
def test_state_memory_is_the_state_tensors_bytes(name, hidden_buffers, wrapper_buffers):
    step = optimizer_cost.RecipeStep("track3-cpu", name, TINY, torch.device("cpu"), None, 0)
    assert optimizer_cost.state_bytes(step.optimizer) == 0  # state is created by the first step
    step(0)
    measured = optimizer_cost.state_bytes(step.optimizer)
    assert measured == _state_dict_bytes(step.optimizer)
    assert measured == _expected_bytes(step.optimizer, hidden_buffers, wrapper_buffers)


def test_views_of_one_buffer_count_it_once():
    buffer = torch.zeros(10, 4)
    fake = type("Fake", (), {"state": {0: {"a": buffer[:5], "n": 3}, 1: {"a": buffer[5:]}, 2: {"b": torch.ones(3)}}})
    assert optimizer_cost.state_bytes(fake()) == 10 * 4 * 4 + 3 * 4


def test_two_recipes_and_an_optimizer_at_a_tiny_shape(tmp_path, capsys):
    out = tmp_path / "cost.json"
    result = optimizer_cost.main(["--optimizers=track3-muon,track3-ema-nesterov-muon,adamw", "--steps=2",
                                  "--warmup=1", f"--json={out}", *TINY])
    names = {"track3-muon", "track3-ema-nesterov-muon", "adamw"}
    assert json.loads(out.read_text())["optimizers"].keys() == names == result["optimizers"].keys()
    for r in result["optimizers"].values():
        assert len(r["forward_backward_s"]) == len(r["optimizer_s"]) == 2
        assert all(t > 0 for t in r["forward_backward_s"] + r["optimizer_s"])
        assert r["ratio"] == pytest.approx(r["optimizer_ms"]["median"] / r["forward_backward_ms"]["median"])
    muon, ema, adamw = (result["optimizers"][n] for n in ("track3-muon", "track3-ema-nesterov-muon", "adamw"))
    assert (muon["optimizer"], muon["wrapper"], ema["wrapper"], adamw["optimizer"]) == (
        "muon", None, "ema_nesterov", "adamw")
    # the wrapper adds two fp32 copies of the parameters (prev and buf) to Muon's state
    assert ema["state_bytes"] - muon["state_bytes"] == 2 * muon["param_bytes"] == 2 * 4 * muon["params"]
    assert adamw["state_bytes"] > muon["state_bytes"]  # two moments on the hidden matrices instead of one
    # the steps start at half the horizon: inside the wrapper's look-ahead window on this preset
    assert ema["at_step"] == 155 // 2 and 25 <= ema["at_step"] < 118
    assert result["machine"]["threads"] == 1 and "load_before" in result and result["commit"]
    printed = capsys.readouterr().out
    assert "muon + ema_nesterov" in printed and "1-min load" in printed and "CPU capability" in printed
    row = next(line for line in printed.splitlines() if line.startswith("track3-ema-nesterov-muon "))
    assert row.split()[-2:] == [f"{ema['state_bytes'] / 1e6:.2f}", f"{ema['state_bytes'] / ema['param_bytes']:.2f}"]


def test_a_recipe_registered_later_is_measured_without_a_change():
    @registry.recipe("test-cost-sgd")
    def later() -> dict:
        """A recipe registered after the bench was written. Source: our own (a test)."""
        return {"optimizer": "sgd", "optim.lr": 0.01, "max_steps": 3250}

    try:
        assert "test-cost-sgd" in optimizer_cost.recipe_names()
        result = optimizer_cost.main(["--optimizers=test-cost-sgd", "--steps=1", "--warmup=0", *TINY])
        assert result["optimizers"]["test-cost-sgd"]["optimizer"] == "sgd"
    finally:
        del registry._ENTRIES["recipe"]["test-cost-sgd"]


def test_the_look_ahead_is_optimizer_time():
    """A wrapper's before_forward work lands in the optimizer column, not in forward+backward."""
    step = optimizer_cost.RecipeStep("track3-cpu", "track3-ema-nesterov-muon", TINY, torch.device("cpu"), None, 0)
    step(0)  # the first forward compiles the CPU's loss
    calls = []
    forward = step.optimizer.before_forward

    def slow(i):
        calls.append(i)
        forward(i)
        time.sleep(3.0)

    step.optimizer.before_forward = slow
    fb, opt = step(1)
    assert calls == [step.at_step + 1] and opt >= 3.0 > fb


NO_GPU = not torch.cuda.is_available()


@pytest.mark.parametrize("argv,message", [
    (["--optimizers=adamw,nope"], "unknown optimizer or recipe 'nope'; optimizers: "),
    (["--optimizers=track3-muon,track3-muon"], "--optimizers track3-muon,track3-muon names one twice"),
    (["--optimizer=track3-muon"], "--optimizer=track3-muon: the preset is --preset and the optimizers are"),
    (["--steps=0"], "--steps must be >= 1"),
    (["--device=tpu"], "argument --device: invalid choice: 'tpu'"),
    pytest.param(["--device=cuda"], "no CUDA GPU", marks=pytest.mark.skipif(not NO_GPU, reason="a GPU is here")),
    pytest.param(["--preset=track3"], "measured on a GPU", marks=pytest.mark.skipif(not NO_GPU, reason="GPU")),
])
def test_bad_inputs_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.run_main(optimizer_cost.main, argv)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert len(captured.err.splitlines()) == 1 and captured.err.startswith("error: "), captured.err
    assert message in captured.err and captured.out == "", captured.err
