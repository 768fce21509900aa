"""optim: parameter grouping, the registry, and behaviour shared by every registered optimizer."""

import copy

import pytest
import torch

from configs import OptimConfig
from model import GPT, model_preset
from optim import OPTIMIZERS, build_optimizer, param_groups, register_optimizer
from optim import registry as optim_registry

ALL = ["adamw", "sgd", "muon", "normuon"]
LR = {"adamw": 3e-3, "sgd": 0.3, "muon": 0.02, "normuon": 0.02}


def tiny_model(**overrides):
    torch.manual_seed(0)
    return GPT(model_preset("tiny", **overrides))


@pytest.mark.parametrize("overrides", [{}, {"tied_head": True, "rotary": False, "rmsnorm": False}],
                         ids=["speedrun", "vanilla-like"])
def test_every_parameter_in_exactly_one_group(overrides):
    model = tiny_model(**overrides)
    groups = param_groups(model)
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].startswith("blocks.") and p.ndim == 2 for p in groups["hidden"])
    assert len(groups["hidden"]) == 6 * model.cfg.n_layer
    assert all(p.ndim < 2 for p in groups["scalar"])


def test_stray_matrix_is_refused():
    model = tiny_model()
    model.extra = torch.nn.Linear(4, 4)
    with pytest.raises(ValueError, match="extra.weight .* fits no optimizer group"):
        param_groups(model)


def test_registry_names_and_a_new_optimizer():
    assert set(ALL) <= set(OPTIMIZERS)
    with pytest.raises(KeyError, match="unknown optimizer 'nope'.*adamw"):
        build_optimizer(OptimConfig(name="nope"), tiny_model())

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
    cfg = OptimConfig(name=name, lr=LR[name], adam_lr=3e-3, weight_decay=0.01)
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
    opt = build_optimizer(OptimConfig(name=name, lr=LR[name], adam_lr=3e-3), model)
    idx = torch.randint(0, 50304, (2, 16))
    losses = []
    for _ in range(6):
        loss = model(idx, idx)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


def test_adamw_and_sgd_decay_only_hidden_matrices():
    for name in ("adamw", "sgd"):
        opt = build_optimizer(OptimConfig(name=name, weight_decay=0.1), tiny_model())
        decay = {g["kind"]: g["weight_decay"] for g in opt.param_groups}
        assert decay == {"hidden": 0.1, "other": 0.0}
