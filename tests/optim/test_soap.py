"""SOAP (optim/soap.py) against an independent float64 statement of its update on fresh random inputs (with and
without the hyperball, bias correction and refresh frequency), its schedule matrix_power_decay, state_dict round trips
that continue bit for bit, training, and the config's errors."""

import copy

import pytest
import torch

from model import GPT, model_preset
from optim import build_optimizer
from optim.soap import SOAP, MatrixPowerDecay, SOAPConfig, first_basis
from speedrun.cli import ConfigError


def generator() -> torch.Generator:
    return torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))


def f64_basis(a: torch.Tensor) -> torch.Tensor:
    """Eigenvectors of sym(a) as columns by decreasing eigenvalue (eigh's ascending order reversed)."""
    return torch.linalg.eigh(0.5 * (a + a.T))[1].flip(-1)


def f64_soap(w0, grads, lrs, *, momentum, beta2, eps, frequency, bias_correction, hyperball, wd, hyperball_eps=1e-10):
    """SOAP on one matrix in float64, written from its equations (optim/soap.py's docstring)."""
    w = w0.double().clone()
    m, n = w.shape
    moment, second = torch.zeros_like(w), torch.zeros_like(w)
    left, right = torch.zeros(m, m, dtype=torch.float64), torch.zeros(n, n, dtype=torch.float64)
    q_left = q_right = None
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        g = g.double()
        if t == 1:
            q_left, q_right = f64_basis(g @ g.T), f64_basis(g.T @ g)
        moment = momentum * moment + (1 - momentum) * g
        left = beta2 * left + (1 - beta2) * g @ g.T
        right = beta2 * right + (1 - beta2) * g.T @ g
        projected_moment = q_left.T @ moment @ q_right
        projected_grad = q_left.T @ g @ q_right
        second = beta2 * second + (1 - beta2) * projected_grad ** 2
        if bias_correction:
            ratio = (projected_moment / (1 - momentum ** t)) / ((second / (1 - beta2 ** t)).sqrt() + eps)
        else:
            ratio = projected_moment / (second.sqrt() + eps)
        u = q_left @ ratio @ q_right.T
        if t % frequency == 0:
            q_left, q_right = torch.linalg.qr(left @ q_left)[0], torch.linalg.qr(right @ q_right)[0]
        if hyperball:
            new = w - lr * w.norm() * u / max(u.norm().item(), hyperball_eps)
            w = new * w.norm() / max(new.norm().item(), hyperball_eps)
        else:
            w = w * (1 - lr * wd) - lr * u
    return w


# A batch of two and another shape, square: a random square gradient gives full-rank Gram matrices with distinct
# eigenvalues, so the bases are unique up to their columns' signs (which the update does not depend on). A rectangular
# gradient leaves one factor rank-deficient, with a basis of its null space chosen by rounding, and Adam's elementwise
# normalisation in that basis makes the update depend on the choice.
SHAPES = [(8, 8), (8, 8), (12, 12)]
BASE = dict(momentum=0.95, beta2=0.9, eps=1e-8, frequency=1, bias_correction=False, hyperball=True, wd=0.0)


def sign_fixed(q: torch.Tensor) -> torch.Tensor:
    """Columns of an orthonormal basis with the sign that makes each column's largest entry positive (eigh and QR
    choose signs by implementation; the update does not depend on them)."""
    index = q.abs().argmax(dim=0)
    return q * q[index, torch.arange(q.shape[1])].sign()


@pytest.mark.parametrize("overrides", [{}, dict(frequency=2), dict(bias_correction=True),
                                       dict(hyperball=False, wd=0.1), dict(momentum=0.5, beta2=0.99, eps=1e-6)])
def test_steps_match_the_float64_formula(overrides):
    """Float64 weights (float64 statistics, eigh and QR): the formula's update to rounding. The first projected
    gradient is diagonal up to rounding (the first basis diagonalises it), and eps lets that rounding (~1e-16 of G)
    into the first direction at ~1e-16/eps = 1e-8 relative: the tolerance."""
    h = {**BASE, **overrides}
    g = generator()
    w0 = [torch.randn(s, generator=g, dtype=torch.float64) for s in SHAPES]
    steps = 5
    grads = [[torch.randn(s, generator=g, dtype=torch.float64) for s in SHAPES] for _ in range(steps)]
    lrs = [0.02 * (1 - k / 6) for k in range(steps)]
    params = [torch.nn.Parameter(w.clone()) for w in w0]
    opt = SOAP(params, lr=lrs[0], momentum=h["momentum"], beta2=h["beta2"], eps=h["eps"],
               precondition_frequency=h["frequency"], bias_correction=h["bias_correction"], hyperball=h["hyperball"],
               weight_decay=h["wd"])
    for step_grads, lr in zip(grads, lrs):
        opt.param_groups[0]["lr"] = lr
        for p, grad in zip(params, step_grads):
            p.grad = grad.clone()
        opt.step()
    for i, p in enumerate(params):
        expected = f64_soap(w0[i], [gs[i] for gs in grads], lrs, **h)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-7, atol=1e-9)
        if h["hyperball"]:
            assert p.detach().norm().item() == pytest.approx(w0[i].norm().item(), rel=1e-12)
    assert opt.state[params[0]]["basis_left"].dtype == torch.float64


def test_the_first_basis_is_the_gram_eigenvectors_by_decreasing_eigenvalue():
    g = generator()
    x = torch.randn(3, 8, 5, generator=g, dtype=torch.float64)
    grams = x @ x.mT
    basis = first_basis(grams, torch.float64)
    for i in range(3):
        torch.testing.assert_close(sign_fixed(basis[i]), sign_fixed(f64_basis(grams[i])), rtol=1e-8, atol=1e-8)
        values = torch.diagonal(basis[i].T @ grams[i] @ basis[i])
        assert (values[:-1] >= values[1:] - 1e-9).all()  # decreasing


def test_the_fp32_update_is_the_formula_to_fp32_rounding():
    """fp32 weights, the first gradient zero (as every hidden gradient is at the first step of track 3's hyperball
    runs: their head starts at zero): the first basis is then the identity's columns reversed and the first step does
    not move. (With a non-zero first gradient the first projected gradient G̃ = Q_Lᵀ·G·Q_R is diagonal, its singular
    values, up to rounding, and Adam's normalisation turns the off-diagonal rounding, ~1e-7 in fp32 and far above eps,
    into ±1 entries of the first direction: a function of the rounding, in the reference's arithmetic too.)"""
    g = generator()
    w0 = [torch.randn(s, generator=g) for s in SHAPES]
    grads = [[torch.zeros(s) for s in SHAPES]] + [[torch.randn(s, generator=g) for s in SHAPES] for _ in range(3)]
    params = [torch.nn.Parameter(w.clone()) for w in w0]
    opt = SOAP(params, lr=0.02)
    for k, step_grads in enumerate(grads):
        for p, grad in zip(params, step_grads):
            p.grad = grad.clone()
        opt.step()
        if k == 0:  # a zero direction: W/‖W‖·‖W‖, W to rounding
            assert all(torch.allclose(p, w, rtol=1e-6, atol=0) for p, w in zip(params, w0))
    assert opt.state[params[0]]["second_moment"].dtype == torch.float32
    for i, p in enumerate(params):
        expected = f64_soap(w0[i], [gs[i] for gs in grads], [0.02] * 4, **BASE)
        torch.testing.assert_close(p.detach().double(), expected, rtol=1e-4, atol=1e-5)


def test_matrix_power_decay_is_the_soaph_schedule():
    """Hidden matrices: (1 - step/3200)^1.25 from step 0 (cooldown 1.0, floor 0) on their own horizon; the other roles
    stable_decay's on the run's horizon (3125, the last 40%)."""
    s = MatrixPowerDecay(cooldown_frac=1.0, aux_cooldown_frac=0.4, matrix_horizon=3200, matrix_power=1.25)
    for step in (0, 1, 1000, 3124):
        assert s.lr(0.018, step, 3125, "hidden") == 0.018 * (1 - step / 3200) ** 1.25
    assert s.lr(0.3, 1874, 3125, "embed") == 0.3 and s.lr(0.3, 1875, 3125, "embed") == 0.3
    assert s.lr(0.3, 2500, 3125, "head") == pytest.approx(0.3 * (1 - 2500 / 3125) / 0.4, rel=1e-15)
    floored = MatrixPowerDecay(cooldown_frac=0.5, matrix_floor=0.1, matrix_power=2.0)
    assert floored.factor(40, 100, "hidden") == 1.0  # flat before 1 - cooldown_frac
    assert floored.factor(75, 100, "hidden") == pytest.approx(0.1 + 0.9 * 0.5 ** 2, rel=1e-15)
    assert floored.factor(100, 100, "hidden") == pytest.approx(0.1, rel=1e-15)
    assert MatrixPowerDecay(cooldown_frac=1.0).factor(50, 100, "hidden") == 0.5  # matrix_horizon 0: the run's
    with pytest.raises(ConfigError, match=r"--schedule.matrix_power=0 must be > 0"):
        MatrixPowerDecay(matrix_power=0)
    with pytest.raises(ConfigError, match=r"--schedule.matrix_floor=1.5 must lie in \[0, 1\]"):
        MatrixPowerDecay(matrix_floor=1.5)


def tiny_model():
    torch.manual_seed(0)
    return GPT(model_preset("tiny", zero_init_proj=False))


def train(model, opt, steps, seed):
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, 50304, (2, 16), generator=g)
        loss = model(idx, idx)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("overrides", [{}, dict(hyperball=False, weight_decay=0.1, precondition_frequency=2)])
def test_state_dict_round_trip_continues_bit_for_bit(overrides):
    cfg = SOAPConfig(lr=0.02, gram_impl="eager", **overrides)
    model = tiny_model()
    opt = build_optimizer(cfg, model)
    train(model, opt, 3, seed=1)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    expected = train(model, opt, 3, seed=2)
    fresh = tiny_model()
    fresh.load_state_dict(saved_model)
    fresh_opt = build_optimizer(cfg, fresh)
    fresh_opt.load_state_dict(saved_opt)
    assert train(fresh, fresh_opt, 3, seed=2) == expected
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def test_hidden_matrices_keep_their_norm_and_learn_a_repeated_batch():
    model = tiny_model()
    opt = build_optimizer(SOAPConfig(lr=0.05, aux_lr=0.01, gram_impl="eager"), model)
    hidden = [p for g in opt.param_groups if g["role"] == "hidden" for p in g["params"]]
    norms = [p.norm().item() for p in hidden]
    idx = torch.randint(0, 50304, (2, 16), generator=torch.Generator().manual_seed(3))
    losses = []
    for _ in range(6):
        loss = model(idx, idx)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses
    assert [p.norm().item() for p in hidden] == pytest.approx(norms, rel=1e-5)


@pytest.mark.parametrize("field, value, message", [
    ("weight_decay", 0.1, r"--optim.weight_decay=0.1: the hyperball keeps each hidden matrix's norm"),
    ("precondition_frequency", 0, r"--optim.precondition_frequency=0 must be >= 1"),
    ("momentum", 1.0, r"--optim.momentum=1.0 must lie in \[0, 1\)"),
    ("beta2", -0.1, r"--optim.beta2=-0.1 must lie in \[0, 1\)"),
    ("eps", 0.0, r"--optim.eps=0.0 must be a number > 0"),
    ("hyperball_eps", 0.0, r"--optim.hyperball_eps=0.0 must be a number > 0"),
])
def test_a_bad_hyper_parameter_is_a_config_error_naming_it(field, value, message):
    with pytest.raises(ConfigError, match=message):
        SOAPConfig(**{field: value})
    assert SOAPConfig(hyperball=False, weight_decay=0.1).weight_decay == 0.1
