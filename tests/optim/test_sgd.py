"""SGD: torch's, momentum and Nesterov from the config, weight decay on hidden matrices only."""

import pytest
import torch

from model import GPT, model_preset
from optim import build_optimizer, param_groups
from optim.sgd import SGDConfig


@pytest.mark.parametrize("nesterov", [True, False])
def test_hyperparameters_per_group(nesterov):
    model = GPT(model_preset("tiny"))
    opt = build_optimizer(SGDConfig(lr=0.1, momentum=0.8, nesterov=nesterov, weight_decay=0.01),
                          model)
    assert isinstance(opt, torch.optim.SGD)
    groups = param_groups(model)
    for g in opt.param_groups:
        assert g["params"] == groups[g["role"]]
        assert (g["lr"], g["momentum"], g["nesterov"], g["dampening"]) == (0.1, 0.8, nesterov, 0)
        assert g["weight_decay"] == (0.01 if g["role"] == "hidden" else 0.0)


def test_momentum_zero_is_plain_sgd():
    # torch refuses Nesterov without momentum; the builder turns it off instead of failing.
    w = torch.nn.Parameter(torch.ones(3))
    model = torch.nn.Module()
    model.gain = w
    opt = build_optimizer(SGDConfig(lr=0.5, momentum=0.0, nesterov=True), model)
    assert not opt.param_groups[0]["nesterov"]
    w.grad = torch.full((3,), 2.0)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.zeros(3))


def test_decay_moves_only_hidden_matrices():
    model = GPT(model_preset("tiny"))
    opt = build_optimizer(SGDConfig(lr=0.5, momentum=0.9, nesterov=True, weight_decay=0.2), model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    hidden = {id(p) for p in param_groups(model)["hidden"]}
    for name, p in model.named_parameters():
        # Coupled decay: d = wd·W; first step buf = d; Nesterov step W ← W - lr·(d + 0.9·buf).
        expected = before[name] * (1 - 0.5 * 0.2 * 1.9) if id(p) in hidden else before[name]
        torch.testing.assert_close(p.detach(), expected, msg=name)
