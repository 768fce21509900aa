"""Recipes: each track-3 recipe builds the published optimizer and schedule, and says where it comes from."""

import re

import pytest

from optim import build_optimizer, registry
from optim.muon import Muon
from optim.normuon import NorMuon
from speedrun.config import resolve
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
# a recipe's docstring: "Track-3 result #N ...: S steps, (mean) val loss L (n=K" and where its script is
RESULT = re.compile(r"result #(\d+)[^:]*: (\d+) steps, (?:mean )?val loss (\d\.\d{4}) \(n=(\d+)")


def test_the_track3_recipes_are_registered():
    assert set(RESULTS) <= set(registry.entries("recipe"))


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_recipe_builds_the_published_optimizer(name):
    cfg = resolve(["--preset=track3", f"--optimizer={name}"])
    model = BiasedModel()  # every role, biases included (the track-3 model's Linears have them)
    opt = build_optimizer(cfg.optim, model)
    assert type(opt) is {"track3-muon": Muon, "track3-adam": __import__("torch").optim.AdamW,
                         "track3-normuon": NorMuon}[name]
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
    cfg = resolve(["--preset=track3", f"--optimizer={name}"])
    assert (cfg.max_steps, cfg.schedule.warmup_steps, cfg.schedule.cooldown_frac, cfg.schedule_steps,
            cfg.grad_clip) == SCHEDULES[name]
    assert cfg.schedule.aux_cooldown_frac is None and cfg.recipe == name


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_the_cpu_preset_scales_the_recipe_s_steps(name):
    """track3-cpu's budget is 160 steps: every step count a recipe states for 3250 scales by 160/3250."""
    cfg = resolve(["--preset=track3-cpu", f"--optimizer={name}"])
    scale = 160 / 3250
    max_steps, warmup, _, schedule_steps, _ = SCHEDULES[name]
    assert (cfg.max_steps, cfg.schedule.warmup_steps, cfg.schedule_steps) == (
        round(max_steps * scale), round(warmup * scale), round(schedule_steps * scale))


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_docstring_states_the_result(name):
    number, steps, loss, n = RESULTS[name]
    entry = registry.lookup("recipe", name)
    match = RESULT.search(entry.factory.__doc__)
    assert match, entry.factory.__doc__
    assert (int(match[1]), int(match[2]), float(match[3]), int(match[4])) == (number, steps, loss, n)
    assert entry.factory()["max_steps"] == steps


@pytest.mark.parametrize("name", sorted(registry.entries("recipe")))
def test_every_recipe_resolves_and_says_where_it_comes_from(name):
    """Every registered recipe: a docstring naming its source (a track-3 result folder, or "our own"), and a config
    on both track-3 presets."""
    doc = registry.lookup("recipe", name).factory.__doc__
    assert "Source:" in doc, name
    if RESULT.search(doc) is None:
        assert "our own" in doc, name  # a recipe without a published result says so
    for preset in ("track3", "track3-cpu"):
        cfg = resolve([f"--preset={preset}", f"--optimizer={name}"])
        assert cfg.recipe == name
