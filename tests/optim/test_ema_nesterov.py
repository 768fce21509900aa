"""EMA-Nesterov (optim/ema_nesterov.py): the look-ahead wrapper's arithmetic against an independent float64 loop,
around every inner optimizer in the trainer, and its state through a checkpoint (a run stopped inside the
look-ahead window and resumed continues bit for bit)."""

import json
import math

import pytest
import torch
import torch.nn as nn

import train
from optim import build_optimizer, registry, wrap_optimizer
from optim.ema_nesterov import EmaNesterov, EmaNesterovConfig
from speedrun import checkpoint
from speedrun.cli import ConfigError
from speedrun.config import resolve


class TwoRoles(nn.Module):
    """A hidden matrix and an embedding-like table, float64, on a random least-squares objective."""

    def __init__(self, g: torch.Generator):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Module()])
        self.blocks[0].w = nn.Parameter(torch.randn(6, 5, generator=g, dtype=torch.float64))
        self.wte = nn.Module()
        self.wte.weight = nn.Parameter(torch.randn(5, 3, generator=g, dtype=torch.float64))
        self.register_buffer("x", torch.randn(16, 6, generator=g, dtype=torch.float64))
        self.register_buffer("y", torch.randn(16, 3, generator=g, dtype=torch.float64))

    def objective(self, w, e):
        return (torch.tanh(self.x @ w) @ e - self.y).square().sum()

    def forward(self):
        return self.objective(self.blocks[0].w, self.wte.weight)


def _factors(g: torch.Generator, n: int) -> tuple[list[float], list[float]]:
    """Per-step lr factors of the two groups, different and changing every step."""
    return (torch.rand(n, generator=g, dtype=torch.float64) + 0.5).tolist(), \
        (torch.rand(n, generator=g, dtype=torch.float64) + 0.5).tolist()


def _reference(w0: list[torch.Tensor], grad, lrs: list[float], hidden_f, embed_f, *, beta, gamma, prefill, rest,
               follow):
    """The look-ahead loop written out: plain SGD (lr0·factor per group) inside, float64 lists of tensors."""
    x = [w.clone() for w in w0]
    prev, buf = [w.clone() for w in w0], [torch.zeros_like(w) for w in w0]
    ratio, shifts = 1.0, []
    for it in range(len(hidden_f)):
        s = beta * ratio if prefill <= it < rest else 0.0
        x = [xi + s * bi for xi, bi in zip(x, buf)]
        grads = grad(x)
        factors = (hidden_f[it], embed_f[it])
        x = [xi - lr * f * gi for xi, lr, f, gi in zip(x, lrs, factors, grads)]
        buf = [gamma * bi + (1 - gamma) * (xi - pi) for bi, xi, pi in zip(buf, x, prev)]
        prev = [xi.clone() for xi in x]
        ratio = factors[follow]
        shifts.append(s)
    return x, buf, shifts


@pytest.mark.parametrize("role,follow", [("embed", 1), ("hidden", 0), ("", 0)])
def test_the_lookahead_matches_the_written_out_loop(role, follow):
    """The shift before each forward, the displacement EMA, prev, and ρ lagging the schedule by one step, for the
    group schedule_role names, on fresh random data with group lrs changing every step."""
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    model = TwoRoles(g)
    n, beta, gamma, prefill, rest = 9, 0.7, 0.8, 2, 7
    hidden_f, embed_f = _factors(g, n)
    lrs = [0.01, 0.02]
    inner = torch.optim.SGD([{"params": [model.blocks[0].w], "lr": lrs[0], "role": "hidden"},
                             {"params": [model.wte.weight], "lr": lrs[1], "role": "embed"}], lr=1.0)
    for group in inner.param_groups:
        group["initial_lr"] = group["lr"]
    cfg = EmaNesterovConfig(lookahead=beta, ema=gamma, prefill_steps=prefill, rest_steps=rest, schedule_role=role)
    opt = wrap_optimizer(cfg, inner, model)
    w0 = [p.detach().clone() for p in model.parameters()]

    def grad(weights):
        leaves = [w.detach().requires_grad_() for w in weights]
        return torch.autograd.grad(model.objective(*leaves), leaves)

    want, want_buf, want_shifts = _reference(w0, grad, lrs, hidden_f, embed_f, beta=beta, gamma=gamma,
                                             prefill=prefill, rest=rest, follow=follow)
    shifts = []
    for it in range(n):
        for group, f in zip(inner.param_groups, (hidden_f[it], embed_f[it])):  # the trainer's order: schedule first
            group["lr"] = group["initial_lr"] * f
        opt.before_forward(it)
        shifts.append(opt.shift)
        model().backward()
        opt.step()
        opt.zero_grad()
    assert shifts == pytest.approx(want_shifts, rel=1e-15)
    assert shifts[:prefill] == [0.0] * prefill and shifts[rest:] == [0.0] * (n - rest) and all(shifts[prefill:rest])
    for p, w, b in zip(model.parameters(), want, want_buf):
        torch.testing.assert_close(p.detach(), w, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(opt.state[p]["buf"], b, rtol=1e-12, atol=1e-14)
        assert torch.equal(opt.state[p]["prev"], p.detach())


def test_scheduled_off_uses_the_constant_lookahead():
    g = torch.Generator().manual_seed(3)
    model = TwoRoles(g)
    inner = torch.optim.SGD([{"params": list(model.parameters()), "lr": 0.01, "initial_lr": 0.01}])
    opt = EmaNesterov(inner, model.parameters(), EmaNesterovConfig(lookahead=0.4, scheduled=False, schedule_role=""))
    for it in range(3):
        inner.param_groups[0]["lr"] = 0.01 / (it + 2)
        opt.before_forward(it)
        assert opt.shift == 0.4
        model().backward()
        opt.step()


def test_step_without_before_forward_is_an_error():
    model = TwoRoles(torch.Generator().manual_seed(0))
    opt = EmaNesterov(torch.optim.SGD(model.parameters(), lr=0.1), model.parameters(),
                      EmaNesterovConfig(schedule_role=""))
    model().backward()
    with pytest.raises(RuntimeError, match="before_forward"):
        opt.step()


@pytest.mark.parametrize("argv,message", [
    (["--wrapper.lookahead=-1"], "--wrapper.lookahead=-1.0 must be a number >= 0"),
    (["--wrapper.ema=1.0"], r"--wrapper.ema=1.0 must lie in \[0, 1\)"),
    (["--wrapper.prefill_steps=5", "--wrapper.rest_steps=4"], "--wrapper.rest_steps=4 must be >= prefill_steps=5"),
    (["--wrapper.schedule_role=gains"], "--wrapper.schedule_role='gains'; choose from hidden, embed"),
])
def test_bad_values_are_one_line_errors_naming_the_option(argv, message):
    with pytest.raises(ConfigError, match=message):
        resolve(["--preset=tiny", "--wrapper=ema_nesterov", *argv])


def test_a_role_the_optimizer_lacks_is_refused_naming_the_option():
    model = TwoRoles(torch.Generator().manual_seed(0))
    inner = torch.optim.SGD([{"params": list(model.parameters()), "lr": 0.1, "role": "hidden"}])
    with pytest.raises(ConfigError, match=r"--wrapper.schedule_role='head': the optimizer has no param group of "
                                          r"that role \(its roles: hidden\)"):
        EmaNesterov(inner, model.parameters(), EmaNesterovConfig(schedule_role="head"))


def test_the_step_fields_scale_with_the_preset():
    assert registry.step_fields(EmaNesterovConfig) == {"prefill_steps", "rest_steps"}
    assert registry.lookup("wrapper", "ema_nesterov").config is EmaNesterovConfig


# --- in the trainer, around every inner optimizer ------------------------------------------------------------


class _Stop(Exception):
    pass


def _final_weights(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "muon", "normuon"])
def test_a_run_stopped_inside_the_window_resumes_bitwise(text_shards, tmp_path, optimizer):
    """tiny preset, 9 steps decaying from step 2, the window open at steps 2-6, a checkpoint every 4 steps (ρ < 1 in it):
    a run stopped during step 5
    (inside the window, after the step-4 checkpoint) and resumed gives the uninterrupted run's log, final weights and
    wrapper state bit for bit; the look-ahead moved the weights (the run differs from the same optimizer alone)."""
    lr = {"sgd": 0.2}.get(optimizer, 0.01)
    common = ["--preset=tiny", f"--data_dir={text_shards}", "--threads=1", "--max_steps=9", "--val_every=3",
              "--checkpoint_every=4", "--schedule.cooldown_frac=0.8", f"--optimizer={optimizer}", f"--optim.lr={lr}",
              "--run_name=r", "--wrapper=ema_nesterov", "--wrapper.lookahead=0.8", "--wrapper.ema=0.5",
              "--wrapper.prefill_steps=2", "--wrapper.rest_steps=7"]
    ref_cfg = resolve([*common, f"--out_dir={tmp_path / 'ref'}"])
    reference = train.Trainer(ref_cfg)
    assert isinstance(reference.optimizer, EmaNesterov)
    shifts = []
    forward = reference.optimizer.before_forward

    def record(step):
        forward(step)
        shifts.append(reference.optimizer.shift)

    reference.optimizer.before_forward = record
    ref_summary = reference.run()
    assert shifts[0] == 0.0  # the warm-up step (undone)
    assert [s != 0 for s in shifts[1:]] == [False, False, True, True, True, True, True, False, False]

    alone = train.main([*common[:-5], f"--out_dir={tmp_path / 'alone'}"])
    assert alone["final_val_loss"] != ref_summary["final_val_loss"]

    args = [*common, f"--out_dir={tmp_path / 'stopped'}"]
    trainer = train.Trainer(resolve(args))

    def stop(module, inputs, output):
        if module.training and trainer.step == 5:
            raise _Stop

    trainer.model.register_forward_hook(stop)
    with pytest.raises(_Stop):
        trainer.run()
    saved = checkpoint.load(trainer.checkpoint_path)
    assert saved["step"] == 4 and saved["optimizer"]["steps"] == 4 and saved["optimizer"]["wrapper"]
    resumed = train.Trainer(resolve([*args, "--resume=True"]))
    summary = resumed.run()
    assert summary["final_val_loss"] == ref_summary["final_val_loss"] and summary["steps"] == 9

    def log(path):
        with open(path / "r" / "log.jsonl") as f:
            return [{k: v for k, v in json.loads(line).items()
                     if k not in ("train_time_s", "step_avg_ms", "seconds_to_target")} for line in f]

    assert log(tmp_path / "stopped") == log(tmp_path / "ref")
    for (name, a), b in zip(_final_weights(reference).items(), _final_weights(resumed).values()):
        assert torch.equal(a, b), name
    ref_state, state = reference.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert ref_state["steps"] == state["steps"] == 9 and ref_state["lr_ratio"] == state["lr_ratio"]
    for i, s in ref_state["wrapper"].items():
        assert all(torch.equal(s[k], state["wrapper"][i][k]) for k in ("prev", "buf")), i


def test_the_state_round_trips_through_torch_save(tmp_path):
    """state_dict -> file -> a fresh wrapper and model: the next steps are bitwise the same, inside the window."""
    def make():
        torch.manual_seed(0)
        model = TwoRoles(torch.Generator().manual_seed(1)).float()
        inner = build_optimizer(registry.lookup("optimizer", "adamw").config(lr=0.01), model)
        return model, wrap_optimizer(EmaNesterovConfig(prefill_steps=1, rest_steps=None, ema=0.6), inner, model)

    def steps(model, opt, start, n):
        for it in range(start, start + n):
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * (1 - it / 10)
            opt.before_forward(it)
            model().backward()
            opt.step()
            opt.zero_grad()

    model, opt = make()
    steps(model, opt, 0, 3)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "s.pt")
    steps(model, opt, 3, 3)
    fresh, fresh_opt = make()
    saved = torch.load(tmp_path / "s.pt", weights_only=False)
    fresh.load_state_dict(saved["model"])
    fresh_opt.load_state_dict(saved["opt"])
    assert fresh_opt.lr_ratio == pytest.approx(0.8) and fresh_opt.steps == 3
    steps(fresh, fresh_opt, 3, 3)
    assert fresh_opt.shift == opt.shift != 0 and not math.isnan(opt.shift)
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def test_two_gloo_ranks_match_one_rank(text_shards, tmp_path):
    """Around Muon on 2 processes (gloo; the wrapped optimizer steps replicated on both ranks, each shifting its
    copy of the weights alike) the losses, val losses and weights are one process's up to rounding, with the
    look-ahead window open from step 1."""
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    common = ["--preset=track3", f"--data_dir={text_shards}", "--train_pattern=*_train_*.bin",
              "--val_pattern=*_val_*.bin", "--model.n_layer=1", "--model.n_embd=128", "--model.n_head=1",
              "--batch_size=1", "--seq_len=32", "--reference_world_size=2", "--max_steps=4", "--val_tokens=256",
              "--val_every=4", "--compile=False", "--dtype=fp32", "--threads=1", "--run_name=r",
              "--checkpoint_every=4", "--optimizer=track3-ema-nesterov-muon", "--wrapper.prefill_steps=1",
              "--wrapper.rest_steps=4", "--schedule_steps=0"]
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "train.py", *common,
                           f"--out_dir={tmp_path / 'two'}"], cwd=repo, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    train.main([*common, f"--out_dir={tmp_path / 'one'}"])
    logs = [[json.loads(line) for line in open(tmp_path / d / "r" / "log.jsonl")] for d in ("one", "two")]
    for a, b in zip(*logs):
        for key in ("train_loss", "val_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-6), (a, b)
    saved = [checkpoint.load(tmp_path / d / "r" / "checkpoint.pt") for d in ("one", "two")]
    for name, w in saved[0]["model"].items():
        torch.testing.assert_close(saved[1]["model"][name], w, rtol=1e-6, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")
    assert saved[0]["optimizer"]["steps"] == saved[1]["optimizer"]["steps"] == 4
