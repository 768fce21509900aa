"""MuLoCo's outer Nesterov SGD as a wrapper part: its outer step against a float64 statement, around every inner
optimizer of the package, and its state through a checkpoint: a run interrupted between two outer steps and resumed
continues bit for bit."""

import copy
import json
import os
import signal

import pytest
import torch

import train
from optim import registry, wrap_optimizer
from optim.muloco import MuLoCo, MuLoCoConfig
from optim.sgd import SGDConfig
from speedrun.cli import ConfigError, Interrupted
from speedrun.config import resolve

INNER = ["adamw", "sgd", "muon", "normuon", "adamh", "muonh", "normuonh"]


def test_outer_steps_match_the_formula():
    """Inner SGD steps, an outer Nesterov step after every H-th: against float64 over three windows."""
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    model = torch.nn.Linear(6, 5)
    w = [p.detach().double().clone() for p in model.parameters()]
    snap = [x.clone() for x in w]
    u = [torch.zeros_like(x) for x in w]
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    outer = MuLoCo(MuLoCoConfig(outer_lr=0.7, outer_momentum=0.5, sync_interval=3), inner, list(model.parameters()))
    for step in range(9):
        gs = [torch.randn(p.shape, generator=g) for p in model.parameters()]
        for p, gr in zip(model.parameters(), gs):
            p.grad = gr
        outer.step()
        w = [x - 0.1 * gr.double() for x, gr in zip(w, gs)]
        if (step + 1) % 3 == 0:
            for i in range(len(w)):
                delta = snap[i] - w[i]
                u[i] = 0.5 * u[i] + 0.7 * delta
                w[i] = snap[i] - 0.5 * u[i] - 0.7 * delta
                snap[i] = w[i].clone()
        for p, x in zip(model.parameters(), w):
            torch.testing.assert_close(p.detach().double(), x, rtol=1e-5, atol=1e-6)
    assert outer.steps == 9


def test_with_outer_lr_1_and_no_momentum_it_changes_nothing():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    plain = torch.optim.SGD(a.parameters(), lr=0.05)
    wrapped = MuLoCo(MuLoCoConfig(outer_lr=1.0, outer_momentum=0.0, sync_interval=2),
                     torch.optim.SGD(b.parameters(), lr=0.05), list(b.parameters()))
    for _ in range(5):
        grads = [torch.randn(p.shape) for p in a.parameters()]
        for p, q, gr in zip(a.parameters(), b.parameters(), grads):
            p.grad, q.grad = gr.clone(), gr.clone()
        plain.step()
        wrapped.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-7)  # S - (S - p) = p up to one rounding


def test_the_snapshot_is_taken_at_the_first_step():
    """Weights set after the wrapper is built (a re-initialisation, a loaded checkpoint) are the first window's start."""
    model = torch.nn.Linear(3, 3)
    outer = MuLoCo(MuLoCoConfig(sync_interval=2), torch.optim.SGD(model.parameters(), lr=0.1), list(model.parameters()))
    with torch.no_grad():
        model.weight.fill_(2.0)
    model.weight.grad, model.bias.grad = torch.ones(3, 3), torch.ones(3)
    outer.step()
    assert torch.equal(outer.state[model.weight]["snapshot"], torch.full((3, 3), 2.0))


def test_state_dict_round_trip_between_outer_steps():
    torch.manual_seed(1)
    model = torch.nn.Linear(5, 4)
    cfg = MuLoCoConfig(outer_lr=0.7, outer_momentum=0.5, sync_interval=3)

    def steps(m, opt, g, n):
        for _ in range(n):
            for p in m.parameters():
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()

    opt = MuLoCo(cfg, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), list(model.parameters()))
    g = torch.Generator().manual_seed(2)
    steps(model, opt, g, 4)  # one outer step done, one inner step into the second window
    saved, saved_model, rng = copy.deepcopy(opt.state_dict()), copy.deepcopy(model.state_dict()), g.get_state()
    steps(model, opt, g, 5)
    other = torch.nn.Linear(5, 4)
    other.load_state_dict(saved_model)
    opt2 = MuLoCo(cfg, torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9), list(other.parameters()))
    opt2.load_state_dict(saved)
    steps(other, opt2, torch.Generator().set_state(rng), 5)
    for p, q in zip(model.parameters(), other.parameters()):
        assert torch.equal(p, q)
    assert opt2.steps == 9


def _interrupt_after(trainer, step: int):
    """SIGTERM to this process right after optimizer step `step` (1-based): the trainer's own handler stops the run
    at the next boundary with a checkpoint, as a scheduler's preemption would."""
    original = trainer.parallel.step
    count = [0]

    def step_then_signal():
        original()
        count[0] += 1
        if count[0] == step + 1:  # the warm-up's step comes first
            os.kill(os.getpid(), signal.SIGTERM)

    trainer.parallel.step = step_then_signal


@pytest.mark.parametrize("inner", INNER)
def test_around_each_inner_optimizer_a_resumed_run_continues_bit_for_bit(inner, text_shards, tmp_path):
    """tiny preset, 9 steps, an outer step after steps 3, 6 and 9; the run interrupted after step 4 and resumed
    ends on the uninterrupted run's weights, val losses and log, bit for bit."""
    common = ["--preset=tiny", f"--data_dir={text_shards}", "--threads=1", "--max_steps=9", "--val_every=3",
              f"--optimizer={inner}", "--wrapper=muloco", "--wrapper.sync_interval=3", "--run_name=r"]
    if inner in ("muonh", "normuonh", "adamh"):
        common += ["--model.init=torch", "--model.zero_init_proj=False"]  # hidden matrices must start non-zero
    reference = train.Trainer(resolve([*common, f"--out_dir={tmp_path / 'ref'}"]))
    summary = reference.run()
    assert isinstance(reference.optimizer, MuLoCo) and reference.optimizer.steps == 9

    first = train.Trainer(resolve([*common, f"--out_dir={tmp_path / 'cut'}", "--log_every=1"]))
    _interrupt_after(first, 4)
    with pytest.raises(Interrupted):
        first.run()
    saved = torch.load(tmp_path / "cut" / "r" / "checkpoint.pt", weights_only=False)
    assert saved["step"] == 4 and saved["optimizer"]["steps"] == 4 and saved["optimizer"]["wrapper"]
    resumed = train.Trainer(resolve([*common, f"--out_dir={tmp_path / 'cut'}", "--resume=True"]))
    summary2 = resumed.run()
    assert summary2["final_val_loss"] == summary["final_val_loss"]
    for (name, p), q in zip(reference.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), name
    vals = [[json.loads(line).get("val_loss") for line in open(tmp_path / d / "r" / "log.jsonl")] for d in ("ref", "cut")]
    assert [v for v in vals[0] if v is not None] == [v for v in vals[1] if v is not None]


def test_it_wraps_through_the_registry_and_its_fields_are_checked():
    entry = registry.lookup("wrapper", "muloco")
    model = torch.nn.Linear(2, 2)
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    wrapped = wrap_optimizer(MuLoCoConfig(), inner, model)
    assert entry.config is MuLoCoConfig and isinstance(wrapped, MuLoCo) and wrapped.param_groups is inner.param_groups
    assert registry.step_fields(MuLoCoConfig) == {"sync_interval"}
    for field, value, message in (("outer_lr", 0.0, "--wrapper.outer_lr=0.0"),
                                  ("outer_momentum", 1.0, "--wrapper.outer_momentum=1.0"),
                                  ("sync_interval", 0, "--wrapper.sync_interval=0")):
        with pytest.raises(ConfigError, match=message):
            MuLoCoConfig(**{field: value})
    cfg = resolve(["--preset=tiny", "--optimizer=sgd", "--wrapper=muloco", "--wrapper.outer_lr=0.9"])
    assert cfg.wrapper == MuLoCoConfig(outer_lr=0.9) and isinstance(cfg.optim, SGDConfig)
