"""optim: the registry, and behaviour shared by every registered optimizer."""

import copy
import dataclasses

import pytest
import torch
import torch.nn as nn

from model import GPT, model_preset
from optim import ROLES, build_optimizer, registry
from speedrun.cli import ConfigError

ALL = ["adamw", "sgd", "muon", "normuon"]


def cfg_for(name, **overrides):
    """Optimizer `name` with its own defaults (its own lr: adamw 3e-3, sgd 0.1, muon and normuon 0.02)."""
    return registry.lookup("optimizer", name).config(**overrides)


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
    assert set(ALL) <= set(registry.entries("optimizer"))
    with pytest.raises(ConfigError, match=r"unknown optimizer or recipe 'nope'; optimizers: .*adamw, .*normuon.*; "
                                          r"recipes: .*track3-muon"):
        registry.lookup("optimizer", "nope", also=("recipe",))


def test_every_part_documents_every_field():
    """--help prints these docstrings: every hyper-parameter of every registered part has one."""
    for kind in registry.KINDS:
        for name, entry in registry.entries(kind).items():
            if entry.config is None:
                assert entry.factory.__doc__, (kind, name)
                continue
            docs = registry.field_docs(entry.config)
            missing = [f.name for f in dataclasses.fields(entry.config) if not docs.get(f.name)]
            assert not missing, (kind, name, missing)
            assert entry.config.name == name


def test_a_new_optimizer_is_one_registration():
    @dataclasses.dataclass(frozen=True)
    class RMSpropConfig:
        lr: float = 0.01
        "Learning rate."

    @registry.optimizer("test-rmsprop", RMSpropConfig)
    def build(cfg, groups):
        return torch.optim.RMSprop([p for ps in groups.values() for p in ps], lr=cfg.lr)

    try:
        opt = build_optimizer(RMSpropConfig(lr=0.1), tiny_model())
        assert isinstance(opt, torch.optim.RMSprop) and opt.param_groups[0]["initial_lr"] == 0.1
        assert opt.param_groups[0]["role"] == "hidden"  # a builder that sets no role: the matrix schedule
        assert RMSpropConfig.name == "test-rmsprop"
    finally:
        del registry._ENTRIES["optimizer"]["test-rmsprop"]


def test_a_name_taken_by_another_file_is_refused(tmp_path):
    clash = tmp_path / "clash.py"
    clash.write_text("from dataclasses import dataclass\nfrom optim.registry import optimizer\n"
                     "@dataclass(frozen=True)\nclass C:\n    lr: float = 1.0\n    'lr'\n"
                     "@optimizer('muon', C)\ndef build(cfg, groups):\n    pass\n")
    with pytest.raises(ConfigError, match=r"clash.py: the optimizer name 'muon' is already registered by .*muon.py"):
        registry.load_file(str(clash))


@pytest.mark.parametrize("name", ALL)
def test_groups_carry_role_and_initial_lr(name):
    opt = build_optimizer(cfg_for(name), tiny_model())
    roles = [g["role"] for g in opt.param_groups]
    assert sorted(roles) == sorted(ROLES) and len(set(roles)) == len(roles)
    for g in opt.param_groups:
        assert g["initial_lr"] == g["lr"]
        uses_aux_lr = name in ("muon", "normuon") and g["role"] != "hidden"
        assert g["lr"] == (3e-3 if uses_aux_lr else {"adamw": 3e-3, "sgd": 0.1, "muon": 0.02, "normuon": 0.02}[name])


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
    lr = {"adamw": 0.05, "sgd": 0.1, "muon": 0.05, "normuon": 0.05}[name]
    opt = build_optimizer(cfg_for(name, lr=lr, **({"aux_lr": 0.05} if name in ("muon", "normuon") else {})), model)
    losses = []
    for _ in range(40):
        loss = model()
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], losses[::8]
