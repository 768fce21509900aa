"""The hyperball family's recipes: each builds the published optimizer, schedule, wrapper and init on both track-3
presets, and its docstring states its result (tests/optim/test_recipes.py's rule)."""

import dataclasses

import pytest

from model.config import model_preset
from optim import build_optimizer, registry
from optim.adamh import AdamH, MatrixWarmupDecay
from optim.muloco import MuLoCoConfig
from optim.muonh import MuonH
from optim.normuonh import NorMuonH
from speedrun.config import resolve
from tests.model.test_init import INITS
from tests.optim.test_recipes import RESULT
from tests.optim.test_roles import BiasedModel

# recipe -> (result, published steps, mean val loss, n, its folder)
RESULTS = {"track3-adamh": (4, 4875, 3.2741, 5, "20260430_adamh"),
           "track3-muonh": (5, 3325, 3.2782, 10, "20260430_muonh"),
           "track3-muonh-tuned": (37, 3250, 3.2786, 10, "20260611_muonh_tuned_aux_3250"),
           "track3-normuonh": (8, 3250, 3.2778, 10, "20260430_normuonh"),
           "track3-muloco-normuonh": (13, 3210, 3.2785, 10, "20260504_muloco_normuonh")}
OPTIMIZER = {"track3-adamh": AdamH, "track3-muonh": MuonH, "track3-muonh-tuned": MuonH, "track3-normuonh": NorMuonH,
             "track3-muloco-normuonh": NorMuonH}
NEWTON_SCHULZ = dict(momentum=0.95, nesterov=True, ns_coefficients="cubic", ns_steps=12, lr_scaling="original")
HIDDEN = {"track3-adamh": dict(lr=0.018, betas=(0.9, 0.95), eps=1e-8, hyperball_eps=1e-10),
          "track3-muonh": dict(lr=0.018, weight_decay=0.0, hyperball_eps=1e-10, step_dtype="direction",
                               **NEWTON_SCHULZ),
          "track3-muonh-tuned": dict(lr=0.018, weight_decay=0.0, hyperball_eps=1e-10, **NEWTON_SCHULZ),
          "track3-normuonh": dict(lr=0.018, weight_decay=0.0, beta2=0.95, norm_eps=1e-10, axis="longer",
                                  keep_norm=False, hyperball_eps=1e-10, **NEWTON_SCHULZ)}
HIDDEN["track3-muloco-normuonh"] = HIDDEN["track3-normuonh"]
UNTUNED = ({"embed": 0.3, "head": 1 / 320, "scalar": 0.01}, dict(betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0))
AUX = {"track3-adamh": UNTUNED, "track3-muonh": UNTUNED, "track3-normuonh": UNTUNED, "track3-muloco-normuonh": UNTUNED,
       "track3-muonh-tuned": ({"embed": 0.91, "head": 0.0064, "scalar": 0.0195},
                              dict(betas=(0.8, 0.95), eps=1e-10, weight_decay=0.001))}
# max_steps, schedule_steps, cooldown_frac, aux_cooldown_frac, the hidden matrices' warm-up from 0
SCHEDULES = {"track3-adamh": (4875, 0, 1.0, 0.4, 250), "track3-muonh": (3325, 0, 1.0, 0.4, 0),
             "track3-muonh-tuned": (3250, 0, 1.0, 0.85, 0), "track3-normuonh": (3250, 3275, 1.0, 0.4, 0),
             "track3-muloco-normuonh": (3210, 0, 1.0, 0.4, 0)}
# The model's init each recipe runs (the test of the init rules checks these against the scripts' numbers). #5: its
# logs' script (the recipe's choice); the folder's .py is INITS["20260430_muonh"].
INIT_FOLDER = {"track3-muonh": "20260430_muonh.log"}
NORM_FP32 = {"track3-adamh": True, "track3-muonh": True, "track3-muonh-tuned": False, "track3-normuonh": True,
             "track3-muloco-normuonh": True}


def init_fields(model_cfg) -> dict:
    """The init fields of a GPTConfig, zero_init_head as it resolves."""
    fields = {k: v for k, v in dataclasses.asdict(model_cfg).items() if k.startswith(("init", "zero_init"))}
    return {**fields, "zero_init_head": model_cfg.zero_head}


def test_the_recipes_are_registered():
    assert set(RESULTS) <= set(registry.entries("recipe"))


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_docstring_states_the_result_and_its_folder(name):
    number, steps, loss, n, folder = RESULTS[name]
    doc = registry.lookup("recipe", name).factory.__doc__
    match = RESULT.search(doc)
    assert match, doc
    assert (int(match[1]), int(match[2]), float(match[3]), int(match[4])) == (number, steps, loss, n)
    assert f"Source: records/track_3_optimization/results/{folder}/" in doc


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_recipe_builds_the_published_optimizer(name):
    cfg = resolve(["--preset=track3", f"--optimizer={name}"])
    model = BiasedModel()
    opt = build_optimizer(cfg.optim, model)
    assert type(opt) is OPTIMIZER[name]
    if hasattr(opt, "ns_dtype"):
        assert opt.ns_dtype == "bf16"  # as the reference, whatever the CPU (emulated where bf16 is slow)
    groups = {g["role"]: g for g in opt.param_groups}
    assert {k: groups["hidden"][k] for k in HIDDEN[name]} == HIDDEN[name]
    lrs, shared = AUX[name]
    for role, lr in lrs.items():
        assert groups[role]["lr"] == lr and {k: groups[role][k] for k in shared} == shared, role
        assert groups[role]["fused"]  # torch's fused AdamW, as the reference's
    assert groups["scalar"]["params"][-1] is model.lm_head.bias  # the head bias takes the 1-D lr


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_recipe_sets_the_published_schedule_wrapper_and_init(name):
    cfg = resolve(["--preset=track3", f"--optimizer={name}"])
    max_steps, schedule_steps, cooldown, aux_cooldown, warmup = SCHEDULES[name]
    s = cfg.schedule
    assert (cfg.max_steps, cfg.schedule_steps, s.warmup_steps, s.cooldown_frac, s.aux_cooldown_frac, cfg.grad_clip) \
        == (max_steps, schedule_steps, 0, cooldown, aux_cooldown, 0.0)
    assert isinstance(s, MatrixWarmupDecay) == bool(warmup) and getattr(s, "matrix_warmup_steps", 0) == warmup
    assert s.momentum.warmup_steps == s.momentum.cooldown_steps == 0  # a constant momentum
    expected = MuLoCoConfig(outer_lr=0.7, outer_momentum=0.5, sync_interval=30) if "muloco" in name else None
    assert cfg.wrapper == expected
    assert init_fields(cfg.model) == init_fields(model_preset("track3", **INITS[INIT_FOLDER.get(name, RESULTS[name][4])]))
    assert cfg.model.norm_fp32 is NORM_FP32[name]


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_the_cpu_preset_scales_the_recipe_s_steps(name):
    """track3-cpu's budget is 160 steps: every step count a recipe states for 3250 scales by 160/3250."""
    cfg = resolve(["--preset=track3-cpu", f"--optimizer={name}"])
    scale = 160 / 3250
    max_steps, schedule_steps, _, _, warmup = SCHEDULES[name]
    assert (cfg.max_steps, cfg.schedule_steps, getattr(cfg.schedule, "matrix_warmup_steps", 0)) == (
        round(max_steps * scale), round(schedule_steps * scale), round(warmup * scale))
    if cfg.wrapper is not None:
        assert cfg.wrapper.sync_interval == max(1, round(30 * scale))
    assert cfg.model.init == resolve(["--preset=track3", f"--optimizer={name}"]).model.init
