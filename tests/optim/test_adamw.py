"""AdamW: torch's, one group per role, lr = cfg.lr everywhere, decoupled weight decay on hidden matrices only."""

import torch

from configs import OptimConfig
from model import GPT, model_preset
from optim import build_optimizer, param_groups


def test_hyperparameters_per_group():
    model = GPT(model_preset("tiny"))
    opt = build_optimizer(OptimConfig(name="adamw", lr=1e-3, weight_decay=0.1, betas=(0.8, 0.9), eps=1e-6), model)
    assert isinstance(opt, torch.optim.AdamW)
    groups = param_groups(model)
    for g in opt.param_groups:
        assert g["params"] == groups[g["role"]]
        assert (g["lr"], g["betas"], g["eps"]) == (1e-3, (0.8, 0.9), 1e-6)
        assert g["weight_decay"] == (0.1 if g["role"] == "hidden" else 0.0)


def test_decay_shrinks_only_hidden_matrices():
    # With zero gradients Adam's moments stay 0, so the step is the decoupled decay alone: W ← W·(1 - lr·wd).
    model = GPT(model_preset("tiny"))
    opt = build_optimizer(OptimConfig(name="adamw", lr=0.5, weight_decay=0.2), model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    hidden = {id(p) for p in param_groups(model)["hidden"]}
    for name, p in model.named_parameters():
        expected = before[name] * (1 - 0.5 * 0.2) if id(p) in hidden else before[name]
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=0, msg=name)
