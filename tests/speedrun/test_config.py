"""speedrun.config: presets, --key=value and dotted overrides, parts picked by name, type checks and clear errors,
--config replay and --help."""

import dataclasses
import json

import pytest
import torch

from speedrun.config import PRESETS, from_dict, help_text, resolve, to_dict
from tests.recipes import register_recipe


def test_presets_resolve():
    for name in PRESETS:
        cfg = resolve([f"--preset={name}"])
        assert cfg.preset == name
    assert resolve([]).preset == "cpu"
    assert resolve(["--preset", "gpt2-124m"]).model.n_embd == 768


def test_overrides_of_every_form():
    cfg = resolve(["--preset=tiny", "--max_steps=7", "--optim.lr=0.02", "--optimizer", "muon",
                   "--model.window=16", "--attention=sdpa", "--compile=True", "--optim.aux_betas=(0.8, 0.9)",
                   "--schedule", "power_cool", "--schedule.power=2", "--schedule.momentum.warmup_steps=3"])
    assert cfg.max_steps == 7 and cfg.optim.lr == 0.02 and cfg.optim.name == "muon"
    assert cfg.model.window == 16 and cfg.model.attention_impl == "sdpa" and cfg.compile == "fullgraph"
    assert cfg.optim.aux_betas == (0.8, 0.9)
    assert cfg.schedule.name == "power_cool" and cfg.schedule.power == 2.0 and cfg.schedule.momentum.warmup_steps == 3
    assert resolve(["--optim.lr=1"]).optim.lr == 1.0  # int literal accepted for a float field


@pytest.mark.parametrize("argv, message", [
    (["--nope=1"], "unknown option --nope"),
    (["--optim.nope=1"], "unknown option --optim.nope"),
    (["--max_steps=ten"], "not a Python literal"),
    (["--max_steps=1.5"], "expected int"),
    (["--compile=1"], "compile='1'; choose from auto, fullgraph, off"),
    (["--compile=max-autotune"], "compile='max-autotune'"),
    (["--log_every=0"], "log_every=0 must be >= 1"),
    (["--preset=huge"], "unknown preset"),
    (["--max_steps"], "needs a value"),
    (["max_steps=3"], "unexpected argument"),
    (["--seed.x=1"], "has no sub-options"),
    (["--dtype=fp16"], "dtype='fp16'; choose from auto, bf16, fp32"),
    (["--max_steps=100", "--schedule_steps=50"], "schedule_steps=50 < max_steps=100"),
    (["--val_every=0"], "val_every=0 must be >= 1"),
    (["--recipe=nope"], "unknown recipe 'nope'; recipes: .*track3-muon"),
    (["--optimizer=nope"], r"unknown optimizer or recipe 'nope'; optimizers: (\w+, )*adamw, .*muon.*; recipes: .*"),
    (["--schedule=nope"], r"unknown schedule 'nope'; schedules: (\w+, )*power_cool, stable_decay"),
    (["--wrapper.lookahead=0.3"], "no wrapper is chosen; pick one with --wrapper NAME"),
    (["--optimizer=adamw", "--optim.aux_lr=0.1"], "unknown option --optim.aux_lr; optimizer 'adamw' .* has: "),
    (["--optimizer=/no/such/file.py:opt"], "no such file"),
    (["--preset=tiny", "--config=x.json"], "drop --preset"),
])
def test_bad_overrides_raise(argv, message):
    with pytest.raises(ValueError, match=message):
        resolve(argv)


def test_fields_validated_together_change_together():
    cfg = resolve(["--preset=gpt2-124m", "--model.n_embd=64", "--model.n_head=2"])
    assert cfg.model.head_dim == 32


def test_each_optimizer_starts_from_its_own_lr():
    assert resolve(["--optimizer=muon"]).optim.lr == 0.02
    assert resolve(["--optimizer=muon", "--optim.lr=0.05"]).optim.lr == 0.05
    assert resolve([]).optim.lr == 3e-3


def test_track3_preset_is_the_reference_setup():
    cfg = resolve(["--preset=track3"])
    assert cfg.recipe == "track3-muon" and cfg.optim.name == "muon"
    assert cfg.batch_size * cfg.seq_len * cfg.reference_world_size == 8 * 64 * 1024 and cfg.grad_accum == 1
    assert cfg.val_tokens == 20 * 524288 and cfg.max_steps == cfg.horizon == 3250
    assert (cfg.schedule.name, cfg.schedule.warmup_steps, cfg.schedule.cooldown_frac, cfg.grad_clip) == (
        "stable_decay", 0, 0.7, 0.0)
    assert (cfg.val_every, cfg.val_every_late, cfg.val_late_frac) == (125, 25, 0.9)
    assert not cfg.shuffle_shards and cfg.shard_margin == 1 and not cfg.stop_at_target
    assert (cfg.target_val_loss, cfg.target_sigma) == (3.28, 0.0013)
    m = cfg.model
    assert (m.n_layer, m.n_embd, m.head_dim, m.vocab_size) == (12, 768, 128, 50304)
    assert m.bias and m.norm_gains and m.rope == "half_truncated" and m.attn_scale == 0.12
    assert (m.softcap_kind, m.logit_softcap, m.loss_reduction, m.init) == ("algebraic", 15.0, "sum", "track3")
    assert m.bf16_embedding and not m.value_embeds and not m.unet_skips


def test_a_recipe_applies_over_the_preset_and_explicit_options_win(monkeypatch):
    register_recipe(monkeypatch, "test-recipe", lambda: {
        "optimizer": "normuon", "optim.lr": 0.035, "optim.aux_betas": (0.8, 0.95), "max_steps": 3250,
        "schedule_steps": 3300, "schedule": "stable_decay", "schedule.warmup_steps": 0, "grad_clip": 0})
    cfg = resolve(["--preset=track3", "--optimizer=test-recipe"])
    assert cfg.recipe == "test-recipe" and cfg.optim.name == "normuon" and cfg.optim.lr == 0.035
    assert cfg.optim.aux_betas == (0.8, 0.95) and (cfg.max_steps, cfg.schedule_steps) == (3250, 3300)
    assert cfg.grad_clip == 0.0 and isinstance(cfg.grad_clip, float)
    mine = resolve(["--preset=track3", "--optim.lr=0.01", "--optimizer", "test-recipe", "--schedule_steps=4000"])
    assert mine.optim.lr == 0.01 and mine.schedule_steps == 4000 and mine.optim.name == "normuon"
    assert resolve(["--preset=tiny", "--recipe=test-recipe", "--max_steps=3"]).optim.name == "normuon"


def test_a_recipes_step_counts_scale_to_the_preset_budget(monkeypatch):
    register_recipe(monkeypatch, "test-recipe", lambda: {
        "optimizer": "muon", "max_steps": 3250, "schedule_steps": 3300, "schedule": "power_cool",
        "schedule.end": 2900, "schedule.flat_until": 514.5, "schedule.momentum.warmup_steps": 300, "val_every": 125})
    cfg = resolve(["--preset=cpu", "--optimizer=test-recipe"])  # the cpu preset's budget: 100 steps
    assert (cfg.max_steps, cfg.schedule_steps) == (100, round(3300 / 32.5))
    assert (cfg.schedule.end, cfg.schedule.momentum.warmup_steps) == (round(2900 / 32.5), round(300 / 32.5))
    assert cfg.schedule.flat_until == pytest.approx(514.5 / 32.5)  # a step position, not rounded
    assert cfg.val_every == 125  # not a step count the recipe scales: as written


def test_a_recipe_with_a_wrong_field_or_type_is_refused(monkeypatch):
    register_recipe(monkeypatch, "typo", lambda: {"optimizer": "adamw", "optim.lrr": 0.1})
    register_recipe(monkeypatch, "badtype", lambda: {"optimizer": "adamw", "max_steps": "many"})
    register_recipe(monkeypatch, "nameless", lambda: {"max_steps": 3})
    with pytest.raises(ValueError, match="unknown option --optim.lrr"):
        resolve(["--optimizer=typo"])
    with pytest.raises(ValueError, match="max_steps"):
        resolve(["--optimizer=badtype"])
    with pytest.raises(ValueError, match="recipe 'nameless' .* names no optimizer"):
        resolve(["--optimizer=nameless"])


def test_a_plain_optimizer_keeps_its_meaning_and_replaces_the_presets_recipe():
    cfg = resolve(["--preset=track3", "--optimizer=adamw"])
    assert cfg.recipe == "" and cfg.optim.name == "adamw" and cfg.optim.lr == 3e-3
    assert resolve(["--optimizer=muon"]).recipe == ""


def test_track3_cpu_is_track3_scaled_down():
    cpu, gpu = resolve(["--preset=track3-cpu"]), resolve(["--preset=track3"])
    sizes = ("n_layer", "n_head", "n_embd", "max_seq_len")
    assert dataclasses.replace(cpu.model, **{k: getattr(gpu.model, k) for k in sizes}) == gpu.model
    assert cpu.model.head_dim == 128 and cpu.dtype == "fp32" and cpu.recipe == "track3-muon"
    assert cpu.optim == gpu.optim  # the baseline recipe, as is
    assert (cpu.max_steps, cpu.horizon, cpu.schedule.warmup_steps) == (160, 160, 0)
    normuon = resolve(["--preset=track3-cpu", "--optimizer=track3-normuon"])
    assert (normuon.max_steps, normuon.horizon) == (160, round(3300 * 160 / 3250))  # still ends early
    adam = resolve(["--preset=track3-cpu", "--optimizer=track3-adam"])
    assert (adam.max_steps, adam.schedule.warmup_steps) == (round(5625 * 160 / 3250), round(250 * 160 / 3250))


# --- "auto" resolved from the device (configs.resolve_auto) ----------------------------------------------------

MACHINES = {  # name: (device, native bf16, FlashAttention modules that import, compute capability)
    "h100+fa3": ("cuda", True, ("flash_attn_interface", "flash_attn"), (9, 0)),
    "h100": ("cuda", True, (), (9, 0)),
    "a100+fa2": ("cuda", True, ("flash_attn",), (8, 0)),
    "cpu-amx": ("cpu", True, (), None),
    "cpu-avx2": ("cpu", False, (), None),
}


@pytest.fixture
def machine(monkeypatch):
    """simulate(name) -> the device of a simulated MACHINES[name]: what native_bf16, the FlashAttention imports and
    the compute capability report."""
    from kernels import attention
    from kernels import attention_select as S
    from kernels import device as kernel_device

    def simulate(name):
        device, bf16, modules, capability = MACHINES[name]
        monkeypatch.setattr(kernel_device, "native_bf16", lambda d: bf16)
        monkeypatch.setattr(S, "probe_import", lambda module, needs=(): (object(), None) if module in modules
                            else (None, f"`import {module}` failed"))
        monkeypatch.setattr(S, "cuda_capability", lambda d: capability if torch.device(d).type == "cuda" else None)
        attention.reset_caches()
        return device

    return simulate


def _resolved(preset, machine_name, machine, *argv):
    from speedrun.config import resolve_auto

    cfg = resolve_auto(resolve([f"--preset={preset}", *argv]), machine(machine_name))
    return {"attention": cfg.model.attention_impl, "mlp": cfg.model.relu2_mlp_impl,
            "ce": cfg.model.linear_cross_entropy_impl,
            "ns": getattr(cfg.optim, "newton_schulz_impl", None), "compile": cfg.compile, "dtype": cfg.dtype,
            "ns_dtype": getattr(cfg.optim, "ns_dtype", None),
            "device": cfg.device}


def _row(attention, mlp, ce, ns, compile_, dtype, ns_dtype, device):
    return {"attention": attention, "mlp": mlp, "ce": ce, "ns": ns, "compile": compile_, "dtype": dtype,
            "ns_dtype": ns_dtype, "device": device}


# The resolution table. The Triton MLP and loss take track3's biases and algebraic softcap, so track3 resolves as
# gpt2-124m does on CUDA. Its recipe asks for a bf16 Newton-Schulz explicitly (emulated where bf16 is slow).
RESOLUTION_TABLE = [
    ("gpt2-124m", "h100+fa3", _row("fa3", "triton", "triton", "triton", "fullgraph", "bf16", "bf16", "cuda"), ()),
    ("gpt2-124m", "h100", _row("sdpa", "triton", "triton", "triton", "fullgraph", "bf16", "bf16", "cuda"), ()),
    ("gpt2-124m", "a100+fa2", _row("fa2", "triton", "triton", "triton", "fullgraph", "bf16", "bf16", "cuda"), ()),
    ("gpt2-124m", "cpu-amx", _row("sdpa", "eager", "chunked", "eager", "off", "bf16", "bf16", "cpu"), ()),
    ("gpt2-124m", "cpu-avx2", _row("sdpa", "eager", "chunked", "eager", "off", "fp32", "fp32", "cpu"), ()),
    ("track3", "h100+fa3", _row("fa3", "triton", "triton", "triton", "fullgraph", "bf16", "bf16", "cuda"), ()),
    ("track3", "cpu-avx2", _row("sdpa", "eager", "chunked", "eager", "off", "fp32", "bf16", "cpu"), ()),
    ("cpu", "cpu-amx", _row("eager", "eager", "eager", None, "off", "bf16", None, "cpu"), ()),
    ("cpu", "cpu-avx2", _row("eager", "eager", "eager", None, "off", "fp32", None, "cpu"), ()),
    ("cpu", "cpu-avx2", _row("eager", "eager", "eager", "eager", "off", "fp32", "fp32", "cpu"), ("--optimizer=muon",)),
    ("track3-cpu", "cpu-amx", _row("sdpa", "eager", "chunked", "eager", "off", "fp32", "bf16", "cpu"), ()),
    ("tiny", "cpu-avx2", _row("eager", "eager", "eager", None, "off", "fp32", None, "cpu"), ()),
]


@pytest.mark.parametrize("preset, machine_name, expected, argv", RESOLUTION_TABLE,
                         ids=[f"{p}-{m}" + "".join(a) for p, m, _, a in RESOLUTION_TABLE])
def test_auto_resolves_by_device(machine, preset, machine_name, expected, argv):
    assert _resolved(preset, machine_name, machine, *argv) == expected


def test_cpu_presets_resolve_to_eager_without_compile_on_this_machine():
    from speedrun.config import resolve_auto

    for preset in ("cpu", "track3-cpu", "tiny", "gpt2-124m", "track3"):
        cfg = resolve_auto(resolve([f"--preset={preset}"]), "cpu")
        assert (cfg.model.relu2_mlp_impl, cfg.compile) == ("eager", "off")
        assert getattr(cfg.optim, "newton_schulz_impl", "eager") == "eager"
        # The GPU presets' "auto" loss is the chunked PyTorch one on the CPU; the others name eager.
        assert cfg.model.linear_cross_entropy_impl == ("eager" if preset in ("cpu", "tiny") else "chunked")
        assert cfg.model.attention_impl in ("eager", "sdpa")
        assert "auto" not in (cfg.dtype, getattr(cfg.optim, "ns_dtype", None), cfg.device)


def test_an_explicit_choice_wins_over_auto(machine):
    got = _resolved("gpt2-124m", "h100+fa3", machine, "--model.relu2_mlp_impl=eager", "--attention=sdpa",
                    "--compile=False", "--optim.newton_schulz_impl=eager", "--dtype=fp32", "--optim.ns_dtype=fp32")
    assert got == _row("sdpa", "eager", "triton", "eager", "off", "fp32", "fp32", "cuda")
    cpu = _resolved("tiny", "cpu-avx2", machine, "--compile=fullgraph", "--model.linear_cross_entropy_impl=triton")
    assert (cpu["compile"], cpu["ce"]) == ("fullgraph", "triton")


def test_an_explicit_attention_backend_that_cannot_run_is_refused(machine):
    with pytest.raises(RuntimeError, match="'fa3' is not available"):
        _resolved("gpt2-124m", "h100", machine, "--attention=fa3")


# --- the schema, --help and config.json ----------------------------------------------------------------------


def test_help_documents_every_field_of_every_config_dataclass():
    """Every option --help lists carries its docstring, for the default preset and for a config with each part."""
    from optim import registry

    argvs = [[], ["--preset=track3-cpu"], ["--optimizer=sgd", "--schedule=power_cool"]]
    argvs += [["--preset=track3-cpu", f"--optimizer={name}"] for name in registry.entries("optimizer")]
    argvs += [[f"--{kind}={name}"] for kind in ("wrapper", "readout") for name in registry.entries(kind)]
    for argv in argvs:
        text = help_text(argv)
        options = [line for line in text.splitlines() if line.startswith("  --")]
        assert options, argv
        for line in options:
            assert len(line.split(None, 1)) == 2 or line.rstrip().endswith("*"), (argv, line)  # option, then help
        cfg = resolve(argv)
        for name in (f.name for f in dataclasses.fields(cfg.optim)):
            assert f"--optim.{name}=" in text, (argv, name)


def test_help_shows_the_chosen_preset_s_values():
    text = help_text(["--preset=track3-cpu"])
    assert "--max_steps=160 " in text and "--model.n_layer=4 " in text
    assert "preset track3-cpu, recipe track3-muon" in text
    assert "--optim.lr=0.025 " in text and "--target_val_loss=4.77 " in text


def test_config_json_round_trips_every_preset_and_part():
    from optim import registry

    argvs = [[f"--preset={name}"] for name in PRESETS]
    argvs += [["--preset=track3-cpu", f"--optimizer={name}"] for name in registry.entries("recipe")]
    argvs += [["--schedule=power_cool", "--schedule.aux_flat_until=20.5"]]
    for argv in argvs:
        cfg = resolve(argv)
        data = json.loads(json.dumps(to_dict(cfg)))
        assert data["optim"]["name"] == registry.entry_of(cfg.optim).ref
        assert data["schedule"]["name"] == cfg.schedule.name
        assert from_dict(data) == cfg, argv


def test_config_replays_a_run_and_overrides_apply_on_top(tmp_path):
    cfg = resolve(["--preset=track3-cpu", "--optimizer=track3-normuon", "--optim.lr=0.03", "--seed=7"])
    path = tmp_path / "config.json"
    path.write_text(json.dumps(to_dict(cfg)))
    assert resolve([f"--config={path}"]) == cfg
    again = resolve([f"--config={path}", "--max_steps=100", "--optim.beta2=0.9"])
    assert again == dataclasses.replace(cfg, max_steps=100, optim=dataclasses.replace(cfg.optim, beta2=0.9))
    other = resolve([f"--config={path}", "--optimizer=adamw"])  # a new optimizer starts from its own defaults
    assert other.optim.name == "adamw" and other.optim.lr == 3e-3 and other.seed == 7


@pytest.mark.parametrize("text, message", [
    ("{", "is not JSON"), ('{"max_steps": 3, "nope": 1}', "TrainConfig has no field nope"),
    ('{"optim": {"lr": 0.1}}', "optim in the config must be an object naming its part"),
    ('{"max_steps": "many"}', "expected int")])
def test_a_bad_config_json_is_refused(tmp_path, text, message):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ValueError if "JSON" not in message else Exception, match=message):
        resolve([f"--config={path}"])


def test_a_part_keeps_the_preset_s_values_only_while_it_stays_chosen():
    track3 = resolve(["--preset=track3"])
    assert resolve(["--preset=track3", "--schedule=stable_decay"]).schedule == track3.schedule
    assert resolve(["--preset=gpt2-124m", "--optimizer=muon"]).optim.lr == 0.05  # the preset's Muon
    assert resolve(["--preset=gpt2-124m", "--optimizer=normuon"]).optim.lr == 0.02  # NorMuon's own default
    assert resolve(["--preset=track3", "--schedule=power_cool"]).schedule.power == 1.2
