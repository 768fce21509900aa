"""optim: the registry, and behaviour shared by every registered optimizer."""

import copy

import pytest
import torch
import torch.nn as nn

from model import GPT, model_preset
from optim import OPTIMIZERS, ROLES, build_optimizer, register_optimizer
from optim import registry as optim_registry
from speedrun.config import DEFAULT_LR, OptimConfig

ALL = ["adamw", "sgd", "muon", "normuon"]


def cfg_for(name, **overrides):
    return OptimConfig(name=name, lr=DEFAULT_LR[name], adam_lr=3e-3, **overrides)


def tiny_model(**overrides):
    torch.manual_seed(0)
    return GPT(model_preset("tiny", **overrides))


class LeastSquares(nn.Module):
    """min ‖gain·(X Wᵀ) + bias − Y‖² named by the contract: W is a hidden matrix, gain and bias are scalars."""

    def __init__(self, n_in=24, n_out=16, n=256):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.blocks = nn.ModuleList([nn.Module()])
        self.blocks[0].mlp = nn.Module()
        self.blocks[0].mlp.c_fc = nn.Linear(n_in, n_out, bias=False)
        self.gain = nn.Parameter(torch.ones(()))
        self.bias = nn.Parameter(torch.zeros(n_out))
        self.register_buffer("X", torch.randn(n, n_in, generator=g))
        self.register_buffer("Y", self.X @ torch.randn(n_in, n_out, generator=g) / n_in**0.5 + 0.3)

    def forward(self):
        return (self.gain * self.blocks[0].mlp.c_fc(self.X) + self.bias - self.Y).square().mean()


# --- registry ----------------------------------------------------------------------------------------


def test_registry_names_and_unknown_name():
    assert set(ALL) <= set(OPTIMIZERS)
    with pytest.raises(KeyError, match=r"unknown optimizer 'nope'; registered: \[.*'adamw'.*'normuon'"):
        build_optimizer(OptimConfig(name="nope"), tiny_model())


def test_a_new_optimizer_is_one_registration():
    @register_optimizer("test-rmsprop")
    def build(cfg, groups):
        return torch.optim.RMSprop([p for ps in groups.values() for p in ps], lr=cfg.lr)

    try:
        opt = build_optimizer(OptimConfig(name="test-rmsprop", lr=0.1), tiny_model())
        assert isinstance(opt, torch.optim.RMSprop) and opt.param_groups[0]["initial_lr"] == 0.1
        with pytest.raises(ValueError, match="already registered"):
            register_optimizer("test-rmsprop")(build)
    finally:
        del optim_registry.OPTIMIZERS["test-rmsprop"]


@pytest.mark.parametrize("name", ALL)
def test_groups_carry_role_and_initial_lr(name):
    opt = build_optimizer(cfg_for(name), tiny_model())
    roles = [g["role"] for g in opt.param_groups]
    assert sorted(roles) == sorted(ROLES) and len(set(roles)) == len(roles)
    for g in opt.param_groups:
        assert g["initial_lr"] == g["lr"]
        uses_adam_lr = name in ("muon", "normuon") and g["role"] != "hidden"
        assert g["lr"] == (3e-3 if uses_adam_lr else DEFAULT_LR[name])


# --- every optimizer ---------------------------------------------------------------------------------


def _steps(model, opt, n, seed):
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(n):
        idx = torch.randint(0, 50304, (2, 16), generator=g)
        loss = model(idx, idx)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trip_is_exact(name):
    cfg = cfg_for(name, weight_decay=0.01)
    model = tiny_model()
    opt = build_optimizer(cfg, model)
    _steps(model, opt, 2, seed=1)
    # state_dict() returns live references: copy before training on.
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    expected = _steps(model, opt, 2, seed=2)

    fresh = tiny_model()
    fresh.load_state_dict(saved_model)
    fresh_opt = build_optimizer(cfg, fresh)
    fresh_opt.load_state_dict(saved_opt)
    assert _steps(fresh, fresh_opt, 2, seed=2) == expected
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ALL)
def test_each_optimizer_learns_a_repeated_batch(name):
    model = tiny_model()
    opt = build_optimizer(cfg_for(name), model)
    idx = torch.randint(0, 50304, (2, 16))
    losses = []
    for _ in range(6):
        loss = model(idx, idx)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


@pytest.mark.parametrize("name", ALL)
def test_each_optimizer_solves_least_squares(name):
    model = LeastSquares()
    opt = build_optimizer(OptimConfig(name=name, lr={"adamw": 0.05, "sgd": 0.1, "muon": 0.05, "normuon": 0.05}[name],
                                      adam_lr=0.05), model)
    losses = []
    for _ in range(40):
        loss = model()
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], losses[::8]
