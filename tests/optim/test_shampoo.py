"""Shampoo (optim/shampoo.py) against an independent float64 statement of its update on fresh random inputs, its
inverse root against a spectrum built by hand, state_dict round trips that continue bit for bit, training, and the
config's errors."""

import copy

import pytest
import torch

from model import GPT, model_preset
from optim import build_optimizer
from optim.shampoo import Shampoo, ShampooConfig, inverse_root
from speedrun.cli import ConfigError


def generator() -> torch.Generator:
    return torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))


def fp32_number(x: float) -> float:
    return torch.tensor(x, dtype=torch.float32).item()


def correction(beta: float, t: int) -> float:
    """1 - beta^t as the reference computes it: an fp32 number from the integer step."""
    return (torch.tensor(1.0) - beta ** torch.tensor(t)).item()


def f64_root(a: torch.Tensor, exponent: float, eps: float) -> torch.Tensor:
    """a^(-exponent) of one symmetric matrix: eigenvalues of a + eps·I, shifted to start at eps where the smallest is
    below it."""
    values, vectors = torch.linalg.eigh(a + eps * torch.eye(a.shape[0], dtype=a.dtype))
    if values.min() < eps:
        values = values - values.min() + eps
    return vectors @ torch.diag(values ** -exponent) @ vectors.T


def f64_shampoo(w0, grads, lrs, *, beta1, beta2, eps, exponent, wd, frequency, start, graft_beta2, graft_eps,
                graft=True):
    """Shampoo on one matrix in float64, written from its equations (optim/shampoo.py's docstring)."""
    w = w0.double().clone()
    m, n = w.shape
    left, right = torch.zeros(m, m, dtype=torch.float64), torch.zeros(n, n, dtype=torch.float64)
    left_root, right_root = torch.eye(m, dtype=torch.float64), torch.eye(n, dtype=torch.float64)
    v, f = torch.zeros_like(w), torch.zeros_like(w)
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        g = g.double()
        left = beta2 * left + (1 - beta2) * g @ g.T
        right = beta2 * right + (1 - beta2) * g.T @ g
        v = graft_beta2 * v + (1 - graft_beta2) * g * g
        if t == start or (t > start and t % frequency == 0):
            left_root = f64_root(left / correction(beta2, t), exponent, eps)
            right_root = f64_root(right / correction(beta2, t), exponent, eps)
        f = beta1 * f + (1 - beta1) * g
        filtered = f / correction(beta1, t)
        grafted = filtered / ((v / correction(graft_beta2, t)).sqrt() + graft_eps)
        if graft and t < start:
            direction = grafted
        else:
            direction = left_root @ filtered @ right_root
            if graft:
                direction = direction * grafted.norm() / direction.norm()
        w = w - lr * (direction + wd * w)
    return w


# A batch of two, and a matrix whose left factor stays rank-deficient (20 rows, rank <= 8 per step): its smallest
# eigenvalues are rounding noise, so its roots take the spectrum shift; eps (1e-6 here, 1e-12 in the recipe) sits far
# above that noise (~1e-14 in float64), where the result is a function of the factor and not of its rounding.
SHAPES = [(12, 20), (12, 20), (20, 8)]
HPARAMS = dict(beta1=0.9, beta2=0.95, eps=1e-6, exponent=0.25, wd=0.2, frequency=2, start=2, graft_beta2=0.95,
               graft_eps=1e-10)


def run_ours(w0, grads, lrs, **overrides):
    h = {**HPARAMS, **overrides}
    params = [torch.nn.Parameter(w.clone()) for w in w0]
    opt = Shampoo(params, lr=lrs[0], betas=(h["beta1"], h["beta2"]), epsilon=h["eps"], exponent=h["exponent"],
                  weight_decay=h["wd"], precondition_frequency=h["frequency"],
                  start_preconditioning_step=h["start"], grafting="adam" if h.get("graft", True) else "none",
                  grafting_beta2=h["graft_beta2"], grafting_eps=h["graft_eps"])
    for step_grads, lr in zip(grads, lrs):
        opt.param_groups[0]["lr"] = lr
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
    return params, opt


@pytest.mark.parametrize("overrides", [{}, dict(frequency=3, start=3), dict(graft=False), dict(exponent=0.5, wd=0.0)])
def test_steps_match_the_float64_formula(overrides):
    """Float64 weights (float64 statistics and eigendecompositions): the update is the formula's to rounding. The lrs
    are fp32 numbers (the optimizer rounds lr to fp32, as the reference)."""
    g = generator()
    w0 = [torch.randn(s, generator=g, dtype=torch.float64) * 0.3 for s in SHAPES]
    steps = 6
    grads = [[torch.randn(s, generator=g, dtype=torch.float64) * (1 + k) for s in SHAPES] for k in range(steps)]
    lrs = [fp32_number(0.01 * (1 - k / 8)) for k in range(steps)]
    params, opt = run_ours(w0, grads, lrs, **overrides)
    h = {**HPARAMS, **overrides}
    for i, p in enumerate(params):
        expected = f64_shampoo(w0[i], [gs[i] for gs in grads], lrs, **h)
        # the rank-deficient factor's null eigenvalues are eps + rounding noise (~1e-14): roots to ~1e-8 there
        rtol = 1e-10 if i < 2 else 1e-6
        torch.testing.assert_close(p.detach(), expected, rtol=rtol, atol=1e-12)
    assert opt.state[params[0]]["left"].dtype == torch.float64


def test_the_fp32_update_is_the_formula_to_fp32_rounding():
    """fp32 weights: fp32 statistics and roots, well-conditioned factors (rounding of the smallest eigenvalues, ~1e-7 of
    the largest in fp32, would dominate a rank-deficient factor's roots)."""
    g = generator()
    w0 = [torch.randn(s, generator=g) * 0.3 for s in SHAPES[:2]]
    grads = [[torch.randn(s, generator=g) for s in SHAPES[:2]] for _ in range(4)]
    lrs = [0.01] * 4
    params, opt = run_ours(w0, grads, lrs)
    assert opt.state[params[0]]["left_root"].dtype == torch.float32
    for i, p in enumerate(params):
        expected = f64_shampoo(w0[i], [gs[i] for gs in grads], [fp32_number(0.01)] * 4, **HPARAMS)
        torch.testing.assert_close(p.detach().double(), expected, rtol=1e-4, atol=1e-6)


def test_inverse_root_of_a_spectrum_built_by_hand():
    """Eigenvalues (-1e-3, 0, 0.5, 2) plus eps: the smallest is below eps, so the spectrum is shifted to start at eps:
    λ + 1e-3 + eps; then Q·diag(λ^-e)·Qᵀ."""
    g = generator()
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    spectrum = torch.tensor([-1e-3, 0.0, 0.5, 2.0], dtype=torch.float64)
    a = q @ torch.diag(spectrum) @ q.T
    eps = 1e-6
    expected = q @ torch.diag((spectrum + 1e-3 + eps) ** -0.25) @ q.T
    got = inverse_root(a.unsqueeze(0), 0.25, eps, torch.float64)[0]
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    positive = q @ torch.diag(torch.tensor([0.1, 0.2, 0.5, 2.0], dtype=torch.float64)) @ q.T  # no shift
    torch.testing.assert_close(inverse_root(positive.unsqueeze(0), 0.5, eps, torch.float64)[0],
                               q @ torch.diag((torch.tensor([0.1, 0.2, 0.5, 2.0], dtype=torch.float64) + eps) ** -0.5)
                               @ q.T, rtol=1e-9, atol=1e-9)


def tiny_model():
    torch.manual_seed(0)
    return GPT(model_preset("tiny"))


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


def test_state_dict_round_trip_continues_bit_for_bit():
    """Saved after 3 steps (roots computed at step 2), resumed: steps 4-6 (a recomputation at 4, 6) equal."""
    cfg = ShampooConfig(lr=0.01, weight_decay=0.1, precondition_frequency=2, gram_impl="eager")
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
    for p, q in zip(model.parameters(), fresh.parameters()):
        for key, value in opt.state[p].items():
            other = fresh_opt.state[q][key]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other, key


def test_groups_roles_and_the_adamw_side():
    cfg = ShampooConfig(lr=0.002, embed_lr=0.3, head_lr=0.004, scalar_lr=0.01, aux_betas=(0.8, 0.95), aux_eps=1e-10,
                        gram_impl="eager")
    model = GPT(model_preset("tiny", bias=True))
    opt = build_optimizer(cfg, model)
    groups = {g["role"]: g for g in opt.param_groups}
    assert set(groups) == {"hidden", "embed", "head", "scalar"}
    assert groups["hidden"]["kronecker"] and all(p.ndim == 2 for p in groups["hidden"]["params"])
    assert (groups["hidden"]["lr"], groups["embed"]["lr"], groups["head"]["lr"], groups["scalar"]["lr"]) == (
        0.002, 0.3, 0.004, 0.01)
    assert all(groups[r]["betas"] == (0.8, 0.95) and groups[r]["eps"] == 1e-10 for r in ("embed", "head", "scalar"))


def test_it_learns_a_repeated_batch():
    model = tiny_model()
    opt = build_optimizer(ShampooConfig(lr=0.01, precondition_frequency=2, gram_impl="eager"), model)
    idx = torch.randint(0, 50304, (2, 16), generator=torch.Generator().manual_seed(3))
    losses = []
    for _ in range(6):
        loss = model(idx, idx)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


@pytest.mark.parametrize("field, value, message", [
    ("grafting", "sgd", r"--optim.grafting='sgd'; choose from adam, none"),
    ("precondition_frequency", 0, r"--optim.precondition_frequency=0 must be >= 1"),
    ("start_preconditioning_step", 3, r"--optim.start_preconditioning_step=3 must be 0 \(= the frequency\) or >= "
                                      r"precondition_frequency=5"),
    ("betas", (0.9, 1.5), r"--optim.betas\[1\]=1.5 must lie in \[0, 1\]"),
    ("betas", (1.0, 0.95), r"--optim.betas\[0\]=1.0 must lie in \[0, 1\)"),
    ("exponent", 0.0, r"--optim.exponent=0.0 must be a number > 0"),
    ("epsilon", -1.0, r"--optim.epsilon=-1.0 must be a number > 0"),
    ("weight_decay", -0.1, r"--optim.weight_decay=-0.1 must be a number >= 0"),
    ("grafting_beta2", 1.0, r"--optim.grafting_beta2=1.0 must lie in \[0, 1\)"),
])
def test_a_bad_hyper_parameter_is_a_config_error_naming_it(field, value, message):
    with pytest.raises(ConfigError, match=message):
        ShampooConfig(**{field: value})


def test_plain_sums_with_beta2_one():
    """beta2 = 1: the factors are sums (AdaGrad-like), no bias correction."""
    g = generator()
    p = torch.nn.Parameter(torch.randn(6, 5, generator=g))
    opt = Shampoo([p], lr=0.01, betas=(0.0, 1.0), precondition_frequency=1)
    grads = [torch.randn(6, 5, generator=g) for _ in range(2)]
    for grad in grads:
        p.grad = grad
        opt.step()
    torch.testing.assert_close(opt.state[p]["left"], sum(x @ x.T for x in grads), rtol=1e-5, atol=1e-5)
