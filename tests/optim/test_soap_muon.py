"""SOAP-Muon (optim/soap_muon.py), its parts and the track3-record recipe: each piece of arithmetic against an
independent float64 formula on fresh random inputs, the optimizer's state through a state_dict (bitwise
continuation), the recipe's parts on both track-3 presets, and a short track3-cpu run."""

import copy
import math
import re

import pytest
import torch
import torch.nn as nn

from kernels import reference
from optim import build_optimizer, registry
from optim.schedules import MomentumRamp, PowerCool
from optim.soap_muon import SoapMuon, SoapMuonConfig, scalar_family, trust_gate
from speedrun.config import resolve

DIM = 12


class Toy(nn.Module):
    """One block's kinds of parameters under the model's names: attention q and output projection, an MLP matrix
    (square, so that every Gram matrix has full rank and the eigenbases are unique), gains and biases, an
    embedding and a biased head."""

    def __init__(self, d=DIM, vocab=16):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList([nn.Module()])
        block = self.blocks[0]
        block.attn, block.mlp = nn.Module(), nn.Module()
        block.attn.c_q = nn.Linear(d, d)
        block.attn.c_proj = nn.Linear(d, d)
        block.mlp.c_fc = nn.Linear(d, d)
        block.norm1 = nn.Module()
        block.norm1.gain = nn.Parameter(torch.ones(d) + 0.1 * torch.randn(d))
        self.lm_head = nn.Linear(d, vocab)


def config(**overrides) -> SoapMuonConfig:
    base = dict(lr=0.05, momentum=0.9, ns_coefficients="cubic", ns_steps=12, ns_dtype="fp32", aux_lr=0.01,
                aux_betas=(0.8, 0.99), aux_eps=1e-10, trust_floor_end=2, trust_fade_end=4)
    return SoapMuonConfig(**{**base, **overrides})


def s4(x: torch.Tensor) -> torch.Tensor:
    """Schatten-4 norm in float64: (sum of sigma^4)^(1/4)."""
    return torch.linalg.svdvals(x.double()).pow(4).sum().pow(0.25)


def cos64(a, b):
    a, b = a.double(), b.double()
    return (a * b).sum() / max((a.norm() * b.norm()).item(), 1e-8)


def gate64(raw, soap, grad, k, floor=0.45, cap=0.85, floor_end=2, fade_end=4, agree=0.2, align=0.0):
    a = min(max((cos64(soap, raw).item() - agree) / (1 - agree), 0.0), 1.0)
    r = min(max((cos64(soap, grad).item() - align) / max(cos64(raw, grad).item() - align, 1e-8), 0.0), 1.0)
    g = a * r
    lo = floor if k < floor_end else 0.0 if k >= fade_end else floor * (fade_end - k) / (fade_end - floor_end)
    return min(max(g, lo), cap if k < fade_end else 1.0)


class Reference64:
    """The record's hidden-matrix update written out in float64 from its equations (the module docstring)."""

    def __init__(self, cfg: SoapMuonConfig):
        self.cfg, self.state = cfg, {}

    def step(self, name: str, W: torch.Tensor, G: torch.Tensor, lr: float, mu: float) -> torch.Tensor:
        cfg, W, G = self.cfg, W.double(), G.double()
        st = self.state.setdefault(name, {"M": torch.zeros_like(W), "k": 0})
        st["M"] = mu * st["M"] + (1 - mu) * G
        U = (1 - mu) * G + mu * st["M"]
        if cfg.soap:
            S = U
            if "QL" in st:
                P = st["QL"].T @ U @ st["QR"]
                st["E"] = cfg.soap_beta2 * st["E"] + (1 - cfg.soap_beta2) * P**2
                S = st["QL"] @ (P / st["E"].clamp_min(1e-16).sqrt()) @ st["QR"].T
                S = S * s4(U) / s4(S)
            if ".mlp." in name:
                U = S
            else:
                g = gate64(U, S, G, st["k"]) if ".attn.c_proj." in name and cfg.trust_gate else 1.0
                B = U + g * (S - U)
                U = B * s4(U) / s4(B) if cfg.blend_norm else B
        m, n = U.shape
        X = U.T if m > n else U
        X = X / s4(X)
        for _ in range(12):
            A = X @ X.T
            X = 2 * X + (-1.5 * A + 0.5 * A @ A) @ X
        O = (X.T if m > n else X) * max(1.0, m / n) ** 0.5
        c = (O * W).sum() / (W * W).sum()
        O = O - c * W + (cfg.radial_outward if c < 0 else cfg.radial_inward) * c * W
        if cfg.update_floor == "row":
            O = O * (cfg.update_floor_ratio * W.norm(dim=1, keepdim=True) / O.norm(dim=1, keepdim=True)).clamp_min(1)
        target = W.norm() - lr * (O * W).sum() / W.norm()
        mask = (O * W > 0).double()
        W = W - lr * O
        if cfg.radius_pin:
            W = W * target / W.norm()
        W = W * (1 - lr * cfg.cautious_wd * mask)
        if cfg.soap:
            b = cfg.soap_beta2
            st["L"] = b * st.get("L", torch.zeros(m, m, dtype=torch.float64)) + (1 - b) * G @ G.T
            st["R"] = b * st.get("R", torch.zeros(n, n, dtype=torch.float64)) + (1 - b) * G.T @ G
            if "QL" not in st:
                st["QL"] = torch.linalg.eigh(st["L"])[1].flip(1)
                st["QR"] = torch.linalg.eigh(st["R"])[1].flip(1)
                st["E"] = torch.zeros_like(W)
            else:
                for side, dim in (("L", 0), ("R", 1)):
                    Q = st["Q" + side]
                    order = torch.argsort(torch.diag(Q.T @ st[side] @ Q), descending=True)
                    st["E"] = st["E"].index_select(dim, order)
                    st["Q" + side] = torch.linalg.qr(st[side] @ Q[:, order])[0]
        st["k"] += 1
        return W


@pytest.mark.parametrize("overrides", [{}, {"trust_gate": False}, {"blend_norm": False}, {"soap": False},
                                       {"radial_outward": 1.0, "update_floor": "none", "radius_pin": False,
                                        "cautious_wd": 0.0}],
                         ids=["record", "no-gate", "no-blend-norm", "no-soap", "no-shapers"])
def test_hidden_update_matches_the_float64_equations(overrides):
    """Six steps (the trust gate's floor and cap phases crossed) on fresh random gradients: fp32 with an fp32
    Newton-Schulz against the equations in float64."""
    torch.manual_seed(1)
    model = Toy()
    cfg = config(**overrides)
    opt = build_optimizer(cfg, model)
    ref = Reference64(cfg)
    hidden = {n: p for n, p in model.named_parameters() if n.startswith("blocks.") and p.ndim == 2}
    weights = {n: p.detach().double().clone() for n, p in hidden.items()}
    gen = torch.Generator().manual_seed(2)
    for step in range(6):
        lr, mu = 0.05 * (1 - step / 10), 0.85 + 0.02 * step
        for group in opt.param_groups:
            group["lr"] = lr if group["use_muon"] else 0.0
            if group["use_muon"]:
                group["momentum"] = mu
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen)
        for name, p in hidden.items():
            weights[name] = ref.step(name, weights[name], p.grad, lr, mu)
        opt.step()
        for name, p in hidden.items():
            err = (p.double() - weights[name]).norm() / weights[name].norm()
            assert err < 5e-5, (step, name, err.item())  # measured up to 5.4e-6


def test_the_trust_gate_is_its_formula_in_every_phase():
    torch.manual_seed(3)
    cfg = config().shaping()
    for k in range(6):  # floor 0.45 at 0, 1; fading at 2, 3; 0 from 4 (cap 0.85 before 4, then 1)
        grad = torch.randn(8, 6)
        raw = grad + 0.5 * torch.randn(8, 6)
        for soap in (raw + 0.3 * torch.randn(8, 6), -raw + 0.1 * torch.randn(8, 6), grad.clone()):
            assert trust_gate(raw, soap, grad, cfg, k).item() == pytest.approx(gate64(raw, soap, grad, k), abs=1e-6)


def test_the_schatten4_newton_schulz_normalises_by_the_gram_norm():
    """norm="schatten4": X / ||X Xᵀ||_F^(1/2) before the iteration (the fourth root of sum sigma^4), in fp32 and
    float64; cubic iterations from there converge to the polar factor."""
    torch.manual_seed(4)
    for shape in ((16, 8), (8, 16), (3, 10, 10)):
        G = torch.randn(*shape)
        assert torch.allclose(reference.schatten4_norm(G.double()),
                              torch.linalg.svdvals(G.double()).pow(4).sum(-1).pow(0.25), rtol=1e-12)
        out = reference.newton_schulz(G, coefficients="cubic", norm="schatten4", upcast=True)
        U, _, Vh = torch.linalg.svd(G.double(), full_matrices=False)
        assert torch.allclose(out.double(), U @ Vh, atol=1e-6)
        one = reference.newton_schulz(G, coefficients="cubic", steps=1, norm="schatten4", upcast=True)
        X = G.double().mT if shape[-2] > shape[-1] else G.double()
        X = X / torch.linalg.svdvals(X).pow(4).sum(-1).pow(0.25)[..., None, None]
        X = 2 * X + (-1.5 * X @ X.mT + 0.5 * (X @ X.mT) @ (X @ X.mT)) @ X
        assert torch.allclose(one.double(), X.mT if shape[-2] > shape[-1] else X, rtol=1e-6, atol=1e-7)  # fp32 out
    with pytest.raises(ValueError, match="input norm"):
        reference.newton_schulz(G, norm="spectral")


def test_the_1d_adam_has_no_bias_correction_and_a_beta2_per_family():
    torch.manual_seed(5)
    model = Toy()
    opt = build_optimizer(config(), model)
    families = {g["family"]: g for g in opt.param_groups if g["role"] == "scalar"}
    assert {f: g["betas"] for f, g in families.items()} == {"gain": (0.8, 0.99), "bias": (0.8, 0.997),
                                                          "attn_proj_bias": (0.8, 0.9965)}
    assert all(g["bias_correction"] is False for g in families.values())
    names = {p: n for n, p in model.named_parameters()}
    assert [names[p] for p in families["attn_proj_bias"]["params"]] == ["blocks.0.attn.c_proj.bias"]
    assert "lm_head.bias" in [names[p] for p in families["bias"]["params"]]
    ps = [p for g in families.values() for p in g["params"]]
    start = {p: p.detach().double().clone() for p in ps}
    m = {p: torch.zeros_like(start[p]) for p in ps}
    v = {p: torch.zeros_like(start[p]) for p in ps}
    gen = torch.Generator().manual_seed(6)
    for _ in range(4):
        for group in opt.param_groups:
            group["lr"] = 0.0 if group["use_muon"] else 0.01
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
        for family, group in families.items():
            b1, b2 = group["betas"]
            for p in group["params"]:
                g = p.grad.double()
                m[p] = b1 * m[p] + (1 - b1) * g
                v[p] = b2 * v[p] + (1 - b2) * g * g
                start[p] = start[p] - 0.01 * m[p] / (v[p].sqrt() + 1e-10)
                assert torch.allclose(p.double(), start[p], rtol=1e-5, atol=1e-7), family
    switched = build_optimizer(config(adam_1d_bias_correction=True, aux_beta2_per_family=False), Toy())
    scalars = [g for g in switched.param_groups if g["role"] == "scalar"]
    assert all(g["bias_correction"] and g["betas"] == (0.8, 0.99) for g in scalars)


def test_scalar_families_by_name():
    assert scalar_family("blocks.3.norm2.gain") == "gain" and scalar_family("norm_f.gain") == "gain"
    assert scalar_family("blocks.3.attn.c_proj.bias") == "attn_proj_bias"
    assert scalar_family("blocks.3.mlp.c_proj.bias") == "bias" and scalar_family("lm_head.bias") == "bias"


def run_steps(opt, model, gen, steps):
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()


def test_state_dict_round_trip_continues_bit_for_bit():
    """Stopped after 3 steps (bases, second moments, counters in the state) and resumed in a fresh optimizer:
    the next 3 steps are the uninterrupted run's, bit for bit."""
    torch.manual_seed(7)
    model = Toy()
    cfg = config(ns_dtype="bf16")
    opt = build_optimizer(cfg, model)
    gen = torch.Generator().manual_seed(8)
    run_steps(opt, model, gen, 3)
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved = copy.deepcopy(opt.state_dict())  # a state_dict shares the live tensors, as torch's does
    gen_state = gen.get_state()
    run_steps(opt, model, gen, 3)
    straight = {k: v.clone() for k, v in model.state_dict().items()}

    torch.manual_seed(0)
    other = Toy()
    other.load_state_dict(saved_model)
    resumed = build_optimizer(cfg, other)
    resumed.load_state_dict(saved)
    state = resumed.state[other.blocks[0].attn.c_proj.weight]
    assert state["steps"] == 3 and "basis_left" in state
    gen.set_state(gen_state)
    run_steps(resumed, other, gen, 3)
    for k, v in other.state_dict().items():
        assert torch.equal(v, straight[k]), k


def test_power_cool_coefficients():
    c = {"c_hidden": 3.3169534699576625e-06, "c_embed": 4.976805410800738e-05, "c_head": 5.184172302917436e-07,
         "c_scalar": 1.6589351369335795e-06}
    cool = PowerCool(power=1.2, end=2900, flat_until=513.6, aux_flat_until=1487.0, **c)
    for step in (0, 513, 514, 1486, 1488, 2000, 2899, 2900, 3000):
        for role, lr0, key in (("hidden", 0.0375, "c_hidden"), ("embed", 0.3, "c_embed"),
                               ("head", 1 / 320, "c_head"), ("scalar", 0.01, "c_scalar")):
            assert cool.lr(lr0, step, 2900, role) == min(lr0, c[key] * max(0.0, 2900 - step) ** 1.2)
            flat = cool.flat_until if role == "hidden" else cool.aux_flat_until
            plain = PowerCool(power=1.2, end=2900, flat_until=513.6, aux_flat_until=1487.0)
            assert cool.lr(lr0, step, 2900, role) == pytest.approx(plain.lr(lr0, step, 2900, role), rel=1e-9)
            assert (cool.lr(lr0, step, 2900, role) < lr0) == (step > flat)
    # a preset that scales `end` rescales c: the lr leaves lr0 at the same fraction of the run
    short = PowerCool(power=1.2, end=10, flat_until=1.0, aux_flat_until=5.0, **c)
    assert short.coefficient("hidden") == c["c_hidden"] * (2900 / 10) ** 1.2
    assert 10 - (0.0375 / short.coefficient("hidden")) ** (1 / 1.2) == pytest.approx(513.6 * 10 / 2900)
    off = PowerCool(power=1.0, end=2900, flat_until=513.6, aux_flat_until=1487.0, coefficients=False, **c)
    assert off.lr(0.3, 2000, 2900, "embed") == pytest.approx(0.3 * 900 / (2900 - 1487.0))


def test_the_momentum_ramp_is_the_record_s():
    """0.85 -> 0.95 over 300 steps, back to 0.85 over the last 200 of 2900, as the script computes it."""
    ramp = MomentumRamp(warmup_steps=300, start=0.85, cooldown_steps=200, end=0.85)
    for step in (0, 1, 150, 299, 300, 2000, 2700, 2701, 2800, 2899):
        if step < 300:
            want = 0.85 + step / 300 * (0.95 - 0.85)
        elif step > 2700:
            want = 0.95 - (step - 2700) / 200 * (0.95 - 0.85)
        else:
            want = 0.95
        assert ramp.momentum(0.95, step, 2900) == want


# ---- the recipe -------------------------------------------------------------------------------------------------

RESULT = re.compile(r"result #(\d+)[^:]*: (\d+) steps, (?:mean )?val loss (\d\.\d{4}) \(n=(\d+)")


def test_the_recipe_states_the_result():
    entry = registry.lookup("recipe", "track3-record")
    match = RESULT.search(entry.factory.__doc__)
    assert (int(match[1]), int(match[2]), float(match[3]), int(match[4])) == (46, 2690, 3.2783, 8)
    assert "Source: records/track_3_optimization/results/20260619_cwd_rowfloor_tailema/" in entry.factory.__doc__
    assert entry.factory()["max_steps"] == 2690 and entry.factory()["schedule_steps"] == 2900


@pytest.mark.parametrize("preset,scale", [("track3", 1.0), ("track3-cpu", 160 / 3250)])
def test_the_recipe_s_parts_on_both_presets(preset, scale):
    cfg = resolve([f"--preset={preset}", "--optimizer=track3-record"])
    assert type(cfg.optim) is SoapMuonConfig and cfg.recipe == "track3-record"
    assert (cfg.max_steps, cfg.schedule_steps, cfg.schedule.end) == (round(2690 * scale), round(2900 * scale),
                                                                     round(2900 * scale))
    assert cfg.schedule.momentum == MomentumRamp(round(300 * scale), 0.85, round(200 * scale), 0.85)
    assert (cfg.optim.trust_floor_end, cfg.optim.trust_fade_end) == (round(1375 * scale), round(1625 * scale))
    assert (cfg.wrapper.prefill_steps, cfg.wrapper.rest_steps) == (round(300 * scale), round(1950 * scale))
    assert (cfg.readout.start, cfg.readout.end) == (round(2400 * scale), round(2900 * scale))
    assert cfg.readout.tau == pytest.approx(150 * scale)
    assert cfg.schedule.flat_until == pytest.approx(513.6 * scale)
    m = cfg.model
    assert (m.init, m.zero_init_proj, m.init_fc_depth_scale, m.init_gain_split) == ("torch", True, 0.3, 0.125)
    model = Toy()
    opt = build_optimizer(cfg.optim, model)
    assert isinstance(opt, SoapMuon) and opt.ns_dtype == "bf16"
    hidden = next(g for g in opt.param_groups if g["use_muon"])
    assert (hidden["lr"], hidden["ns_norm"], hidden["update_floor_ratio"], hidden["cautious_wd"]) == (
        0.0375, "schatten4", 0.3825, 0.025)
    lrs = {g["role"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"hidden": 0.0375, "embed": 0.3, "head": 1 / 320, "scalar": 0.01}
    assert all(g["betas"] == (0.8, 0.99) and g["weight_decay"] == 0 and g["eps"] == 1e-10
               for g in opt.param_groups if g["role"] in ("embed", "head"))


def test_a_schatten4_newton_schulz_stays_eager():
    cfg = resolve(["--preset=track3", "--optimizer=track3-record"]).optim
    assert cfg.resolve_auto("cuda", native_bf16=True).newton_schulz_impl == "eager"
    assert cfg.resolve_auto("cuda", native_bf16=True).ns_dtype == "bf16"
    with pytest.raises(Exception, match="newton_schulz_impl=eager"):
        resolve(["--preset=track3", "--optimizer=track3-record", "--optim.newton_schulz_impl=triton"])


@pytest.mark.parametrize("option", ["--optim.update_floor=rows", "--optim.ns_norm=spectral",
                                    "--optim.precondition_frequency=0", "--optim.trust_cap=0.2",
                                    "--optim.soap_beta2=1.0", "--schedule.c_hidden=-1.0",
                                    "--readout.blend=1.5", "--model.init_gain_split=1.0"])
def test_bad_options_are_one_line_errors_naming_the_option(option):
    from speedrun.cli import ConfigError

    with pytest.raises(ConfigError, match=re.escape(option.split("=")[0].lstrip("-"))):
        resolve(["--preset=track3", "--optimizer=track3-record", option])


@pytest.mark.slow
def test_a_short_track3_cpu_run(tmp_path):
    """python train.py --preset track3-cpu --optimizer track3-record --max_steps=8: a finite loss, raw and
    readout val losses logged."""
    import train

    summary = train.main(["--preset=track3-cpu", "--optimizer=track3-record", "--max_steps=8", "--threads=1",
                          f"--out_dir={tmp_path}"])
    assert math.isfinite(summary["final_val_loss"]) and summary["final_val_loss"] < 10.9
    assert summary["final_val_loss_raw"] == summary["final_val_loss"]  # the EMA starts at step 118
