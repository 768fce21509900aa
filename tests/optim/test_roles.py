"""optim.roles: which role each parameter takes (param_groups) and each role's hyper-parameters (role_table)."""

import pytest
import torch
import torch.nn as nn

from model import GPT, model_preset
from optim import ROLES, AuxRoles, RoleHparams, build_optimizer, param_groups, role_table
from optim.adamw import AdamWConfig
from optim.muon import MuonConfig
from optim.normuon import NorMuonConfig
from optim.sgd import SGDConfig


def tiny_model(**overrides):
    torch.manual_seed(0)
    return GPT(model_preset("tiny", **overrides))


class BiasedModel(nn.Module):
    """The track-3 model's parameter kinds under our names: biased block Linears, gains, an embedding and a
    biased untied head."""

    def __init__(self, d=8, vocab=32):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList([nn.Module()])
        self.blocks[0].attn = nn.Module()
        self.blocks[0].attn.c_q = nn.Linear(d, d)
        self.blocks[0].mlp = nn.Module()
        self.blocks[0].mlp.c_fc = nn.Linear(d, 4 * d)
        self.blocks[0].norm_gain = nn.Parameter(torch.ones(d))
        self.lm_head = nn.Linear(d, vocab)


def expected_role(name: str, p: torch.Tensor) -> str:
    if name.startswith("blocks.") and p.ndim == 2:
        return "hidden"
    if name.split(".")[0] in ("wte", "wpe", "value_embeds"):
        return "embed"
    if name == "lm_head.weight":
        return "head"
    return "scalar"


@pytest.mark.parametrize("make", [tiny_model, lambda: tiny_model(tied_head=True, rotary=False, rmsnorm=False),
                                  BiasedModel], ids=["speedrun", "vanilla-like", "biased"])
def test_every_parameter_in_exactly_one_group(make):
    model = make()
    groups = param_groups(model)
    assert tuple(groups) == ROLES
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    role_of = {id(p): role for role, ps in groups.items() for p in ps}
    for name, p in model.named_parameters():
        assert role_of[id(p)] == expected_role(name, p), name
    assert all(p.ndim < 2 for p in groups["scalar"])


def test_biases_are_scalars_and_the_head_role_is_the_head_weight():
    model = BiasedModel()
    groups = param_groups(model)
    ids = {role: [id(p) for p in ps] for role, ps in groups.items()}
    block = model.blocks[0]
    assert ids["head"] == [id(model.lm_head.weight)]
    assert ids["hidden"] == [id(block.attn.c_q.weight), id(block.mlp.c_fc.weight)]
    assert ids["scalar"] == [id(block.norm_gain), id(block.attn.c_q.bias), id(block.mlp.c_fc.bias),
                             id(model.lm_head.bias)]  # model order: a module's own parameters first


def test_existing_models_have_no_biases_outside_norms():
    # The head bias moving to the scalar role changes nothing for the model presets we have: their only biases
    # are LayerNorm's (gpt2-vanilla), scalars already.
    for name in ("gpt2-124m", "gpt2-vanilla", "cpu", "tiny"):
        cfg = model_preset(name, n_layer=2, n_embd=32, n_head=2, vocab_size=64, max_seq_len=16)
        biases = [n for n, _ in GPT(cfg).named_parameters() if n.endswith("bias")]
        assert all(n.endswith(".ln.bias") for n in biases), (name, biases)


def test_frozen_parameters_are_left_out():
    model = tiny_model()
    model.wte.weight.requires_grad_(False)
    assert all(p is not model.wte.weight for ps in param_groups(model).values() for p in ps)


@pytest.mark.parametrize("stray", ["extra_matrix", "cube_in_block", "head_matrix"])
def test_a_parameter_outside_the_contract_is_refused(stray):
    model = tiny_model()
    if stray == "extra_matrix":
        model.extra = nn.Linear(4, 4)
        name = "extra.weight"
    elif stray == "cube_in_block":
        model.blocks[0].cube = nn.Parameter(torch.zeros(2, 2, 2))
        name = "blocks.0.cube"
    else:
        model.lm_head.scale = nn.Parameter(torch.zeros(2, 2))
        name = "lm_head.scale"
    with pytest.raises(ValueError, match=f"{name} .* fits no optimizer group"):
        param_groups(model)


# --- the role table -------------------------------------------------------------------------------------


def test_role_table_defaults():
    table = role_table(AuxRoles(), RoleHparams(0.02, (0.9, 0.99), 0.1), aux_lr=0.008, aux_betas=(0.9, 0.99))
    assert table == {"hidden": RoleHparams(0.02, (0.9, 0.99), 0.1), "embed": RoleHparams(0.008, (0.9, 0.99), 0.0),
                     "head": RoleHparams(0.008, (0.9, 0.99), 0.0), "scalar": RoleHparams(0.008, (0.9, 0.99), 0.0)}


def test_role_table_per_role_overrides():
    cfg = AuxRoles(embed_lr=0.3, head_lr=1 / 320, scalar_lr=0.01, aux_weight_decay=0.001)
    table = role_table(cfg, RoleHparams(0.0015, (0.9, 0.95), 0.1), aux_lr=0.0015, aux_betas=(0.8, 0.95))
    assert table["hidden"] == RoleHparams(0.0015, (0.9, 0.95), 0.1)
    assert {r: table[r].lr for r in ("embed", "head", "scalar")} == {"embed": 0.3, "head": 1 / 320, "scalar": 0.01}
    assert all(table[r].betas == (0.8, 0.95) and table[r].weight_decay == 0.001 for r in ("embed", "head", "scalar"))


@pytest.mark.parametrize("hidden, aux_betas, message", [
    (RoleHparams(0.01, (0.9, 0.95), -1.0), (0.9, 0.95), r"role hidden: .*weight_decay=-1.0"),
    (RoleHparams(0.01, (0.9, 0.95), 0.0), (0.9,), r"role embed: .*betas=\(0.9,\)"),
    (RoleHparams(0.01, (1.0, 0.9), 0.0), (0.9, 0.95), r"role hidden: .*betas")])
def test_role_table_refuses_bad_values(hidden, aux_betas, message):
    """The table's own check, for values that skipped a config's (which refuses them first)."""
    with pytest.raises(ValueError, match=message):
        role_table(AuxRoles(), hidden, aux_lr=0.01, aux_betas=aux_betas)


@pytest.mark.parametrize("config, overrides, message", [
    (AdamWConfig, dict(head_lr=-0.1), r"--optim.head_lr=-0.1 must be a number >= 0"),
    (AdamWConfig, dict(weight_decay=-1.0), r"--optim.weight_decay=-1.0 must be"),
    (AdamWConfig, dict(aux_betas=(0.9,)), r"--optim.aux_betas=\(0.9,\) must be two numbers"),
    (AdamWConfig, dict(betas=(1.0, 0.9)), r"--optim.betas=\(1.0, 0.9\) must be two numbers in \[0, 1\)"),
    (MuonConfig, dict(aux_weight_decay=-1.0), r"--optim.aux_weight_decay=-1.0 must be a number >= 0"),
    (SGDConfig, dict(lr=0.0), r"--optim.lr=0.0 must be a number > 0")])
def test_the_config_refuses_bad_values(config, overrides, message):
    with pytest.raises(ValueError, match=message):
        config(**overrides)


@pytest.mark.parametrize("name", ["adamw", "sgd", "muon", "normuon"])
def test_every_optimizer_uses_the_table(name):
    shared = dict(lr=0.02, embed_lr=0.5, scalar_lr=0.01, weight_decay=0.1, aux_weight_decay=0.002)
    cfg = {"adamw": lambda: AdamWConfig(**shared, betas=(0.85, 0.9), aux_betas=(0.8, 0.95)),
           "sgd": lambda: SGDConfig(**shared),
           "muon": lambda: MuonConfig(**shared, aux_lr=0.008, aux_betas=(0.8, 0.95)),
           "normuon": lambda: NorMuonConfig(**shared, aux_lr=0.008, aux_betas=(0.8, 0.95))}[name]()
    model = BiasedModel()
    opt = build_optimizer(cfg, model)
    aux_lr, aux_betas = (cfg.aux_lr, cfg.aux_betas) if name in ("muon", "normuon") else (cfg.lr, (0.8, 0.95))
    table = role_table(cfg, RoleHparams(cfg.lr, getattr(cfg, "betas", (0.0, 0.0)), cfg.weight_decay), aux_lr=aux_lr,
                       aux_betas=aux_betas if name != "sgd" else (0.0, 0.0))
    groups = param_groups(model)
    assert sorted(g["role"] for g in opt.param_groups) == sorted(ROLES)
    for g in opt.param_groups:
        row = table[g["role"]]
        assert g["params"] == groups[g["role"]] and (g["lr"], g["weight_decay"]) == (row.lr, row.weight_decay)
        if "betas" in g:  # AdamW and the Adam side (SGD and Muon's hidden group have none)
            assert g["betas"] == row.betas
