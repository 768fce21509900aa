"""Muon² (optim/muon2.py): the update divided elementwise by the root of an Adam second moment before
Newton-Schulz, against a float64 statement of it; its state through a state_dict; its config's errors."""

import copy

import pytest
import torch

from kernels import registry as kernels
from model import GPT, model_preset
from optim import build_optimizer, registry
from optim.muon import Muon, lr_scale
from optim.muon2 import Muon2, Muon2Config
from speedrun.cli import ConfigError


def _seed() -> int:
    return int(torch.randint(0, 2**31, ()))


@pytest.mark.parametrize("shape,nesterov", [((24, 8), True), ((8, 24), True), ((12, 12), False)])
def test_steps_match_the_formula_in_float64(shape, nesterov):
    """Newton-Schulz replaced by the identity (the direction handed to it is returned): the momentum, the second
    moment of the raw gradient, the Nesterov blend, the division by sqrt(v) + eps, the decoupled decay and the
    shape-scaled step, over a few steps of fresh gradients spanning 100x in scale, against float64."""
    g = torch.Generator().manual_seed(_seed())
    lr, wd, beta, beta2, eps = 0.05, 0.1, 0.9, 0.8, 1e-10
    w = torch.nn.Parameter(torch.randn(*shape, generator=g))
    opt = Muon2([w], lr=lr, momentum=beta, nesterov=nesterov, weight_decay=wd, beta2=beta2, precondition_eps=eps,
                ns_dtype="fp32")
    handed = []

    def identity(x, steps, coefficients):
        handed.append(x.clone())
        return x

    opt.orthogonalize = identity
    expected = w.detach().double().clone()
    buf, v = torch.zeros(shape, dtype=torch.float64), torch.zeros(shape, dtype=torch.float64)
    for _ in range(4):
        grad = torch.randn(*shape, generator=g, dtype=torch.float64) * torch.logspace(-1, 1, shape[1])
        w.grad = grad.float()
        grad = w.grad.double()
        opt.step()
        buf = beta * buf + (1 - beta) * grad
        v = beta2 * v + (1 - beta2) * grad * grad
        u = (beta * buf + (1 - beta) * grad) if nesterov else buf
        u = u / (v.sqrt() + eps)
        torch.testing.assert_close(handed[-1][0].double(), u, rtol=1e-5, atol=1e-7)
        expected = expected * (1 - lr * wd) - lr * lr_scale(shape, "original") * u
        torch.testing.assert_close(w.detach().double(), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(opt.state[w]["second_moment"].double(), v, rtol=1e-6, atol=0)


def test_the_first_direction_is_a_scaled_sign():
    """At the first step B = (1-β)G and v = (1-β₂)G², so U/(sqrt(v)+eps) = (1-β²)/sqrt(1-β₂)·sign(G):
    0.436·sign(G) for β = β₂ = 0.95, what Newton-Schulz then orthogonalizes."""
    g = torch.Generator().manual_seed(_seed())
    w = torch.nn.Parameter(torch.zeros(16, 32))
    opt = Muon2([w], lr=0.1, momentum=0.95, beta2=0.95)
    grad = torch.randn(16, 32, generator=g, dtype=torch.float64)
    fn, moments = opt._preconditioner(opt.param_groups[0], [w])
    u = (1 - 0.95**2) * grad  # the Nesterov blend at the first step
    out = fn(u.float()[None], [grad.float()], moments)[0]
    torch.testing.assert_close(out.double(), (1 - 0.95**2) / 0.05**0.5 * grad.sign(), rtol=1e-6, atol=0)


def test_with_newton_schulz_it_is_muon_of_the_preconditioned_direction():
    """One step of Muon² equals one step of Muon given the preconditioned direction as its gradient with no
    momentum (the same Newton-Schulz, decay and shape scale), bit for bit."""
    g = torch.Generator().manual_seed(_seed())
    shape = (32, 16)
    w0 = torch.randn(*shape, generator=g)
    grad = torch.randn(*shape, generator=g)
    a, b = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    opt_a = Muon2([a], lr=0.02, momentum=0.0, nesterov=False, weight_decay=0.1, beta2=0.5, ns_dtype="bf16")
    opt_b = Muon([b], lr=0.02, momentum=0.0, nesterov=False, weight_decay=0.1, ns_dtype="bf16")
    a.grad = grad.clone()
    b.grad = grad / ((0.5 * grad * grad).sqrt() + 1e-10)
    opt_a.step()
    opt_b.step()
    assert torch.equal(a, b)


def _steps(model, opt, n, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        idx = torch.randint(0, 50304, (2, 16), generator=g)
        model(idx, idx).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def test_state_dict_round_trip_continues_bitwise():
    cfg = Muon2Config(lr=0.05, weight_decay=0.01, aux_lr=0.01)
    torch.manual_seed(0)
    model = GPT(model_preset("tiny"))
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, Muon2)
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
    hidden = fresh_opt.param_groups[0]["params"][0]
    assert fresh_opt.state[hidden]["second_moment"].dtype == torch.float32


def test_compiled_update_matches_eager():
    """The per-shape update compiled (aot_eager: the same ops, traced) gives the eager momentum and second moments
    bit for bit, and the weights within the rounding of a fused step."""
    torch.manual_seed(0)
    shape = (16, 8)
    w0 = torch.randn(*shape)
    params = [torch.nn.Parameter(w0.clone()) for _ in range(2)]
    opts = [Muon2([p], lr=0.05, weight_decay=0.1, ns_dtype="fp32") for p in params]
    opts[1].compile_update(backend="aot_eager")
    for _ in range(3):
        grad = torch.randn(*shape)
        for p, opt in zip(params, opts):
            p.grad = grad.clone()
            opt.step()
    (sa, sb) = (opt.state[p] for opt, p in zip(opts, params))
    assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert torch.equal(sa["second_moment"], sb["second_moment"])
    torch.testing.assert_close(params[0], params[1], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("override,message", [
    ("--optim.beta2=1.0", r"--optim.beta2=1.0 must lie in \[0, 1\)"),
    ("--optim.precondition_eps=0.0", "--optim.precondition_eps=0.0 must be > 0"),
])
def test_bad_values_are_one_line_errors(override, message):
    from speedrun.config import resolve

    with pytest.raises(ConfigError, match=message):
        resolve(["--preset=track3-cpu", "--optimizer=muon2", override])


def test_it_is_registered_with_its_config():
    assert registry.lookup("optimizer", "muon2").config is Muon2Config
    assert kernels.names("newton_schulz")
