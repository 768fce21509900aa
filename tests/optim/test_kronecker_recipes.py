"""The Kronecker-factored recipes: track3-shampoo (#21) and track3-soaph (#27) build the published optimizer, schedule
and init on both track-3 presets, their docstrings state their results (tests/optim/test_recipes.py's rule), and each
trains end to end through train.py."""

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data.shards import write_shard
from model.config import model_preset
from optim import build_optimizer, registry
from optim.shampoo import Shampoo
from optim.soap import SOAP, MatrixPowerDecay
from speedrun.config import resolve, resolve_auto
from tests.model.test_init import INITS
from tests.optim.test_recipes import RESULT
from tests.optim.test_roles import BiasedModel

# recipe -> (result, published steps, mean val loss, n, its folder)
RESULTS = {"track3-shampoo": (21, 4100, 3.2776, 4, "20260513_shampoo_1_4_power"),
           "track3-soaph": (27, 3125, 3.2782, 6, "20260518_soaph")}
OPTIMIZER = {"track3-shampoo": Shampoo, "track3-soaph": SOAP}
HIDDEN = {"track3-shampoo": dict(lr=0.0015, betas=(0.9, 0.95), epsilon=1e-12, exponent=0.25, weight_decay=0.2,
                                 precondition_frequency=5, start_preconditioning_step=5, bias_correction=True,
                                 grafting="adam", grafting_beta2=0.95, grafting_eps=1e-10, eigh_dtype="fp32"),
          "track3-soaph": dict(lr=0.018, momentum=0.95, beta2=0.9, eps=1e-8, precondition_frequency=1,
                               bias_correction=False, hyperball=True, hyperball_eps=1e-10, weight_decay=0.0,
                               eigh_dtype="fp32")}
AUX = ({"embed": 0.3, "head": 1 / 320, "scalar": 0.01}, dict(betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0))
# max_steps, schedule_steps (0: max_steps), cooldown_frac, aux_cooldown_frac; SOAPH's hidden matrices: horizon, power
SCHEDULES = {"track3-shampoo": (4100, 4150, 0.7, None), "track3-soaph": (3125, 0, 1.0, 0.4)}


def init_fields(model_cfg) -> dict:
    fields = {k: v for k, v in dataclasses.asdict(model_cfg).items() if k.startswith(("init", "zero_init"))}
    return {**fields, "zero_init_head": model_cfg.zero_head}


def test_the_recipes_are_registered():
    assert set(RESULTS) <= set(registry.entries("recipe"))
    assert {"shampoo", "soap"} <= set(registry.entries("optimizer"))
    assert "matrix_power_decay" in registry.entries("schedule")


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_docstring_states_the_result_and_its_folder(name):
    number, steps, loss, n, folder = RESULTS[name]
    entry = registry.lookup("recipe", name)
    match = RESULT.search(entry.factory.__doc__)
    assert match, entry.factory.__doc__
    assert (int(match[1]), int(match[2]), float(match[3]), int(match[4])) == (number, steps, loss, n)
    assert f"Source: records/track_3_optimization/results/{folder}/" in entry.factory.__doc__
    assert entry.factory()["max_steps"] == steps


@pytest.mark.parametrize("preset", ["track3", "track3-cpu"])
@pytest.mark.parametrize("name", sorted(RESULTS))
def test_recipe_builds_the_published_optimizer(name, preset):
    cfg = resolve_auto(resolve([f"--preset={preset}", f"--optimizer={name}"]), "cpu")
    assert cfg.optim.gram_impl == "eager"  # auto on the CPU
    model = BiasedModel()
    opt = build_optimizer(cfg.optim, model)
    assert type(opt) is OPTIMIZER[name]
    groups = {g["role"]: g for g in opt.param_groups}
    assert {k: groups["hidden"][k] for k in HIDDEN[name]} == HIDDEN[name]
    lrs, shared = AUX
    for role, lr in lrs.items():
        assert groups[role]["lr"] == lr and {k: groups[role][k] for k in shared} == shared, role
        assert groups[role]["fused"]  # torch's fused AdamW, as the reference's
    assert groups["scalar"]["params"][-1] is model.lm_head.bias  # the head bias takes the 1-D lr


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_recipe_sets_the_published_schedule_and_init(name):
    cfg = resolve(["--preset=track3", f"--optimizer={name}"])
    max_steps, schedule_steps, cooldown, aux_cooldown = SCHEDULES[name]
    s = cfg.schedule
    assert (cfg.max_steps, cfg.schedule_steps, s.warmup_steps, s.cooldown_frac, s.aux_cooldown_frac, cfg.grad_clip) \
        == (max_steps, schedule_steps, 0, cooldown, aux_cooldown, 0.0)
    assert s.momentum.warmup_steps == s.momentum.cooldown_steps == 0
    if name == "track3-soaph":
        assert isinstance(s, MatrixPowerDecay) and (s.matrix_horizon, s.matrix_power, s.matrix_floor) == (3200, 1.25, 0)
        # the script's init: PyTorch's construction init and the hyperball's edits (the golden's fp32 embedding aside)
        expected = init_fields(model_preset("track3", **{**INITS[RESULTS[name][4]], "init_embed_bf16": True}))
        assert init_fields(cfg.model) == expected
    else:
        assert init_fields(cfg.model) == init_fields(model_preset("track3"))  # the baseline's rule


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_the_cpu_preset_scales_the_recipe_s_steps(name):
    """track3-cpu's budget is 160 steps: every step count a recipe states for 3250 scales by 160/3250; the cadence of
    Shampoo's roots (every 5 steps) is not a budget and stays."""
    cfg = resolve(["--preset=track3-cpu", f"--optimizer={name}"])
    scale = 160 / 3250
    max_steps, schedule_steps, _, _ = SCHEDULES[name]
    assert (cfg.max_steps, cfg.schedule_steps) == (round(max_steps * scale), round(schedule_steps * scale))
    if name == "track3-soaph":
        assert cfg.schedule.matrix_horizon == round(3200 * scale) > cfg.max_steps
    else:
        assert cfg.optim.precondition_frequency == 5


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_train_py_runs_the_recipe_on_the_cpu_preset(name, tmp_path):
    """`python train.py --preset track3-cpu --optimizer NAME` for 3 steps over small shards: a finite loss."""
    rng = np.random.default_rng(0)
    write_shard(tmp_path / "t_train_000000.bin", rng.integers(0, 50257, 20000).astype(np.uint16))
    write_shard(tmp_path / "t_val_000000.bin", rng.integers(0, 50257, 20000).astype(np.uint16))
    out = subprocess.run([sys.executable, "train.py", "--preset=track3-cpu", f"--optimizer={name}", "--max_steps=3",
                          f"--data_dir={tmp_path}", "--train_pattern=t_train_*.bin", "--val_pattern=t_val_*.bin",
                          "--val_tokens=1024", f"--out_dir={tmp_path / 'runs'}", "--threads=1"],
                         cwd=Path(__file__).parents[2], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(next((tmp_path / "runs").glob("*/summary.json")).read_text())
    log = [json.loads(line) for line in next((tmp_path / "runs").glob("*/log.jsonl")).open()]
    losses = [r["train_loss"] for r in log if "train_loss" in r]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses), summary
    assert "gram eager" in out.stdout
