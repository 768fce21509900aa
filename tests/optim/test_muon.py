"""Muon: Newton-Schulz output is near-orthogonal, the update matches torch.optim.Muon, batching is per shape,
the Adam side matches torch.optim.Adam, and any subset of the matrices can be updated on its own."""

import pytest
import torch
import torch.optim._muon as torch_muon

from configs import OptimConfig
from kernels import reference, registry
from model import GPT, model_preset
from optim import build_optimizer
from optim.muon import Muon, lr_scale

SHAPES = {"square": (64, 64), "wide": (48, 128), "tall": (128, 48), "odd": (37, 53)}


def with_spectrum(rows, cols, low=0.1):
    """A (rows, cols) matrix whose singular values are uniform in [low, 1]."""
    k = min(rows, cols)
    U, _ = torch.linalg.qr(torch.randn(rows, k))
    V, _ = torch.linalg.qr(torch.randn(cols, k))
    return U @ torch.diag(torch.empty(k).uniform_(low, 1.0)) @ V.T


def scalar_map(x: torch.Tensor, coefficients: str, steps: int) -> torch.Tensor:
    """What the iteration X ← aX + (bA + cA²)X, A = XXᵀ, does to each singular value x (fp64)."""
    for a, b, c in reference.ns_coefficients(coefficients, steps):
        x = a * x + b * x**3 + c * x**5
    return x


# --- Newton-Schulz, through the registry -------------------------------------------------------------


@pytest.mark.parametrize("coefficients", ["quintic", "polar_express"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_newton_schulz_maps_each_singular_value_by_the_scalar_polynomial(coefficients, shape):
    # In exact arithmetic NS keeps the singular vectors and applies the odd polynomial to the singular values
    # of G / (‖G‖_F · scale + eps): checked in fp64, this pins down the whole iteration, not just its band.
    G = torch.randn(*shape, dtype=torch.float64)
    out = registry.get("newton_schulz", "eager")(G, coefficients=coefficients, eps=1e-7, upcast=True)
    x = torch.linalg.svdvals(G) / (G.norm() * reference.NS_NORM_SCALE[coefficients] + 1e-7)
    expected = scalar_map(x, coefficients, 5).sort(descending=True).values
    torch.testing.assert_close(torch.linalg.svdvals(out), expected, rtol=0, atol=1e-9)


# The 5-step scalar map's range over x in [1e-2, 1] (fp64): quintic [0.6818, 1.1344], Polar Express
# [0.8589, 1.1411]. Inputs with singular values in [0.1, 1] of the largest land there (checked below).
# Measured outputs over 10 seeds × 4 shapes: fp32 equals the fp64 range to 1e-4; bf16 widens it by up to
# 0.013 (quintic 0.669-1.147, Polar Express 0.852-1.146). Asserted: the fp64 range ± 0.005 (fp32) / 0.03 (bf16).
BANDS = {"quintic": (0.6818, 1.1344), "polar_express": (0.8589, 1.1411)}
SLACK = {torch.float32: 0.005, torch.bfloat16: 0.03}


def test_band_constants_are_the_scalar_maps_range():
    x = torch.linspace(1e-2, 1, 100_000, dtype=torch.float64)
    for coefficients, (low, high) in BANDS.items():
        y = scalar_map(x / reference.NS_NORM_SCALE[coefficients], coefficients, 5)
        assert y.min().item() == pytest.approx(low, abs=1e-4) and y.max().item() == pytest.approx(high, abs=1e-4)


@pytest.mark.parametrize("coefficients", sorted(BANDS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_newton_schulz_singular_values_in_band(coefficients, dtype, shape):
    X = registry.get("newton_schulz", "eager")(with_spectrum(*shape).to(dtype), coefficients=coefficients)
    assert X.shape == shape and X.dtype == dtype
    sv = torch.linalg.svdvals(X.double())
    low, high = BANDS[coefficients]
    assert low - SLACK[dtype] <= sv.min() and sv.max() <= high + SLACK[dtype], (sv.min().item(), sv.max().item())


def test_batched_newton_schulz_equals_one_by_one():
    G = torch.randn(3, 24, 40).bfloat16()
    ns = registry.get("newton_schulz", "eager")
    batched = ns(G)
    for i in range(3):
        torch.testing.assert_close(batched[i], ns(G[i]))


# --- parity with torch.optim.Muon --------------------------------------------------------------------


def _run_pair(shape, *, nesterov, ref_nesterov, lr_scaling="original", same_ns=False, steps=5):
    """Relative distance between our Muon's and torch.optim.Muon's weights after `steps` identical gradients."""
    w0 = torch.randn(*shape)
    ours, theirs = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    opt = Muon([ours], [], lr=0.02, adam_lr=0.0, momentum=0.9, nesterov=nesterov, weight_decay=0.1,
               lr_scaling=lr_scaling)
    ref = torch.optim.Muon([theirs], lr=0.02, momentum=0.9, nesterov=ref_nesterov, weight_decay=0.1,
                           adjust_lr_fn=lr_scaling)
    original_ns = torch_muon._zeropower_via_newtonschulz
    if same_ns:  # torch's Muon with our eager Newton-Schulz: isolates momentum, decay and lr scaling
        eager = registry.get("newton_schulz", "eager")
        torch_muon._zeropower_via_newtonschulz = lambda g, coeffs, steps, eps: eager(g.bfloat16(), steps=steps)
    try:
        for _ in range(steps):
            g = torch.randn(*shape)
            ours.grad, theirs.grad = g.clone(), g.clone()
            opt.step()
            ref.step()
    finally:
        torch_muon._zeropower_via_newtonschulz = original_ns
    return ((ours.detach() - theirs.detach()).norm() / (theirs.detach() - w0).norm()).item()


@pytest.mark.parametrize("lr_scaling", ["original", "match_rms_adamw"])
@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("shape", [(48, 32), (32, 48)], ids=["tall", "wide"])
def test_matches_torch_muon_exactly_with_the_same_newton_schulz(shape, nesterov, lr_scaling):
    # Same NS on both sides: the momentum, Nesterov, decoupled decay and lr scaling are bit-for-bit torch's.
    assert _run_pair(shape, nesterov=nesterov, ref_nesterov=nesterov, lr_scaling=lr_scaling, same_ns=True) == 0.0


@pytest.mark.parametrize("nesterov", [True, False])
def test_matches_torch_muon_end_to_end(nesterov):
    # Both orthogonalize in bf16 (Frobenius-normalized, quintic, 5 steps), but torch fuses bA + cA² and aX + BX
    # into addmm (one rounding each) where the eager reference rounds every product, and places eps differently;
    # the roundings compound through momentum: measured 1.2-1.7% of the distance moved over 5 steps (3 seeds,
    # 3 shapes). A real difference in the algorithm (here: Nesterov on vs off) is an order of magnitude larger.
    assert _run_pair((48, 32), nesterov=nesterov, ref_nesterov=nesterov) < 0.035
    assert _run_pair((48, 32), nesterov=nesterov, ref_nesterov=not nesterov) > 0.1  # measured 0.17-0.23


def test_adam_side_matches_torch_adam_exactly():
    w0 = torch.randn(5, 7)
    ours, theirs = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    opt = Muon([], {"embed": [ours]}, lr=0.02, adam_lr=0.01, betas=(0.8, 0.95), eps=1e-6)
    ref = torch.optim.Adam([theirs], lr=0.01, betas=(0.8, 0.95), eps=1e-6, foreach=False)
    for _ in range(4):
        g = torch.randn(5, 7)
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
        assert torch.equal(ours, theirs)



@pytest.mark.skipif("triton" not in registry.names("newton_schulz"), reason="no triton newton_schulz registered")
def test_triton_newton_schulz_gives_the_same_steps(device):
    # ns_impl="triton" (the Triton interpreter on CPU) against the eager reference over 3 steps on two shapes,
    # one batched. Both are bf16 with different rounding (and the interpreter truncates fp32→bf16 casts):
    # measured 2.6-2.8% of the distance moved under the interpreter, like torch vs eager above. On a GPU: CUDA.
    shapes = [(16, 32), (16, 32), (48, 16)]
    w0 = [torch.randn(s, device=device) for s in shapes]
    moved = {}
    for impl in ("eager", "triton"):
        params = [torch.nn.Parameter(w.clone()) for w in w0]
        opt = Muon(params, [], lr=0.02, adam_lr=0.0, ns_impl=impl)
        g = torch.Generator().manual_seed(1)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g).to(device)
            opt.step()
        moved[impl] = [p.detach() for p in params]
    for ours, eager, w in zip(moved["triton"], moved["eager"], w0):
        assert ((ours - eager).norm() / (eager - w).norm()).item() < 0.06

# --- batching, subsets, groups -----------------------------------------------------------------------


def test_one_orthogonalization_per_shape(monkeypatch):
    model = GPT(model_preset("tiny"))
    calls = []
    eager = registry.get("newton_schulz", "eager")

    def counting(G, **kwargs):
        calls.append((tuple(G.shape), G.dtype))
        return eager(G, **kwargs)

    monkeypatch.setitem(registry.OPS["newton_schulz"], "eager", counting)
    opt = build_optimizer(OptimConfig(name="muon"), model)
    idx = torch.randint(0, 50304, (2, 16))
    model(idx, idx).backward()
    opt.step()
    L, C = model.cfg.n_layer, model.cfg.n_embd
    assert sorted(calls) == sorted([((4 * L, C, C), torch.bfloat16), ((L, 4 * C, C), torch.bfloat16),
                                    ((L, C, 4 * C), torch.bfloat16)])


def test_updating_subsets_equals_updating_all():
    # What the distributed optimizer relies on: rank r calls _muon_update(group, its share).
    shapes = [(8, 8), (8, 8), (16, 8), (8, 8), (16, 8)]
    w0 = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(3)]
    whole = [torch.nn.Parameter(w.clone()) for w in w0]
    split = [torch.nn.Parameter(w.clone()) for w in w0]
    opt_whole = Muon(whole, [], lr=0.05, adam_lr=0.0, weight_decay=0.1)
    opt_split = Muon(split, [], lr=0.05, adam_lr=0.0, weight_decay=0.1)
    group = opt_split.param_groups[0]
    for step_grads in grads:
        for p, q, g in zip(whole, split, step_grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt_whole.step()
        opt_split._muon_update(group, split[::2])
        opt_split._muon_update(group, split[1::2])
    for p, q in zip(whole, split):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)  # batch composition may change bf16 matmul order


def test_groups_flags_and_learning_rates():
    model = GPT(model_preset("tiny"))
    opt = build_optimizer(OptimConfig(name="muon", lr=0.05, adam_lr=0.008, weight_decay=0.1, betas=(0.8, 0.9)),
                          model)
    by_role = {g["role"]: g for g in opt.param_groups}
    assert by_role["hidden"]["use_muon"] and by_role["hidden"]["lr"] == 0.05
    assert by_role["hidden"]["weight_decay"] == 0.1
    for role in ("embed", "head", "scalar"):
        g = by_role[role]
        assert not g["use_muon"] and g["lr"] == 0.008 and g["betas"] == (0.8, 0.9) and g["weight_decay"] == 0.0


def test_parameters_without_gradient_are_untouched():
    a, b = torch.nn.Parameter(torch.randn(4, 4)), torch.nn.Parameter(torch.randn(4, 4))
    before = b.detach().clone()
    opt = Muon([a, b], [], lr=0.1, adam_lr=0.0, weight_decay=0.1)
    a.grad = torch.randn(4, 4)
    opt.step()
    assert torch.equal(b, before) and b not in opt.state


def test_lr_scaling():
    assert lr_scale((3072, 768), "original") == 2.0 and lr_scale((768, 3072), "original") == 1.0
    assert lr_scale((768, 3072), "match_rms_adamw") == pytest.approx(0.2 * 3072**0.5)
    with pytest.raises(ValueError, match="unknown Muon lr scaling"):
        lr_scale((2, 2), "nope")


@pytest.mark.parametrize("name", ["muon", "normuon"])
def test_bad_configuration_raises_at_construction(name):
    model = GPT(model_preset("tiny"))
    with pytest.raises(KeyError, match=r"no implementation 'cuda'; registered: \[.*'eager'"):
        build_optimizer(OptimConfig(name=name, ns_impl="cuda"), model)
    with pytest.raises(ValueError, match="unknown Newton-Schulz coefficients 'cubic'"):
        build_optimizer(OptimConfig(name=name, ns_coefficients="cubic"), model)
    with pytest.raises(ValueError, match="unknown Muon lr scaling 'rms'"):
        build_optimizer(OptimConfig(name=name, muon_lr_scaling="rms"), model)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        build_optimizer(OptimConfig(name=name, ns_steps=0), model)
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.nn.Parameter(torch.zeros(2, 2, 2))], [], lr=1, adam_lr=1)
