"""PSGD Kron (optim/psgd.py) against independent float64 statements on fresh random inputs: the spectral-norm
estimate, the factors' step (with explicit inverses in place of the triangular solves), a whole optimizer step with
its probes drawn in the stated order, the whitening the factors converge to; the factors' initial scale, the update
frequency, the plain step, the stepping order, state_dict round trips that continue bit for bit, the
cooldown_to_floor schedule against track 3's two schedule functions, the configs' errors and the recipe on both
track-3 presets."""

import copy
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from kernels import registry as kernels
from optim import build_optimizer, registry
from optim.psgd import (PSGD_INIT, CooldownToFloor, PSGDConfig, PSGDKron, initial_scale, precond_update,
                        spectral_norm)
from optim.roles import param_groups
from speedrun.cli import ConfigError
from speedrun.config import resolve
from tests.optim.test_recipes import RESULT
from tests.optim.test_roles import BiasedModel

SHAPES = [(12, 5), (5, 12), (8, 8)]  # tall, wide, square
EPS32 = torch.finfo(torch.float32).eps


def seed() -> int:
    return int(torch.randint(0, 2**31, ()))


def random_triu(n: int, g: torch.Generator) -> torch.Tensor:
    """A well-conditioned upper-triangular factor (diagonal in [0.5, 1.5], small off-diagonal entries)."""
    return torch.triu(0.1 * torch.randn(n, n, generator=g), 1) + torch.diag(0.5 + torch.rand(n, generator=g))


def f64_spectral_norm(x: torch.Tensor) -> float:
    """The estimate in float64, from its definition: c = max|x|, X = x/c, j = argmax of the columns' norms,
    y = X·X[:, j] / ‖X·X[:, j]‖, c·‖X·y‖."""
    x = x.double()
    c = x.abs().max().item()
    if c == 0:
        return 0.0
    xs = x / c
    j = max(range(xs.shape[1]), key=lambda k: xs[:, k].square().sum().item())
    y = xs @ xs[:, j]
    y = y / y.norm()
    return c * (xs @ y).norm().item()


def f64_precond_update(q0, q1, u, v, precond_lr):
    """The factors' step in float64 with explicit inverses: balance, A = Q0 U Q1ᵀ, B = Q0⁻ᵀ v Q1⁻¹, then
    Q_i ← Q_i - precond_lr/σ(P_i) · triu(G_i) Q_i for (P0, G0) = (AAᵀ + BBᵀ, AAᵀ - BBᵀ), (P1, G1) the same with AᵀA."""
    q0, q1, u, v = q0.double(), q1.double(), u.double(), v.double()
    r = math.sqrt(q1.abs().max().item() / q0.abs().max().item())
    q0, q1 = q0 * r, q1 / r
    a = q0 @ u @ q1.T
    b = torch.linalg.inv(q0).T @ v @ torch.linalg.inv(q1)
    p0, g0 = a @ a.T + b @ b.T, a @ a.T - b @ b.T
    p1, g1 = a.T @ a + b.T @ b, a.T @ a - b.T @ b
    return (q0 - precond_lr / f64_spectral_norm(p0) * torch.triu(g0) @ q0,
            q1 - precond_lr / f64_spectral_norm(p1) * torch.triu(g1) @ q1)


# --- the parts ----------------------------------------------------------------------------------------------


def test_spectral_norm_is_its_statement_and_bounds_the_largest_eigenvalue():
    g = torch.Generator().manual_seed(seed())
    for n in (1, 7, 32):
        z = torch.randn(n, 2 * n, generator=g)
        x = z @ z.T * torch.rand((), generator=g).item() * 100  # symmetric PSD, any scale
        got = spectral_norm(x)
        assert got.ndim == 0 and got.dtype == torch.float32
        assert got.item() == pytest.approx(f64_spectral_norm(x), rel=1e-5)
        top = torch.linalg.eigvalsh(x.double())[-1].item()
        assert top / math.sqrt(n) * (1 - 1e-5) <= got.item() <= top * (1 + 1e-5)  # a Rayleigh-type lower estimate
    assert spectral_norm(torch.zeros(4, 4)).item() == 0.0  # no NaN for a zero matrix


@pytest.mark.parametrize("shape", SHAPES)
def test_precond_update_is_its_float64_statement(shape):
    g = torch.Generator().manual_seed(seed())
    m, n = shape
    q0, q1 = random_triu(m, g) * 2.0, random_triu(n, g) * 0.7  # unbalanced: the balancing shows
    u, v = torch.randn(m, n, generator=g), torch.randn(m, n, generator=g)
    precond_lr = 0.2 + torch.rand((), generator=g).item()
    want0, want1 = f64_precond_update(q0, q1, u, v, precond_lr)
    got0, got1 = q0.clone(), q1.clone()
    precond_update(got0, got1, u, v, precond_lr)
    torch.testing.assert_close(got0.double(), want0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got1.double(), want1, rtol=1e-4, atol=1e-5)
    assert torch.equal(got0, torch.triu(got0)) and torch.equal(got1, torch.triu(got1))  # exactly triangular


def test_the_factors_converge_to_the_whitening_preconditioner():
    """For directions h ~ N(0, S0 ⊗ S1) (rows' covariance S0, columns' S1), the fixed point of the factors' steps is
    P = S^(-1/2): (Q0ᵀQ0)·S0·(Q0ᵀQ0) and (Q1ᵀQ1)·S1·(Q1ᵀQ1) proportional to the identity."""
    g = torch.Generator().manual_seed(seed())
    m, n = 6, 4
    def spd(k):  # condition number ~ 100
        basis, _ = torch.linalg.qr(torch.randn(k, k, generator=g))
        return basis @ torch.diag(torch.logspace(0, 2, k)) @ basis.T
    s0, s1 = spd(m), spd(n)
    l0, l1 = torch.linalg.cholesky(s0), torch.linalg.cholesky(s1)
    q0, q1 = torch.eye(m), torch.eye(n)
    for k in range(3000):
        h = l0 @ torch.randn(m, n, generator=g) @ l1.T
        precond_update(q0, q1, h, torch.randn(m, n, generator=g), 0.1 if k < 1500 else 0.01)
    for q, s in ((q0, s0), (q1, s1)):
        p = q.T @ q
        eig = torch.linalg.eigvalsh((p @ s @ p).double())
        assert eig[-1] / eig[0] < 2.0, eig  # from a spread of 100 (1.1-1.4 seen: one probe a step)


def test_initial_scale_is_the_inverse_32nd_root_of_the_fourth_moment():
    g = torch.Generator().manual_seed(seed())
    grad = torch.randn(9, 4, generator=g) * 10 ** torch.empty(()).uniform_(-4, 2, generator=g).item()
    assert initial_scale(grad) == pytest.approx(grad.double().pow(4).mean().item() ** (-1 / 32), rel=1e-6)
    assert initial_scale(torch.zeros(3, 3)) == pytest.approx(1e-24 ** (-1 / 32), rel=1e-6)  # clamped, finite


# --- the optimizer ------------------------------------------------------------------------------------------


class Matrices(nn.Module):
    """Hidden matrices of several sizes under blocks. (ties kept in model order) and one scalar."""

    def __init__(self, g: torch.Generator):
        super().__init__()
        shapes = [(5, 6), (12, 5), (6, 5), (8, 8)]
        self.blocks = nn.ModuleList([nn.Module()])
        for i, shape in enumerate(shapes):
            self.blocks[0].register_parameter(f"w{i}", nn.Parameter(torch.randn(shape, generator=g)))
        self.bias = nn.Parameter(torch.zeros(3))


def grads(model: nn.Module, g: torch.Generator):
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) * 0.1


def test_the_matrices_are_stepped_largest_first_ties_in_model_order():
    model = Matrices(torch.Generator().manual_seed(0))
    opt = build_optimizer(PSGDConfig(), model)
    groups = param_groups(model)
    hidden = next(g for g in opt.param_groups if g["role"] == "hidden")
    assert [groups.names[p] for p in hidden["params"]] == ["blocks.0.w3", "blocks.0.w1", "blocks.0.w0", "blocks.0.w2"]


def test_two_steps_are_their_float64_statement():
    """Momentum and its bias correction, the initial scale, two probes per matrix drawn from the global generator
    (v, then ν) largest matrix first, the factors' step, the preconditioned direction and the hyperball's "+ ε"
    form, in float64 from the same probes."""
    g = torch.Generator().manual_seed(seed())
    model = Matrices(g)
    beta, lr, precond_lr = 0.9, 0.05, 0.7
    opt = build_optimizer(PSGDConfig(lr=lr, momentum=beta, precond_lr=precond_lr), model)
    hidden = next(gr for gr in opt.param_groups if gr["role"] == "hidden")["params"]
    ref = {p: dict(w=p.detach().double().clone(), m=torch.zeros(p.shape, dtype=torch.float64)) for p in hidden}
    for t in (1, 2):
        grads(model, g)
        rng = seed()
        torch.manual_seed(rng)
        opt.step()
        torch.manual_seed(rng)
        for p in hidden:  # the order the optimizer states: largest first
            r, grad = ref[p], p.grad.double()
            if t == 1:
                s = grad.pow(4).mean().item() ** (-1 / 32)
                r["q0"], r["q1"] = torch.eye(p.shape[0], dtype=torch.float64) * s, torch.eye(p.shape[1],
                                                                                                dtype=torch.float64) * s
            r["m"] = beta * r["m"] + (1 - beta) * grad
            u = r["m"] / (1 - beta**t)
            v = torch.randn(p.shape).double()
            nu = torch.randn(p.shape).double()
            r["q0"], r["q1"] = f64_precond_update(r["q0"], r["q1"], u + EPS32 * u.abs() * nu, v, precond_lr)
            d = r["q0"].T @ r["q0"] @ u @ r["q1"].T @ r["q1"]
            w = r["w"]
            new = w - lr * d * (w.norm() / (d.norm() + 1e-10))
            r["w"] = new / (new.norm() + 1e-10) * w.norm()
        for p in hidden:
            torch.testing.assert_close(p.detach().double(), ref[p]["w"], rtol=1e-4, atol=1e-5)
            state = opt.state[p]
            assert state["step"] == t and state["Q0"].dtype == state["exp_avg"].dtype == torch.float32
            torch.testing.assert_close(state["Q0"].double(), ref[p]["q0"], rtol=1e-4, atol=1e-6)
            assert p.detach().double().norm().item() == pytest.approx(ref[p]["w"].norm().item(), rel=1e-6)


def test_precond_every_skips_the_factors_and_the_probes():
    g = torch.Generator().manual_seed(seed())
    model = Matrices(g)
    opt = build_optimizer(PSGDConfig(precond_every=2, init_scale=0.5), model)
    p = model.blocks[0].w1
    grads(model, g)
    opt.step()
    q0 = opt.state[p]["Q0"].clone()
    assert not torch.equal(q0, 0.5 * torch.eye(12))  # step 1 updates the factors from s·I
    grads(model, g)
    before = torch.get_rng_state()
    opt.step()
    assert torch.equal(torch.get_rng_state(), before)  # step 2: no probe drawn
    assert torch.equal(opt.state[p]["Q0"], q0)
    grads(model, g)
    opt.step()
    assert not torch.equal(opt.state[p]["Q0"], q0)  # step 3 updates again


def test_without_the_hyperball_the_step_is_plain_with_decoupled_decay():
    g = torch.Generator().manual_seed(seed())
    model = Matrices(g)
    lr, wd = 0.01, 0.1
    opt = build_optimizer(PSGDConfig(lr=lr, hyperball=False, weight_decay=wd, init_scale=0.8, momentum=0.5), model)
    p = model.blocks[0].w0
    w = p.detach().clone()
    grads(model, g)
    torch.manual_seed(3)
    opt.step()
    state = opt.state[p]
    u = p.grad.double()  # step 1: the bias-corrected momentum is the gradient
    d = state["Q0"].double().T @ state["Q0"].double() @ u @ state["Q1"].double().T @ state["Q1"].double()
    torch.testing.assert_close(p.detach().double(), w.double() * (1 - lr * wd) - lr * d, rtol=1e-5, atol=1e-6)


def run_steps(model, opt, g, n):
    for _ in range(n):
        grads(model, g)
        opt.step()


def test_state_dict_round_trip_continues_bit_for_bit():
    """The factors, momentum and step counts (and the AdamW side) round-trip; with the generator's state restored
    (the trainer's checkpoint holds it) the continuation is bitwise the uninterrupted run's."""
    g = torch.Generator().manual_seed(seed())
    model = BiasedModel()
    cfg = PSGDConfig(lr=0.02, embed_lr=0.1)
    opt = build_optimizer(cfg, model)
    run_steps(model, opt, g, 2)
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()), torch.get_rng_state(), g.get_state())
    run_steps(model, opt, g, 2)

    fresh = BiasedModel()
    fresh.load_state_dict(saved[0])
    fresh_opt = build_optimizer(cfg, fresh)
    fresh_opt.load_state_dict(saved[1])
    torch.set_rng_state(saved[2])
    run_steps(fresh, fresh_opt, torch.Generator().set_state(saved[3]), 2)
    for (name, a), b in zip(model.named_parameters(), fresh.parameters()):
        assert torch.equal(a, b), name
    for a, b in zip(opt.state.values(), fresh_opt.state.values()):
        assert all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)


def test_the_aux_roles_take_adamw_with_their_own_lrs():
    model = BiasedModel()
    opt = build_optimizer(PSGDConfig(aux_lr=0.004, embed_lr=0.3, aux_betas=(0.8, 0.95), aux_eps=1e-10), model)
    groups = {g["role"]: g for g in opt.param_groups}
    assert groups["embed"]["lr"] == 0.3 and groups["head"]["lr"] == groups["scalar"]["lr"] == 0.004
    assert all(groups[r]["betas"] == (0.8, 0.95) and groups[r]["eps"] == 1e-10 for r in ("embed", "head", "scalar"))
    assert groups["hidden"]["initial_momentum"] == 0.95  # the schedule's momentum ramp applies to it


@pytest.mark.parametrize("field, value", [("lr", 0.0), ("precond_lr", -1.0), ("momentum", 1.0), ("precond_every", 0),
                                          ("init_scale", -1.0), ("damping", -1e-7), ("hyperball_eps", 0.0),
                                          ("weight_decay", 0.1), ("aux_betas", (0.9,)), ("aux_lr", float("nan")),
                                          ("gram_impl", "cuda")])
def test_bad_values_are_one_line_errors_naming_the_option(field, value):
    with pytest.raises(ConfigError, match=f"--optim.{field}=") as err:
        PSGDConfig(**{field: value})
    assert "\n" not in str(err.value)


def test_gram_impl_auto_is_triton_on_cuda_eager_elsewhere():
    cfg = PSGDConfig()
    assert cfg.gram_impl == "auto"
    assert cfg.resolve_auto("cpu", native_bf16=False).implementations() == {"gram": "eager"}
    assert cfg.resolve_auto("cuda", native_bf16=True).implementations() == {"gram": "triton"}
    assert PSGDConfig(gram_impl="eager").resolve_auto("cuda", native_bf16=True).gram_impl == "eager"  # explicit wins
    opt = build_optimizer(cfg, Matrices(torch.Generator().manual_seed(0)))  # unresolved: decided by the device
    assert opt.gram is kernels.get("gram", "eager")


def test_the_triton_gram_gives_the_factors_step_of_the_eager_one():
    """precond_update with kernels.registry's Triton gram (Triton's interpreter on the CPU) against the eager one: the
    same step to fp32 accuracy (the kernel's Gram is exactly symmetric; eager's rounds each triangle apart)."""
    from kernels.device import interpreter_unavailable_reason

    if not torch.cuda.is_available() and (os.environ.get("TRITON_INTERPRET") != "1" or interpreter_unavailable_reason()):
        pytest.skip(interpreter_unavailable_reason() or "no GPU and Triton's interpreter is off")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(seed())
    q0, q1 = random_triu(12, g), random_triu(5, g)
    u, v = torch.randn(12, 5, generator=g), torch.randn(12, 5, generator=g)
    eager = [q0.to(device), q1.to(device)]
    triton = [q0.to(device), q1.to(device)]
    precond_update(*eager, u.to(device), v.to(device), 0.9, gram=kernels.get("gram", "eager"))
    precond_update(*triton, u.to(device), v.to(device), 0.9, gram=kernels.get("gram", "triton"))
    for a, b in zip(triton, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# --- the schedule -------------------------------------------------------------------------------------------


def test_cooldown_to_floor_is_track3_psgd_s_two_schedule_functions():
    """Bitwise the script's PSGD lr (linear from step 0 to 0 at the horizon) and its AdamW scale (1 until
    int(horizon/2), then 1 - 0.9·t) times each base lr, at every step of the 3400-step horizon and a short one."""
    sched = CooldownToFloor(cooldown_frac=1.0, floor=0.0, aux_cooldown_frac=0.5, aux_floor=0.1)
    for horizon in (3400, 5, 167):
        for step in range(horizon):
            start = int(horizon * (1 - 0.5))
            scale = 1.0 if step < start else 1.0 - (step - start) / (horizon - start) * 0.9
            assert sched.lr(0.025, step, horizon, "hidden") == 0.025 * (1 - step / horizon)
            for role, base in (("embed", 0.3), ("head", 1 / 320), ("scalar", 0.01)):
                assert sched.lr(base, step, horizon, role) == base * scale, (horizon, step, role)


def test_cooldown_to_floor_defaults_and_errors():
    sched = CooldownToFloor(cooldown_frac=0.25, floor=0.5)
    assert [sched.factor(s, 8, "head") for s in (0, 5, 6, 7, 8, 9)] == [1.0, 1.0, 1.0, 0.75, 0.5, 0.5]  # from int(6)
    assert CooldownToFloor(cooldown_frac=0.0).factor(7, 8, "hidden") == 1.0  # no cooldown: flat
    for name in ("cooldown_frac", "floor", "aux_cooldown_frac", "aux_floor"):
        with pytest.raises(ConfigError, match=f"--schedule.{name}="):
            CooldownToFloor(**{name: 1.5})


# --- the recipe ---------------------------------------------------------------------------------------------


def test_the_recipe_states_result_33_and_its_folder():
    doc = registry.lookup("recipe", "track3-psgd").factory.__doc__
    match = RESULT.search(doc)
    assert match and (int(match[1]), int(match[2]), float(match[3]), int(match[4])) == (33, 3375, 3.2779, 5)
    assert "Source: records/track_3_optimization/results/20260527_psgd/" in doc


@pytest.mark.parametrize("preset, steps, horizon", [("track3", 3375, 3400), ("track3-cpu", 166, 167)])
def test_the_recipe_on_both_track3_presets(preset, steps, horizon):
    cfg = resolve([f"--preset={preset}", "--optimizer=track3-psgd"])
    assert (cfg.max_steps, cfg.schedule_steps, cfg.grad_clip) == (steps, horizon, 0.0)  # 3375 of 3400, scaled
    assert cfg.schedule == CooldownToFloor(cooldown_frac=1.0, floor=0.0, aux_cooldown_frac=0.5, aux_floor=0.1)
    assert cfg.model.loss_reduction == "mean"
    assert {f"model.{k}": getattr(cfg.model, k) for k in (f[len("model."):] for f in PSGD_INIT)} == PSGD_INIT
    opt = build_optimizer(cfg.optim, BiasedModel())
    assert type(opt) is PSGDKron
    groups = {g["role"]: g for g in opt.param_groups}
    hidden = {k: groups["hidden"][k] for k in ("lr", "momentum", "precond_lr", "precond_every", "init_scale",
                                                 "damping", "hyperball", "hyperball_eps", "weight_decay")}
    assert hidden == dict(lr=0.025, momentum=0.95, precond_lr=1.0, precond_every=1, init_scale=0.0, damping=EPS32,
                          hyperball=True, hyperball_eps=1e-10, weight_decay=0.0)
    for role, lr in (("embed", 0.3), ("head", 1 / 320), ("scalar", 0.01)):
        assert groups[role]["lr"] == lr and groups[role]["betas"] == (0.8, 0.95) and groups[role]["eps"] == 1e-10
        assert groups[role]["weight_decay"] == 0.0 and groups[role]["fused"]


# --- data parallel ------------------------------------------------------------------------------------------


def test_two_ranks_match_one_rank_accumulating_two_micro_batches(text_shards, tmp_path):
    """torchrun with 2 gloo processes against one process accumulating both micro-batches (the tiny preset's mean
    loss: each rank backpropagates its micro-batch's mean and the ranks average, (g0 + g1)/2; one process divides
    each mean by 2, g0/2 + g1/2: the same bits, halving being exact). Every rank steps every matrix and draws the
    same probes (the same seed), so the weights, factors and momenta are bitwise the one process's, as are the
    train losses; the val loss sums its batches per rank first (one fp32 rounding). The output projections start
    non-zero: zero matrices stay zero on the hyperball and would leave the hidden matrices without gradients."""
    import train

    args = ["--preset=tiny", "--optimizer=psgd", "--optim.lr=0.05", "--model.zero_init_proj=False",
            f"--data_dir={text_shards}", "--threads=1", "--dtype=fp32", "--reference_world_size=2", "--max_steps=4",
            "--val_every=2", "--run_name=psgd", "--checkpoint_every=4"]
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "train.py", *args,
                           f"--out_dir={tmp_path / 'two'}"], cwd=repo, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    train.main([*args, f"--out_dir={tmp_path / 'one'}"])
    logs = [[json.loads(line) for line in open(tmp_path / d / "psgd" / "log.jsonl")] for d in ("two", "one")]
    two, one = ([r["train_loss"] for r in log if "train_loss" in r] for log in logs)
    assert len(two) == len(one) == 4 and two == one
    two, one = ([r["val_loss"] for r in log if "val_loss" in r] for log in logs)
    assert len(two) == len(one) == 3 and two == pytest.approx(one, rel=torch.finfo(torch.float32).eps, abs=0)
    two, one = (torch.load(tmp_path / d / "psgd" / "checkpoint.pt", weights_only=False) for d in ("two", "one"))
    for name, tensor in one["model"].items():
        assert torch.equal(two["model"][name], tensor), name
    assert two["optimizer"]["state"].keys() == one["optimizer"]["state"].keys()
    for index, state in one["optimizer"]["state"].items():
        for key, value in state.items():
            other = two["optimizer"]["state"][index][key]
            assert torch.equal(other, value) if torch.is_tensor(value) else other == value, (index, key)
