"""SGD with momentum on the hidden matrices and AdamW on the rest (optim/sgd_aux.py): against a float64 statement
of momentum SGD with decoupled decay, against torch.optim.SGD and torch.optim.AdamW themselves, and through a
state_dict."""

import copy

import pytest
import torch

from model import GPT, model_preset
from optim import build_optimizer, registry
from optim.sgd_aux import SGDAux, SGDAuxConfig
from speedrun.cli import ConfigError
from tests.optim.test_roles import BiasedModel


def _seed() -> int:
    return int(torch.randint(0, 2**31, ()))


@pytest.mark.parametrize("nesterov", [True, False])
def test_the_hidden_step_matches_the_formula_in_float64(nesterov):
    g = torch.Generator().manual_seed(_seed())
    lr, mu, wd = 0.03, 0.9, 0.2
    w = torch.nn.Parameter(torch.randn(12, 7, generator=g, dtype=torch.float64))
    opt = SGDAux([w], lr=lr, momentum=mu, nesterov=nesterov, weight_decay=wd)
    want, buf = w.detach().clone(), None
    for _ in range(4):
        grad = torch.randn(12, 7, generator=g, dtype=torch.float64)
        w.grad = grad.clone()
        opt.step()
        buf = grad.clone() if buf is None else mu * buf + grad
        direction = grad + mu * buf if nesterov else buf
        want = want * (1 - lr * wd) - lr * direction
        torch.testing.assert_close(w.detach(), want, rtol=1e-13, atol=1e-15)


def test_it_is_torch_s_sgd_and_adamw_bit_for_bit():
    """Without weight decay on the matrices, the hidden group steps exactly as torch.optim.SGD and the other groups
    as torch.optim.AdamW (fused) with the same per-role settings."""
    torch.manual_seed(_seed())
    a, b = BiasedModel(), BiasedModel()
    b.load_state_dict(a.state_dict())
    cfg = SGDAuxConfig(lr=0.05, momentum=0.8, embed_lr=0.02, head_lr=0.01, scalar_lr=0.03, aux_betas=(0.8, 0.95),
                       aux_eps=1e-10, aux_weight_decay=0.01)
    ours = build_optimizer(cfg, a)
    assert isinstance(ours, SGDAux)
    names = dict(b.named_parameters())
    hidden = [names["blocks.0.attn.c_q.weight"], names["blocks.0.mlp.c_fc.weight"]]
    aux = {"embed": [names["wte.weight"]], "head": [names["lm_head.weight"]],
           "scalar": [p for n, p in names.items() if p.ndim < 2]}
    lrs = {"embed": 0.02, "head": 0.01, "scalar": 0.03}
    sgd = torch.optim.SGD(hidden, lr=0.05, momentum=0.8, nesterov=True)
    adam = torch.optim.AdamW([{"params": ps, "lr": lrs[r]} for r, ps in aux.items()], betas=(0.8, 0.95), eps=1e-10,
                             weight_decay=0.01, fused=True)
    x = torch.randint(0, 32, (4,))
    for _ in range(3):
        for model, opts in ((a, (ours,)), (b, (sgd, adam))):
            h = model.wte(x)
            h = model.blocks[0].attn.c_q(h) * model.blocks[0].norm_gain
            h = model.blocks[0].mlp.c_fc(h)[:, :8]
            model.lm_head(torch.tanh(h)).logsumexp(-1).sum().backward()
            for opt in opts:
                opt.step()
                opt.zero_grad()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


def _steps(model, opt, n, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        idx = torch.randint(0, 50304, (2, 16), generator=g)
        model(idx, idx).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def test_state_dict_round_trip_continues_bitwise():
    cfg = SGDAuxConfig(lr=0.05, weight_decay=0.01, aux_lr=0.01)
    torch.manual_seed(0)
    model = GPT(model_preset("tiny"))
    opt = build_optimizer(cfg, model)
    _steps(model, opt, 2, seed=1)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    _steps(model, opt, 2, seed=2)
    fresh = GPT(model_preset("tiny"))
    fresh.load_state_dict(saved_model)
    fresh_opt = build_optimizer(cfg, fresh)
    fresh_opt.load_state_dict(saved_opt)
    _steps(fresh, fresh_opt, 2, seed=2)
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def test_groups_carry_roles_and_the_schedule_s_momentum():
    opt = build_optimizer(SGDAuxConfig(), GPT(model_preset("tiny")))
    roles = {g["role"]: g for g in opt.param_groups}
    assert set(roles) == {"hidden", "embed", "head", "scalar"}
    assert roles["hidden"]["initial_momentum"] == 0.9 and "initial_momentum" not in roles["embed"]


@pytest.mark.parametrize("override,message", [("--optim.momentum=1.0", r"--optim.momentum=1.0 must lie in \[0, 1\)"),
                                              ("--optim.lr=0.0", "--optim.lr=0.0 must be a number > 0")])
def test_bad_values_are_one_line_errors(override, message):
    from speedrun.config import resolve

    with pytest.raises(ConfigError, match=message):
        resolve(["--preset=track3-cpu", "--optimizer=sgd_aux", override])
    assert registry.lookup("optimizer", "sgd_aux").config is SGDAuxConfig
