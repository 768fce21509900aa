"""configs.resolve: presets, --key=value and dotted overrides, type checks and clear errors."""

import dataclasses

import pytest
import torch

from configs import PRESETS, resolve
from tests.recipes import register_recipe


def test_presets_resolve():
    for name in PRESETS:
        cfg = resolve([f"--preset={name}"])
        assert cfg.preset == name
    assert resolve([]).preset == "cpu"
    assert resolve(["--preset", "gpt2-124m"]).model.n_embd == 768


def test_overrides_of_every_form():
    cfg = resolve(["--preset=tiny", "--max_steps=7", "--optim.lr=0.02", "--optimizer", "muon",
                   "--model.window=16", "--attention=sdpa", "--compile=True", "--optim.betas=(0.8, 0.9)"])
    assert cfg.max_steps == 7 and cfg.optim.lr == 0.02 and cfg.optim.name == "muon"
    assert cfg.model.window == 16 and cfg.model.attn_impl == "sdpa" and cfg.compile == "fullgraph"
    assert cfg.optim.betas == (0.8, 0.9)
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
    (["--recipe=nope"], "unknown optimizer recipe 'nope'"),
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
    assert (cfg.warmup_steps, cfg.cooldown_frac, cfg.grad_clip) == (0, 0.7, 0.0)
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
        "optim.name": "normuon", "optim.lr": 0.035, "optim.betas": (0.8, 0.95), "max_steps": 3250,
        "schedule_steps": 3300, "warmup_steps": 0, "grad_clip": 0})
    cfg = resolve(["--preset=track3", "--optimizer=test-recipe"])
    assert cfg.recipe == "test-recipe" and cfg.optim.name == "normuon" and cfg.optim.lr == 0.035
    assert cfg.optim.betas == (0.8, 0.95) and (cfg.max_steps, cfg.schedule_steps) == (3250, 3300)
    assert cfg.grad_clip == 0.0 and isinstance(cfg.grad_clip, float)
    mine = resolve(["--preset=track3", "--optim.lr=0.01", "--optimizer", "test-recipe", "--schedule_steps=4000"])
    assert mine.optim.lr == 0.01 and mine.schedule_steps == 4000 and mine.optim.name == "normuon"
    assert resolve(["--preset=tiny", "--recipe=test-recipe", "--max_steps=3"]).optim.name == "normuon"


def test_a_recipes_step_counts_scale_to_the_preset_budget(monkeypatch):
    register_recipe(monkeypatch, "test-recipe", lambda: {"max_steps": 3250, "schedule_steps": 3300,
                                                         "warmup_steps": 250, "val_every": 125})
    cfg = resolve(["--preset=cpu", "--optimizer=test-recipe"])  # the cpu preset's budget: 100 steps
    assert (cfg.max_steps, cfg.schedule_steps, cfg.warmup_steps) == (100, round(3300 / 32.5), round(250 / 32.5))
    assert cfg.val_every == 125  # not a step budget: as written


def test_a_recipe_with_a_wrong_field_or_type_is_refused(monkeypatch):
    register_recipe(monkeypatch, "typo", lambda: {"optim.lrr": 0.1})
    register_recipe(monkeypatch, "badtype", lambda: {"max_steps": "many"})
    with pytest.raises(ValueError, match="unknown option --optim.lrr"):
        resolve(["--optimizer=typo"])
    with pytest.raises(ValueError, match="max_steps"):
        resolve(["--optimizer=badtype"])


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
    assert (cpu.max_steps, cpu.horizon, cpu.warmup_steps) == (160, 160, 0)
    normuon = resolve(["--preset=track3-cpu", "--optimizer=track3-normuon"])
    assert (normuon.max_steps, normuon.horizon) == (160, round(3300 * 160 / 3250))  # still ends early
    adam = resolve(["--preset=track3-cpu", "--optimizer=track3-adam"])
    assert (adam.max_steps, adam.warmup_steps) == (round(5625 * 160 / 3250), round(250 * 160 / 3250))


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
    from configs import resolve_auto

    cfg = resolve_auto(resolve([f"--preset={preset}", *argv]), machine(machine_name))
    return {"attention": cfg.model.attn_impl, "mlp": cfg.model.mlp_impl, "ce": cfg.model.ce_impl,
            "ns": cfg.optim.ns_impl, "compile": cfg.compile, "dtype": cfg.dtype, "ns_dtype": cfg.optim.ns_dtype,
            "device": cfg.device}


def _row(attention, mlp, ce, ns, compile_, dtype, ns_dtype, device):
    return {"attention": attention, "mlp": mlp, "ce": ce, "ns": ns, "compile": compile_, "dtype": dtype,
            "ns_dtype": ns_dtype, "device": device}


# The resolution table. The Triton MLP and loss take track3's biases and algebraic softcap, so track3 resolves as
# gpt2-124m does on CUDA. Its recipe asks for a bf16 Newton-Schulz explicitly (emulated where bf16 is slow).
RESOLUTION_TABLE = [
    ("gpt2-124m", "h100+fa3", _row("fa3", "triton", "triton", "triton", "fullgraph", "bf16", "bf16", "cuda")),
    ("gpt2-124m", "h100", _row("sdpa", "triton", "triton", "triton", "fullgraph", "bf16", "bf16", "cuda")),
    ("gpt2-124m", "a100+fa2", _row("fa2", "triton", "triton", "triton", "fullgraph", "bf16", "bf16", "cuda")),
    ("gpt2-124m", "cpu-amx", _row("sdpa", "eager", "chunked", "eager", "off", "bf16", "bf16", "cpu")),
    ("gpt2-124m", "cpu-avx2", _row("sdpa", "eager", "chunked", "eager", "off", "fp32", "fp32", "cpu")),
    ("track3", "h100+fa3", _row("fa3", "triton", "triton", "triton", "fullgraph", "bf16", "bf16", "cuda")),
    ("track3", "cpu-avx2", _row("sdpa", "eager", "chunked", "eager", "off", "fp32", "bf16", "cpu")),
    ("cpu", "cpu-amx", _row("eager", "eager", "eager", "eager", "off", "bf16", "bf16", "cpu")),
    ("cpu", "cpu-avx2", _row("eager", "eager", "eager", "eager", "off", "fp32", "fp32", "cpu")),
    ("track3-cpu", "cpu-amx", _row("sdpa", "eager", "chunked", "eager", "off", "fp32", "bf16", "cpu")),
    ("tiny", "cpu-avx2", _row("eager", "eager", "eager", "eager", "off", "fp32", "fp32", "cpu")),
]


@pytest.mark.parametrize("preset, machine_name, expected", RESOLUTION_TABLE,
                         ids=[f"{p}-{m}" for p, m, _ in RESOLUTION_TABLE])
def test_auto_resolves_by_device(machine, preset, machine_name, expected):
    assert _resolved(preset, machine_name, machine) == expected


def test_cpu_presets_resolve_to_eager_without_compile_on_this_machine():
    from configs import resolve_auto

    for preset in ("cpu", "track3-cpu", "tiny", "gpt2-124m", "track3"):
        cfg = resolve_auto(resolve([f"--preset={preset}"]), "cpu")
        assert (cfg.model.mlp_impl, cfg.optim.ns_impl, cfg.compile) == ("eager", "eager", "off")
        # The GPU presets' "auto" loss is the chunked PyTorch one on the CPU; the others name eager.
        assert cfg.model.ce_impl == ("eager" if preset in ("cpu", "tiny") else "chunked")
        assert cfg.model.attn_impl in ("eager", "sdpa") and "auto" not in (cfg.dtype, cfg.optim.ns_dtype, cfg.device)


def test_an_explicit_choice_wins_over_auto(machine):
    got = _resolved("gpt2-124m", "h100+fa3", machine, "--model.mlp_impl=eager", "--attention=sdpa",
                    "--compile=False", "--optim.ns_impl=eager", "--dtype=fp32", "--optim.ns_dtype=fp32")
    assert got == _row("sdpa", "eager", "triton", "eager", "off", "fp32", "fp32", "cuda")
    cpu = _resolved("tiny", "cpu-avx2", machine, "--compile=fullgraph", "--model.ce_impl=triton")
    assert (cpu["compile"], cpu["ce"]) == ("fullgraph", "triton")


def test_an_explicit_attention_backend_that_cannot_run_is_refused(machine):
    with pytest.raises(RuntimeError, match="'fa3' is not available"):
        _resolved("gpt2-124m", "h100", machine, "--attention=fa3")
