"""The hyperball family: hyperball_step and AdamH, MuonH, NorMuonH against independent float64 statements of their
updates on fresh random inputs, the bf16 step of MuonH against the reference's bf16 arithmetic, state_dict round
trips that continue bit for bit, the compiled update, the schedule of AdamH, and the configs' errors."""

import copy

import pytest
import torch

from kernels import reference
from optim import build_optimizer
from optim.adamh import AdamH, AdamHConfig, MatrixWarmupDecay
from optim.hyperball import hyperball_step
from optim.muonh import MuonH, MuonHConfig
from optim.normuonh import NorMuonH, NorMuonHConfig
from speedrun.cli import ConfigError
from tests.optim.test_roles import BiasedModel

SHAPES = [(24, 8), (8, 24), (16, 16)]  # tall, wide (NorMuonH's per-column moments), square


def seed() -> int:
    return int(torch.randint(0, 2**31, ()))


def f64_hyperball(w: torch.Tensor, d: torch.Tensor, lr: float, eps: float = 1e-10) -> torch.Tensor:
    """The projection in float64: W' = W - lr·‖W‖·D/max(‖D‖, ε), then W'·‖W‖/max(‖W'‖, ε)."""
    w, d = w.double(), d.double()
    new = w - lr * w.norm() * d / max(d.norm().item(), eps)
    return new * w.norm() / max(new.norm().item(), eps)


# --- hyperball_step -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("clamp", [True, False])
def test_hyperball_step_is_the_projection(clamp):
    g = torch.Generator().manual_seed(seed())
    for shape in SHAPES:
        w = torch.randn(shape, generator=g)
        d = torch.randn(shape, generator=g) * 1e-3  # the step does not depend on the direction's scale
        lr = 0.05 * torch.rand((), generator=g).item()
        p = w.clone()
        hyperball_step(p, d, lr, clamp=clamp)
        torch.testing.assert_close(p.double(), f64_hyperball(w, d, lr), rtol=1e-6, atol=1e-7)
        assert p.double().norm().item() == pytest.approx(w.double().norm().item(), rel=1e-6)  # on the sphere
        # before the projection the move is lr·‖W‖ along D: the angle between W and the result is atan(lr·sin...)
        cos = (p.double() * w.double()).sum() / (p.double().norm() * w.double().norm())
        assert cos.item() <= 1.0 + 1e-7


def test_hyperball_step_keeps_a_zero_direction_and_a_zero_matrix_finite():
    w = torch.randn(6, 4)
    for clamp in (True, False):
        p = w.clone()
        hyperball_step(p, torch.zeros(6, 4), 0.1, clamp=clamp)
        torch.testing.assert_close(p, w, rtol=1e-6, atol=0)
        z = torch.zeros(6, 4)
        hyperball_step(z, torch.randn(6, 4), 0.1, clamp=clamp)  # radius 0 stays 0: no NaN
        assert torch.equal(z, torch.zeros(6, 4))


def test_the_bf16_step_rounds_each_product_to_bf16():
    """A bf16 direction gives a bf16 step term: ((lr·D)·‖W‖)/max(‖D‖, ε) with each result rounded to bf16 and ‖D‖ a
    bf16 norm, then fp32 (stated here with explicit roundings of float64 values); dtype=fp32 does not round."""
    def bf16(x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.bfloat16).double()

    g = torch.Generator().manual_seed(seed())
    w = torch.randn(32, 16, generator=g)
    d = torch.randn(32, 16, generator=g).bfloat16()
    lr = 0.018
    p = w.clone()
    hyperball_step(p, d, lr)
    w_norm = w.norm().double()  # torch's fp32 norm, as the step reads it
    term = bf16(bf16(bf16(lr * d.double()) * w_norm) / bf16(d.double().norm()))
    new = (w.double() - term).float().double()
    torch.testing.assert_close(p.double(), new / new.norm() * w_norm, rtol=2e-7, atol=1e-8)
    q = w.clone()
    hyperball_step(q, d, lr, dtype=torch.float32)
    torch.testing.assert_close(q.double(), f64_hyperball(w, d.float(), lr), rtol=1e-6, atol=1e-7)
    assert not torch.equal(p, q)


# --- the optimizers against float64 ---------------------------------------------------------------------------


def matrices(g) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]


def grads(g, params, step: int) -> list[torch.Tensor]:
    # rows of very different scales: NorMuon's normaliser and Adam's second moment have something to do
    return [torch.randn(p.shape, generator=g) * torch.logspace(-1, 1, p.shape[0])[:, None] * (1 + step) for p in params]


def f64_newton_schulz(u: torch.Tensor) -> torch.Tensor:
    return reference.newton_schulz(u.double(), steps=12, coefficients="cubic", upcast=True)


def test_muonh_steps_match_the_formula():
    """fp32 Newton-Schulz and step: momentum (lerp), Nesterov, 12 cubic Newton-Schulz steps, the shape scale, then
    the hyperball, against float64 over three steps with a changing lr."""
    g = torch.Generator().manual_seed(seed())
    params = matrices(g)
    w = [p.detach().double().clone() for p in params]
    buf = [torch.zeros_like(x) for x in w]
    opt = MuonH(params, lr=0.02, momentum=0.9, ns_coefficients="cubic", ns_steps=12, ns_dtype="fp32",
                step_dtype="fp32")
    for step in range(3):
        lr = 0.02 * (1 - step / 4)
        opt.param_groups[0]["lr"] = lr
        gs = grads(g, params, step)
        for p, gr in zip(params, gs):
            p.grad = gr.clone()
        opt.step()
        for i, gr in enumerate(gs):
            buf[i] = 0.9 * buf[i] + 0.1 * gr.double()
            rows, cols = gr.shape
            o = f64_newton_schulz(0.1 * gr.double() + 0.9 * buf[i]) * max(1.0, rows / cols) ** 0.5
            w[i] = f64_hyperball(w[i], o, lr)
            torch.testing.assert_close(params[i].detach().double(), w[i], rtol=2e-5, atol=2e-6)
            assert params[i].norm().item() == pytest.approx(params[i].norm().item(), rel=1e-6)
    for p, x in zip(params, w):
        assert p.double().norm().item() == pytest.approx(x.norm().item(), rel=1e-6)


@pytest.mark.parametrize("axis", ["longer", "row"])
def test_normuonh_steps_match_the_formula(axis):
    """Momentum, Nesterov, Newton-Schulz (fp32), the shape scale, the second moment of the direction per row (per
    column of a wide matrix with axis="longer") without bias correction, D = O/sqrt(max(v, eps)), the hyperball."""
    g = torch.Generator().manual_seed(seed())
    params = matrices(g)
    w = [p.detach().double().clone() for p in params]
    buf = [torch.zeros_like(x) for x in w]
    v = [None] * len(w)
    beta2, eps = 0.8, 1e-10
    opt = NorMuonH(params, lr=0.03, momentum=0.9, beta2=beta2, axis=axis, ns_coefficients="cubic", ns_steps=12,
                   ns_dtype="fp32")
    for step in range(3):
        gs = grads(g, params, step)
        for p, gr in zip(params, gs):
            p.grad = gr.clone()
        opt.step()
        for i, gr in enumerate(gs):
            rows, cols = gr.shape
            buf[i] = 0.9 * buf[i] + 0.1 * gr.double()
            o = f64_newton_schulz(0.1 * gr.double() + 0.9 * buf[i]) * max(1.0, rows / cols) ** 0.5
            dim = -1 if axis == "row" or rows >= cols else -2
            m = o.square().mean(dim=dim, keepdim=True)
            v[i] = (1 - beta2) * m if v[i] is None else beta2 * v[i] + (1 - beta2) * m
            d = o / v[i].clamp_min(eps).sqrt() if axis == "longer" else o / (v[i].sqrt() + eps)
            w[i] = f64_hyperball(w[i], d, 0.03)
            torch.testing.assert_close(params[i].detach().double(), w[i], rtol=2e-5, atol=2e-6)
            torch.testing.assert_close(opt.state[params[i]]["second_moment"].double(), v[i], rtol=2e-5, atol=1e-12)


def test_adamh_steps_match_the_formula():
    """Adam's moments, bias corrections (v corrected before the root), eps 1e-8, then the hyperball, against float64;
    the first step at lr 0 (the warm-up's) still advances the moments and t."""
    g = torch.Generator().manual_seed(seed())
    params = matrices(g)
    w = [p.detach().double().clone() for p in params]
    m = [torch.zeros_like(x) for x in w]
    v = [torch.zeros_like(x) for x in w]
    b1, b2, eps = 0.9, 0.95, 1e-8
    opt = AdamH(params, lr=0.0, betas=(b1, b2), eps=eps)
    for step in range(4):
        lr = 0.018 * step / 2
        opt.param_groups[0]["lr"] = lr
        gs = grads(g, params, step)
        for p, gr in zip(params, gs):
            p.grad = gr.clone()
        opt.step()
        t = step + 1
        for i, gr in enumerate(gs):
            m[i] = b1 * m[i] + (1 - b1) * gr.double()
            v[i] = b2 * v[i] + (1 - b2) * gr.double() ** 2
            d = (m[i] / (1 - b1**t)) / ((v[i] / (1 - b2**t)).sqrt() + eps)
            w[i] = f64_hyperball(w[i], d, lr)
            torch.testing.assert_close(params[i].detach().double(), w[i], rtol=1e-5, atol=1e-6)
            assert opt.state[params[i]]["step"] == t


def test_muonh_bf16_step_is_the_reference_s_arithmetic():
    """bf16 Newton-Schulz (emulated where the CPU has no bf16 GEMM) and the step term in bf16: the reference's
    sequence stated with torch ops one matrix at a time, bit for bit."""
    g = torch.Generator().manual_seed(seed())
    params = matrices(g)
    w = [p.detach().clone() for p in params]
    buf = [torch.zeros_like(x) for x in w]
    opt = MuonH(params, lr=0.018, momentum=0.95, ns_coefficients="cubic", ns_steps=12, ns_dtype="bf16")
    ns = reference.newton_schulz
    for step in range(3):
        gs = grads(g, params, step)
        for p, gr in zip(params, gs):
            p.grad = gr.clone()
        opt.step()
        for i, gr in enumerate(gs):
            buf[i].lerp_(gr, 1 - 0.95)
            u = gr.lerp(buf[i], 0.95)
            o = ns(u.bfloat16(), steps=12, coefficients="cubic")
            rows, cols = gr.shape
            o = o * max(1, rows / cols) ** 0.5
            p_norm = w[i].norm()
            new = w[i] - 0.018 * o * p_norm / torch.clamp(o.norm(), min=1e-10)
            w[i] = new / torch.clamp(new.norm(), min=1e-10) * p_norm
            assert torch.equal(params[i].detach(), w[i]), (step, i)


# --- state_dict round trips -------------------------------------------------------------------------------------


CONFIGS = {"adamh": AdamHConfig(lr=0.02, embed_lr=0.1, head_lr=0.01, scalar_lr=0.05),
           "muonh": MuonHConfig(lr=0.02, ns_coefficients="cubic", ns_dtype="bf16", embed_lr=0.1),
           "normuonh": NorMuonHConfig(lr=0.02, ns_coefficients="cubic", ns_dtype="bf16", beta2=0.9, embed_lr=0.1)}


def _steps(model, opt, g, n):
    for _ in range(n):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_state_dict_round_trip_continues_bit_for_bit(name):
    torch.manual_seed(seed())
    model = BiasedModel()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # every hidden matrix non-zero
    opt = build_optimizer(CONFIGS[name], model)
    g = torch.Generator().manual_seed(5)
    _steps(model, opt, g, 3)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    rng = g.get_state()
    _steps(model, opt, g, 3)
    other = BiasedModel()
    other.load_state_dict(saved_model)
    opt2 = build_optimizer(CONFIGS[name], other)
    opt2.load_state_dict(saved_opt)
    _steps(other, opt2, torch.Generator().set_state(rng), 3)
    for (n, p), q in zip(model.named_parameters(), other.parameters()):
        assert torch.equal(p, q), n
    assert {k for k in opt2.state_dict()["state"][0]} == {k for k in opt.state_dict()["state"][0]}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_hidden_matrices_keep_their_norm_and_aux_roles_take_adamw(name):
    torch.manual_seed(seed())
    model = BiasedModel()
    opt = build_optimizer(CONFIGS[name], model)
    hidden = [p for g in opt.param_groups if g["role"] == "hidden" for p in g["params"]]
    norms = [p.norm().item() for p in hidden]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _steps(model, opt, torch.Generator().manual_seed(1), 20)
    for p, r in zip(hidden, norms):
        assert p.norm().item() == pytest.approx(r, rel=1e-5)
    for n, p in model.named_parameters():
        assert not torch.equal(p, before[n]), n  # everything moved
    roles = {g["role"]: g for g in opt.param_groups}
    assert roles["embed"]["lr"] == 0.1 and "exp_avg_sq" in opt.state[model.wte.weight]


# --- the compiled update ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [MuonH, NorMuonH])
def test_compiled_update_matches_eager_and_a_new_lr_does_not_recompile(cls):
    from tests.optim.test_muon import GraphCounter

    torch._dynamo.reset()
    try:
        w0 = [torch.randn(s) for s in SHAPES]
        results = []
        for backend in (None, "aot_eager", GraphCounter()):
            params = [torch.nn.Parameter(w.clone()) for w in w0]
            opt = cls(params, lr=0.02, momentum=0.9, ns_coefficients="cubic", ns_dtype="fp32")
            if backend is not None:
                opt.compile_update(backend=backend)
            g = torch.Generator().manual_seed(3)
            for k in range(3):
                for p in params:
                    p.grad = torch.randn(p.shape, generator=g)
                opt.param_groups[0]["lr"] = 0.02 * (1 - k / 4)
                with torch._dynamo.config.patch(error_on_recompile=k > 0):
                    opt.step()
            results.append(params)
            if isinstance(backend, GraphCounter):
                assert backend.graphs == len(SHAPES)  # one per shape, none for a new lr
            torch._dynamo.reset()
        for p, q in zip(results[0], results[1]):
            torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)
    finally:
        torch._dynamo.reset()


# --- AdamH's schedule and the configs ---------------------------------------------------------------------------------


def test_matrix_warmup_decay_warms_the_hidden_matrices_up_from_zero():
    """The golden's points (#4 at horizon 5, warm-up 2): hidden 0, .5, .6, .4, .2; the aux roles 1, 1, 1, 1, .5."""
    s = MatrixWarmupDecay(matrix_warmup_steps=2, cooldown_frac=1.0, aux_cooldown_frac=0.4)
    assert [s.factor(k, 5, "hidden") for k in range(5)] == pytest.approx([0, 0.5, 0.6, 0.4, 0.2], abs=1e-15)
    assert [s.factor(k, 5, "embed") for k in range(5)] == pytest.approx([1, 1, 1, 1, 0.5], abs=1e-15)
    full = MatrixWarmupDecay(cooldown_frac=1.0)
    assert full.factor(249, 4875, "hidden") == 249 / 250 and full.factor(250, 4875, "hidden") == 1 - 250 / 4875
    with pytest.raises(ConfigError, match="--schedule.matrix_warmup_steps=-1"):
        MatrixWarmupDecay(matrix_warmup_steps=-1)


@pytest.mark.parametrize("cls, field, value, message", [
    (MuonHConfig, "weight_decay", 0.1, "--optim.weight_decay=0.1: a hyperball optimizer"),
    (NorMuonHConfig, "weight_decay", 0.05, "--optim.weight_decay=0.05: a hyperball optimizer"),
    (MuonHConfig, "step_dtype", "fp16", "--optim.step_dtype='fp16'; choose from direction, fp32"),
    (MuonHConfig, "hyperball_eps", 0.0, "--optim.hyperball_eps=0.0 must be"),
    (NorMuonHConfig, "hyperball_eps", -1.0, "--optim.hyperball_eps=-1.0 must be"),
    (AdamHConfig, "lr", 0.0, "--optim.lr=0.0 must be"),
    (AdamHConfig, "betas", (0.9, 1.0), "--optim.betas=\\(0.9, 1.0\\) must be"),
    (AdamHConfig, "hyperball_eps", 0.0, "--optim.hyperball_eps=0.0 must be"),
])
def test_a_bad_hyper_parameter_is_a_config_error_naming_it(cls, field, value, message):
    with pytest.raises(ConfigError, match=message):
        cls(**{field: value})
    with pytest.raises(ValueError, match="no weight decay"):
        MuonH([torch.nn.Parameter(torch.randn(4, 4))], lr=0.1, weight_decay=0.1)
    with pytest.raises(ValueError, match="unknown hyperball step dtype"):
        MuonH([torch.nn.Parameter(torch.randn(4, 4))], lr=0.1, step_dtype="half")
