"""optim.recipes: each track-3 recipe builds the published optimizer and schedule, and says where it comes from."""

import dataclasses
import re

import pytest
import torch

from optim import build_optimizer
from optim.muon import Muon
from optim.normuon import NorMuon
from optim.recipes import RECIPES
from speedrun.config import OptimConfig, TrainConfig
from tests.optim.test_roles import BiasedModel

# The published numbers (modded-nanogpt records/track_3_optimization: README table and the logs' scripts).
RESULTS = {"track3-muon": (36, 3250, 3.2787, 10), "track3-adam": (2, 5625, 3.2790, 1),
           "track3-normuon": (10, 3250, 3.2789, 20)}
SCHEDULES = {  # max_steps, warmup_steps, cooldown_frac, schedule_steps (0: max_steps), grad_clip
    "track3-muon": (3250, 0, 0.7, 0, 0.0), "track3-adam": (5625, 250, 0.7, 0, 0.0),
    "track3-normuon": (3250, 0, 0.7, 3300, 0.0)}
HIDDEN = {  # the hidden-matrix group
    "track3-muon": dict(lr=0.025, weight_decay=0.05, momentum=0.95, nesterov=True, ns_coefficients="cubic",
                        ns_steps=12, lr_scaling="original"),
    "track3-adam": dict(lr=0.0015, betas=(0.9, 0.95), eps=1e-10, weight_decay=0.1),
    "track3-normuon": dict(lr=0.035, weight_decay=0.025, momentum=0.95, nesterov=True, ns_coefficients="cubic",
                           ns_steps=12, lr_scaling="original", axis="longer", beta2=0.95, norm_eps=1e-10)}
AUX = {  # role -> lr, and what every non-hidden group shares
    "track3-muon": ({"embed": 0.7, "head": 0.004, "scalar": 0.015}, dict(betas=(0.8, 0.95), eps=1e-10,
                                                                           weight_decay=0.001)),
    "track3-adam": ({"embed": 0.3, "head": 1 / 320, "scalar": 0.01}, dict(betas=(0.8, 0.95), eps=1e-10,
                                                                            weight_decay=0.0)),
    "track3-normuon": ({"embed": 0.3, "head": 1 / 320, "scalar": 0.01}, dict(betas=(0.8, 0.95), eps=1e-10,
                                                                               weight_decay=0.0))}
TRAIN_KEYS = ("max_steps", "warmup_steps", "cooldown_frac", "schedule_steps", "grad_clip")


def optim_config(overrides: dict) -> OptimConfig:
    return dataclasses.replace(OptimConfig(), **{k.removeprefix("optim."): v for k, v in overrides.items()
                                                 if k.startswith("optim.")})


def test_the_three_track3_recipes():
    assert sorted(RECIPES) == sorted(RESULTS)


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_recipe_builds_the_published_optimizer(name):
    overrides = RECIPES[name]()
    model = BiasedModel()  # every role, biases included (the track-3 model's Linears have them)
    opt = build_optimizer(optim_config(overrides), model)
    assert type(opt) is {"track3-muon": Muon, "track3-adam": torch.optim.AdamW, "track3-normuon": NorMuon}[name]
    if name == "track3-adam":
        assert opt.defaults["fused"]  # as the reference's
    else:
        assert opt.ns_dtype == "bf16"  # as the reference, whatever the CPU (emulated where bf16 is slow)
    groups = {g["role"]: g for g in opt.param_groups}
    assert {k: groups["hidden"][k] for k in HIDDEN[name]} == HIDDEN[name]
    lrs, shared = AUX[name]
    for role, lr in lrs.items():
        assert groups[role]["lr"] == lr and {k: groups[role][k] for k in shared} == shared, role
    assert groups["scalar"]["params"][-1] is model.lm_head.bias  # the head bias takes the 1-D lr


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_recipe_sets_the_published_schedule(name):
    overrides = RECIPES[name]()
    train = {k: v for k, v in overrides.items() if not k.startswith("optim.")}
    assert set(train) == set(TRAIN_KEYS)
    assert tuple(train[k] for k in TRAIN_KEYS) == SCHEDULES[name]
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for key, value in train.items():  # keys TrainConfig has must take values of their type
        if key in fields:
            assert isinstance(value, type(fields[key])), (key, value)


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_recipe_values_have_the_config_types(name):
    defaults = OptimConfig()
    for key, value in RECIPES[name]().items():
        if key.startswith("optim."):
            field = key.removeprefix("optim.")
            assert isinstance(value, type(getattr(defaults, field))), (key, value)


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_docstring_states_the_result(name):
    number, steps, loss, n = RESULTS[name]
    doc = RECIPES[name].__doc__
    match = re.search(r"result #(\d+)[^:]*: (\d+) steps, (?:mean )?val loss (\d\.\d{4}) \(n=(\d+)", doc)
    assert match, doc
    assert (int(match[1]), int(match[2]), float(match[3]), int(match[4])) == (number, steps, loss, n)
    assert RECIPES[name]()["max_steps"] == steps
