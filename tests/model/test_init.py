"""The init rules (GPTConfig.init and the init_* / zero_init_* edits): every track-3 result's init, drawn from the
same seed, gives its golden's fingerprints bit for bit; each rule and edit against an independent construction."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from model.config import model_preset
from model.gpt import GPT, init_module
from speedrun.cli import ConfigError

GOLDENS = Path(__file__).parents[1] / "golden"
MULTIPLIERS = dict(init_scale_attn_proj=1.25, init_scale_mlp_proj=3.0, init_scale_mlp_fc=1.5)
# Each result's init as GPTConfig fields (modded-nanogpt track-3 result folders, ".log" for the script of a folder's
# published logs where it differs from the folder's .py; the baseline's file):
#   D1 + the hyperball edits: PyTorch's construction init, attn.proj x1.25, mlp.proj x3, mlp.fc x1.5, the head
#   weight and every output-projection bias zero (q/k/v/fc biases keep their uniform draw);
#   D2 + the multipliers: the baseline's normal rule without zeroing the projections or the head;
#   PSGD: D1, then the block matrices re-drawn from normals with the uniform's std times the multipliers.
D1_HYPERBALL = dict(init="torch", zero_init_proj=False, zero_init_head=True, zero_init_proj_bias=True, **MULTIPLIERS)
D2_MULTIPLIED = dict(init="track3", zero_init_proj=False, **MULTIPLIERS)
INITS = {
    "20260430_adamh": D1_HYPERBALL,
    "20260430_normuonh": D1_HYPERBALL,
    "20260504_muloco_normuonh": D1_HYPERBALL,
    "20260430_muonh": D2_MULTIPLIED,  # the folder's .py
    "20260430_muonh.log": D1_HYPERBALL,  # the script its published logs ran
    "20260611_muonh_tuned_aux_3250": D2_MULTIPLIED,
    "20260518_soaph": dict(D1_HYPERBALL, init_embed_bf16=False),  # re-runs the default init on the fp32 embedding
    "20260527_psgd": dict(init="torch", zero_init_proj=False, init_redraw_hidden=True, **MULTIPLIERS),
    "20260501_muonsq": {},  # the baseline's rule, the track3 preset's default
    "20260501_muonsq.log": dict(init="torch", zero_init_proj_bias=True),  # D1, every "proj" parameter zero
    "track3_train_gpt_simple": {},
}
# Goldens whose script seeds the generator again between the model's construction and its own init (the harness
# does, before every script's rule): the phases are called one by one, with that seed between them.
RESEEDED_BEFORE_REDRAW = {"20260527_psgd"}


def our_name(ref: str) -> str:
    from tests.test_track3_golden import our_name as name

    return name(ref)


def tiny_track3(shape: dict, **init) -> GPT:
    return GPT(model_preset("track3", n_layer=shape["n_layer"], n_embd=shape["dim"], n_head=shape["dim"] // 128,
                            vocab_size=shape["vocab"], max_seq_len=shape["seq"], **init))


def fingerprint(p: torch.Tensor) -> dict:
    p = p.detach().double().flatten()
    return {"norm": p.norm().item(), "sum": p.sum().item(), "first": p[:2].tolist(), "last": p[-2:].tolist()}


@pytest.mark.parametrize("folder", sorted(INITS))
def test_each_result_s_init_draws_its_golden_numbers(folder):
    """The golden's fingerprint of every parameter (seed 1234 before the rule): entries equal, norms and sums (float64
    reductions of them) within 1e-12; on this project's CPUs every figure is bitwise equal."""
    golden = json.loads((GOLDENS / f"{folder}.json").read_text())
    seed = golden["meta"]["init_seed"]
    model = tiny_track3(golden["meta"]["shape"], **INITS[folder])
    torch.manual_seed(seed)
    if folder in RESEEDED_BEFORE_REDRAW:
        model.init_rule()
        torch.manual_seed(seed)
        model.redraw_hidden()
        model.init_edits()
    else:
        model.reset_parameters()
    params = dict(model.named_parameters())
    assert sorted(params) == sorted(our_name(r) for r in golden["init"])
    for ref, want in golden["init"].items():
        got = fingerprint(params[our_name(ref)])
        assert got["first"] == want["first"] and got["last"] == want["last"], ref
        assert got["norm"] == pytest.approx(want["norm"], rel=1e-12, abs=0), ref
        assert got["sum"] == pytest.approx(want["sum"], rel=1e-12, abs=1e-12 * max(want["norm"], 1.0)), ref


def test_the_hyperball_goldens_start_on_non_zero_hidden_matrices():
    """What the hyperball family needs from its init: every hidden matrix non-zero (its norm is kept forever)."""
    for folder in ("20260430_adamh", "20260430_muonh"):
        golden = json.loads((GOLDENS / f"{folder}.json").read_text())
        hidden = [r for r in golden["init"] if r.startswith("blocks.") and r.endswith("weight")]
        assert hidden and all(golden["init"][r]["norm"] > 0 for r in hidden)


# --- the rules against independent constructions --------------------------------------------------------------


def shape(n_layer=2, dim=128, vocab=512, seq=32) -> dict:
    return {"n_layer": n_layer, "dim": dim, "vocab": vocab, "seq": seq}


def construction_order(seed: int, s: dict, round_embedding: bool = True) -> dict:
    """modded-nanogpt's GPT as PyTorch builds it: the modules its constructor makes, in order, from `seed`."""
    torch.manual_seed(seed)
    C = s["dim"]
    out = {}
    embed = nn.Embedding(s["vocab"], C)
    out["wte.weight"] = embed.weight.detach().bfloat16().float() if round_embedding else embed.weight.detach()
    for i in range(s["n_layer"]):
        for name, (n_in, n_out) in (("attn.c_q", (C, C)), ("attn.c_k", (C, C)), ("attn.c_v", (C, C)),
                                    ("attn.c_proj", (C, C)), ("mlp.c_fc", (C, 4 * C)), ("mlp.c_proj", (4 * C, C))):
            linear = nn.Linear(n_in, n_out)
            out[f"blocks.{i}.{name}.weight"], out[f"blocks.{i}.{name}.bias"] = linear.weight.detach(), linear.bias.detach()
    head = nn.Linear(C, s["vocab"])
    out["lm_head.weight"], out["lm_head.bias"] = head.weight.detach(), head.bias.detach()
    return out


def test_torch_rule_is_pytorch_s_construction_init():
    seed, s = int(torch.randint(0, 2**31, ())), shape()
    want = construction_order(seed, s)
    model = tiny_track3(s, init="torch", zero_init_proj=False)
    torch.manual_seed(seed)
    model.reset_parameters()
    for name, p in model.named_parameters():
        if name.endswith(".gain"):
            assert torch.equal(p, torch.ones_like(p)), name
        else:
            assert torch.equal(p.detach(), want[name]), name
    assert torch.equal(model.wte.weight, model.wte.weight.bfloat16().float())  # bf16 numbers in an fp32 tensor


def test_torch_rule_keeps_the_fp32_embedding_draw_when_asked():
    seed, s = int(torch.randint(0, 2**31, ())), shape()
    model = tiny_track3(s, init="torch", zero_init_proj=False, init_embed_bf16=False)
    torch.manual_seed(seed)
    model.reset_parameters()
    assert torch.equal(model.wte.weight.detach(), construction_order(seed, s, round_embedding=False)["wte.weight"])
    assert not torch.equal(model.wte.weight, model.wte.weight.bfloat16().float())


def test_a_bf16_embedding_holds_the_same_init():
    """In a bf16 run the track-3 embedding is a bf16 tensor: the rule draws in fp32 and rounds, the same numbers."""
    s = shape()
    models = [GPT(tiny_track3(s, init="torch").cfg, dtype=dtype) for dtype in (torch.float32, torch.bfloat16)]
    for model in models:
        torch.manual_seed(7)
        model.reset_parameters()
    assert models[1].wte.weight.dtype == torch.bfloat16
    assert torch.equal(models[1].wte.weight.float(), models[0].wte.weight)
    for (name, a), (_, b) in zip(models[0].named_parameters(), models[1].named_parameters()):
        assert torch.equal(a.float(), b.float()), name


def test_multipliers_and_zeroing_edit_the_rule_s_draw():
    """Every edit against the plain rule from the same seed: scaled modules multiplied, zeroed ones zero, the rest
    (and the generator's state after the init) untouched. (track3 draws no head it zeroes: its head stays drawn.)"""
    s = shape()
    for rule, zero_head in (("torch", True), ("track3", False)):
        plain = tiny_track3(s, init=rule, zero_init_proj=False)
        torch.manual_seed(3)
        plain.reset_parameters()
        after_plain = torch.rand(4)
        scales = dict(init_scale_qkv=0.5, init_scale_attn_proj=1.25, init_scale_mlp_fc=1.5, init_scale_mlp_proj=3.0)
        edited = tiny_track3(s, init=rule, zero_init_proj=False, zero_init_head=zero_head, zero_init_proj_bias=True,
                             **scales)
        torch.manual_seed(3)
        edited.reset_parameters()
        assert torch.equal(torch.rand(4), after_plain)  # the edits draw nothing
        base = dict(plain.named_parameters())
        for name, p in edited.named_parameters():
            module = init_module(name)
            zeroed = (name == "lm_head.weight" and zero_head) or (
                name.endswith(".bias") and ("c_proj" in name or "lm_head" in name))
            if zeroed:
                assert not p.any(), (rule, name)
            elif module is not None:
                assert torch.equal(p, base[name] * scales[f"init_scale_{module}"]), (rule, name)
            else:
                assert torch.equal(p, base[name]), (rule, name)


@pytest.mark.parametrize("rule", ["normal", "track3", "torch"])
def test_zero_init_head_follows_zero_init_proj_unless_set(rule):
    s = shape()
    for zero_proj, zero_head, head_is_zero in ((True, None, True), (False, None, False), (True, False, False),
                                               (False, True, True)):
        model = tiny_track3(s, init=rule, zero_init_proj=zero_proj, zero_init_head=zero_head)
        assert model.cfg.zero_head is head_is_zero
        assert (not model.lm_head.weight.any()) is head_is_zero, (rule, zero_proj, zero_head)
        assert (not model.blocks[0].mlp.c_proj.weight.any()) is zero_proj, (rule, zero_proj, zero_head)


def test_the_baseline_rule_draws_nothing_for_what_it_zeroes():
    """track3 zeroes the projections without a draw (its reference does), so zeroing changes every later draw."""
    s = shape()
    a, b = tiny_track3(s), tiny_track3(s, zero_init_proj=False)
    for model in (a, b):
        torch.manual_seed(5)
        model.reset_parameters()
    assert torch.equal(a.blocks[0].attn.c_q.weight, b.blocks[0].attn.c_q.weight)  # before the first projection
    assert not torch.equal(a.blocks[0].mlp.c_fc.weight, b.blocks[0].mlp.c_fc.weight)  # after it


def test_redraw_takes_the_multiplier_into_the_std():
    s = shape(n_layer=1, dim=256)
    model = tiny_track3(s, init="torch", zero_init_proj=False, init_redraw_hidden=True, **MULTIPLIERS)
    torch.manual_seed(11)
    model.init_rule()
    state = torch.get_rng_state()
    model.redraw_hidden()
    model.init_edits()
    torch.set_rng_state(state)  # the same draws, stated independently: N(0, 1/sqrt(3·fan_in)·s) in parameter order
    for name, p in model.named_parameters():
        if name.startswith("blocks.") and p.ndim == 2:
            scale = {"qkv": 1.0, **{k[len("init_scale_"):]: v for k, v in MULTIPLIERS.items()}}[init_module(name)]
            want = torch.empty_like(p).normal_(0, 1.0 / (3.0 * p.size(1)) ** 0.5 * scale)
            assert torch.equal(p, want), name
            assert p.std().item() == pytest.approx(scale / math.sqrt(3 * p.size(1)), rel=0.05), name


def test_torch_rule_initialises_the_speedrun_model_too():
    """Every architecture of model/config.py takes the rule: the speedrun's value embeddings, skips and LayerNorms."""
    for preset, extra in (("tiny", {}), ("tiny", dict(rmsnorm=False, rotary=False, tied_head=True))):
        model = GPT(model_preset(preset, init="torch", zero_init_proj=False, **extra))
        bound = 1 / math.sqrt(model.cfg.n_embd)
        assert model.blocks[0].attn.c_q.weight.abs().max() <= bound
        assert model.blocks[0].attn.c_proj.weight.any()
        for embedding in model.value_embeds:
            assert embedding.weight.std().item() == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("field", ["init_scale_qkv", "init_scale_attn_proj", "init_scale_mlp_fc",
                                   "init_scale_mlp_proj"])
def test_a_bad_multiplier_is_a_config_error_naming_it(field):
    for value in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match=f"--model.{field}="):
            model_preset("tiny", **{field: value})
    with pytest.raises(ConfigError, match="init='kaiming'; choose from normal, track3, torch"):
        model_preset("tiny", init="kaiming")
