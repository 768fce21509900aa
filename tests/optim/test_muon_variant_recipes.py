"""The Muon-variant and SGD recipes of track 3: each builds the published (or stated) optimizer, wrapper and
schedule on the track3 preset, scales its step counts on track3-cpu, and its docstring states its result."""

import pytest

from optim import build_optimizer, registry, wrap_optimizer
from optim.ema_nesterov import EmaNesterov
from speedrun.config import resolve
from tests.optim.test_recipes import RESULT
from tests.optim.test_roles import BiasedModel

# recipe -> (result number, published steps, mean val loss, n) from the track README's table
RESULTS = {"track3-ema-nesterov-muon": (39, 3125, 3.2786, 20), "track3-muon2": (7, 3325, 3.2752, 1),
           "track3-spectral-descent": (22, 8225, 3.2774, 4)}
# recipe -> (max_steps, schedule_steps, cooldown_frac)
SCHEDULES = {"track3-ema-nesterov-muon": (3125, 3150, 0.7), "track3-muon2": (3325, 0, 0.7),
             "track3-spectral-descent": (8225, 8500, 0.7)}
HIDDEN = {"track3-ema-nesterov-muon": dict(lr=0.035, weight_decay=0.025, momentum=0.95, nesterov=True,
                                           ns_coefficients="cubic", ns_steps=12, lr_scaling="original"),
          "track3-muon2": dict(lr=0.10, weight_decay=0.0125, momentum=0.95, nesterov=True, ns_coefficients="cubic",
                               ns_steps=12, lr_scaling="original", beta2=0.95, precondition_eps=1e-10),
          "track3-spectral-descent": dict(lr=0.03, weight_decay=0.015, momentum=0.0, nesterov=False,
                                          ns_coefficients="cubic", ns_steps=12, lr_scaling="original")}
# the #12 family's AdamW on the other roles
UNTUNED_AUX = ({"embed": 0.3, "head": 1 / 320, "scalar": 0.01}, dict(betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0))
AUX = {"track3-ema-nesterov-muon": UNTUNED_AUX, "track3-muon2": UNTUNED_AUX, "track3-spectral-descent": UNTUNED_AUX}


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_docstring_states_the_result(name):
    number, steps, loss, n = RESULTS[name]
    entry = registry.lookup("recipe", name)
    match = RESULT.search(entry.factory.__doc__)
    assert match, entry.factory.__doc__
    assert (int(match[1]), int(match[2]), float(match[3]), int(match[4])) == (number, steps, loss, n)
    assert entry.factory()["max_steps"] == steps


@pytest.mark.parametrize("name", sorted(HIDDEN))
def test_recipe_builds_the_published_optimizer(name):
    cfg = resolve(["--preset=track3", f"--optimizer={name}"])
    model = BiasedModel()
    opt = build_optimizer(cfg.optim, model)
    assert opt.ns_dtype == "bf16"
    groups = {g["role"]: g for g in opt.param_groups}
    assert {k: groups["hidden"][k] for k in HIDDEN[name]} == HIDDEN[name]
    lrs, shared = AUX[name]
    for role, lr in lrs.items():
        assert groups[role]["lr"] == lr and {k: groups[role][k] for k in shared} == shared, role
    assert (cfg.max_steps, cfg.schedule_steps, cfg.schedule.cooldown_frac) == SCHEDULES[name]
    assert cfg.schedule.warmup_steps == 0 and cfg.schedule.aux_cooldown_frac is None and cfg.grad_clip == 0.0


def test_ema_nesterov_recipe_wraps_muon_with_the_published_window():
    cfg = resolve(["--preset=track3", "--optimizer=track3-ema-nesterov-muon"])
    assert (cfg.wrapper.lookahead, cfg.wrapper.ema, cfg.wrapper.prefill_steps, cfg.wrapper.rest_steps,
            cfg.wrapper.scheduled, cfg.wrapper.schedule_role) == (0.6, 0.99, 500, 2400, True, "embed")
    model = BiasedModel()
    opt = wrap_optimizer(cfg.wrapper, build_optimizer(cfg.optim, model), model)
    assert isinstance(opt, EmaNesterov) and opt.param_groups[opt.group_index]["role"] == "embed"
    assert [opt.active(it) for it in (499, 500, 2399, 2400)] == [False, True, True, False]


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_the_cpu_preset_scales_the_recipe_s_steps(name):
    cfg = resolve(["--preset=track3-cpu", f"--optimizer={name}"])
    scale = 160 / 3250
    max_steps, schedule_steps, _ = SCHEDULES[name]
    assert (cfg.max_steps, cfg.schedule_steps) == (round(max_steps * scale), round(schedule_steps * scale))
    if cfg.wrapper is not None:
        assert (cfg.wrapper.prefill_steps, cfg.wrapper.rest_steps) == (round(500 * scale), round(2400 * scale))


def test_muon2_recipe_uses_the_published_run_s_init():
    """The log's script: PyTorch's construction init (embedding rounded to bf16), every "proj" parameter zeroed."""
    m = resolve(["--preset=track3", "--optimizer=track3-muon2"]).model
    assert (m.init, m.init_embed_bf16, m.zero_init_proj, m.zero_head, m.zero_init_proj_bias) == (
        "torch", True, True, True, True)
    assert resolve(["--preset=track3", "--optimizer=track3-ema-nesterov-muon"]).model.init == "track3"
