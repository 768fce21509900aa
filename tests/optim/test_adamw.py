"""AdamW: torch's (fused on CPU and CUDA), one group per role with the role table's lr, betas and decay; by
default lr = cfg.lr everywhere and decoupled weight decay on the hidden matrices only."""

import torch

from model import GPT, model_preset
from optim import build_optimizer, param_groups
from optim.adamw import AdamWConfig


def test_hyperparameters_per_group():
    model = GPT(model_preset("tiny"))
    opt = build_optimizer(AdamWConfig(lr=1e-3, weight_decay=0.1, betas=(0.8, 0.9), eps=1e-6), model)
    assert isinstance(opt, torch.optim.AdamW)
    groups = param_groups(model)
    for g in opt.param_groups:
        assert g["params"] == groups[g["role"]]
        assert (g["lr"], g["betas"], g["eps"]) == (1e-3, (0.8, 0.9), 1e-6)
        assert g["weight_decay"] == (0.1 if g["role"] == "hidden" else 0.0)


def test_decay_shrinks_only_hidden_matrices():
    # With zero gradients Adam's moments stay 0, so the step is the decoupled decay alone: W ← W·(1 - lr·wd).
    model = GPT(model_preset("tiny"))
    opt = build_optimizer(AdamWConfig(lr=0.5, weight_decay=0.2), model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    hidden = {id(p) for p in param_groups(model)["hidden"]}
    for name, p in model.named_parameters():
        expected = before[name] * (1 - 0.5 * 0.2) if id(p) in hidden else before[name]
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=0, msg=name)


def test_per_role_hyperparameters_and_fused():
    # The track3-adam recipe's shape of configuration: the hidden matrices and the other roles differ in lr,
    # betas and decay; torch's fused AdamW (one kernel per dtype) on the CPU.
    model = GPT(model_preset("tiny"))
    cfg = AdamWConfig(lr=0.0015, betas=(0.9, 0.95), weight_decay=0.1, embed_lr=0.3, head_lr=1 / 320,
                      scalar_lr=0.01, aux_betas=(0.8, 0.95), eps=1e-10)
    opt = build_optimizer(cfg, model)
    assert opt.defaults["fused"]
    expected = {"hidden": (0.0015, (0.9, 0.95), 0.1), "embed": (0.3, (0.8, 0.95), 0.0),
                "head": (1 / 320, (0.8, 0.95), 0.0), "scalar": (0.01, (0.8, 0.95), 0.0)}
    assert {g["role"]: (g["lr"], g["betas"], g["weight_decay"]) for g in opt.param_groups} == expected
    assert all(g["eps"] == 1e-10 for g in opt.param_groups)


def test_hidden_group_matches_the_float64_formula():
    # AdamW from its definition on a hidden matrix (decay first, bias-corrected moments, eps outside the root):
    # fp32 fused against float64 over 5 steps. Measured (10 seeds, every hidden matrix): |error| <= 0.15 of
    # 1e-7 + 1e-6·|w| (fp32 rounding of the weights); a 1% error in the step would be ~7e-5 (5 steps of 0.0015).
    lr, (b1, b2), eps, wd = 0.0015, (0.9, 0.95), 1e-10, 0.1
    model = GPT(model_preset("tiny"))
    opt = build_optimizer(AdamWConfig(lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd), model)
    p = param_groups(model)["hidden"][0]
    w = p.detach().double().clone()
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    for t in range(1, 6):
        for q in model.parameters():
            q.grad = torch.randn_like(q)
        g = p.grad.double()
        opt.step()
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        w = w * (1 - lr * wd) - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
        torch.testing.assert_close(p.detach().double(), w, rtol=1e-6, atol=1e-7)
