"""Run configuration: frozen dataclasses, named presets, and `--key=value` overrides checked against them.

    cfg = resolve(["--preset=cpu", "--optim.name=muon", "--optim.lr=0.02"])
    cfg = resolve(["--preset=track3", "--optimizer=track3-normuon"])   # a named recipe (optim/recipes.py)

One config object per run; train.py prints `asdict(cfg)` at start and writes it into the log.
"""

import ast
import dataclasses
import inspect
import math
import re
from dataclasses import dataclass, field

from model.config import GPTConfig, model_preset
from speedrun.cli import ConfigError


def _check(cond: bool, message: str):
    if not cond:
        raise ConfigError(message)


def _positive(value) -> bool:
    """A finite number > 0 (NaN and inf are not)."""
    return math.isfinite(value) and value > 0


def _non_negative(value) -> bool:
    return math.isfinite(value) and value >= 0


DTYPES = ("auto", "bf16", "fp32")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer hyper-parameters; optim.role_table() turns them into one row per parameter role.

    Roles (optim.param_groups): hidden = the 2-D matrices under blocks.; embed; head (the LM head weight);
    scalar = every tensor with fewer than 2 dims (gains, every bias including the head's).
    """

    name: str = "adamw"  # registry name in optim.registry: adamw | sgd | muon | normuon
    lr: float = 3e-3  # hidden matrices; AdamW/SGD: also every other role without its own lr (see DEFAULT_LR)
    adam_lr: float = 3e-3  # Muon/NorMuon: the Adam side's lr (embed, head, scalar) for roles without their own
    embed_lr: float = 0.0  # per-role lr of the embeddings; 0 = the default above (adam_lr or lr)
    head_lr: float = 0.0  # per-role lr of the LM head weight; 0 = the default
    scalar_lr: float = 0.0  # per-role lr of gains and biases; 0 = the default
    weight_decay: float = 0.0  # hidden matrices (decoupled for AdamW/Muon/NorMuon, added to the gradient for SGD)
    adam_weight_decay: float = 0.0  # embed, head and scalar roles (same rule)
    betas: tuple = (0.9, 0.95)  # AdamW on the hidden matrices, and every Adam-side role unless adam_betas is set
    adam_betas: tuple = ()  # embed, head and scalar roles; () = betas
    eps: float = 1e-8
    momentum: float = 0.95  # SGD and Muon momentum
    nesterov: bool = True
    ns_impl: str = "eager"  # kernels.registry impl of "newton_schulz": eager | triton | auto (triton on CUDA)
    ns_coefficients: str = "quintic"  # quintic | polar_express | cubic
    ns_steps: int = 0  # 0 = the coefficient set's own (kernels.reference.NS_DEFAULT_STEPS: 5, 5, 12)
    # Newton-Schulz precision: auto = bf16 where the device multiplies bf16 natively (kernels._common.native_bf16),
    # else fp32; bf16 on a CPU without it runs each matmul as an fp32 matmul of the bf16 operands, rounded
    ns_dtype: str = "auto"  # auto | bf16 | fp32
    normuon_beta2: float = 0.95  # NorMuon: EMA of the per-row (per-column) second moment
    normuon_axis: str = "row"  # NorMuon: row (the NorMuon authors') | longer (modded-nanogpt's; see optim/normuon.py)
    muon_lr_scaling: str = "original"  # original: sqrt(max(1, rows/cols)); match_rms_adamw: 0.2·sqrt(max(rows, cols))

    def __post_init__(self):
        # an lr of 0 would train nothing without a word; the per-role lrs use 0 for "the default"
        for name in ("lr", "adam_lr", "eps"):
            _check(_positive(getattr(self, name)), f"--optim.{name}={getattr(self, name)} must be a number > 0")
        for name in ("embed_lr", "head_lr", "scalar_lr", "weight_decay", "adam_weight_decay"):
            value = getattr(self, name)
            _check(_non_negative(value), f"--optim.{name}={value} must be a number >= 0")
        for name in ("betas", "adam_betas"):
            value = getattr(self, name)
            if name == "adam_betas" and value == ():
                continue
            _check(len(value) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in value),
                   f"--optim.{name}={value} must be two numbers in [0, 1)" + (" or ()" if name == "adam_betas" else ""))
        _check(0 <= self.momentum < 1, f"--optim.momentum={self.momentum} must lie in [0, 1)")
        _check(0 <= self.normuon_beta2 < 1, f"--optim.normuon_beta2={self.normuon_beta2} must lie in [0, 1)")
        _check(self.ns_steps >= 0, f"--optim.ns_steps={self.ns_steps} must be >= 0 (0 = the coefficient set's own)")
        _check(self.ns_dtype in DTYPES, f"--optim.ns_dtype={self.ns_dtype!r}; choose from {', '.join(DTYPES)}")


# An optimizer chosen with --optimizer / --optim.name starts from its own learning rate unless --optim.lr is given.
DEFAULT_LR = {"adamw": 3e-3, "sgd": 0.1, "muon": 0.02, "normuon": 0.02}

# torch.compile of the model and of Muon/NorMuon's per-shape update: fullgraph (one graph each, an error at any
# graph break) | off | auto (fullgraph on CUDA, off elsewhere); True and False are accepted for fullgraph and off
COMPILE_MODES = ("auto", "fullgraph", "off")
_COMPILE_ALIASES = {True: "fullgraph", False: "off", "True": "fullgraph", "False": "off", "true": "fullgraph",
                    "false": "off"}


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "cpu"
    recipe: str = ""  # the optimizer recipe (optim/recipes.py) the run's settings start from; "" = none
    model: GPTConfig = field(default_factory=GPTConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    # data: directories of shards written by `python -m data.prepare`
    data_dir: str = "shards/pydocs"
    train_pattern: str = "*_train_*.bin"
    val_pattern: str = "*_val_*.bin"
    shuffle_shards: bool = True  # permute the train shards by the seed; False: sorted file order (track 3)
    # a window is taken from a shard only if at least shard_margin of its tokens remain after it (track 3: 1,
    # modded-nanogpt's `pos + batch + 1 >= len` switch rule); 0 = whenever the window fits
    shard_margin: int = 0
    # batch: tokens per step = batch_size * seq_len * grad_accum * reference_world_size, on any world size W:
    # each rank runs reference_world_size * grad_accum / W micro-batches of batch_size rows (an error if W does
    # not divide it), so the 8-GPU global batch runs unchanged on 1, 2 or 4 GPUs. reference_world_size=0: the
    # batch grows with W (each rank runs grad_accum micro-batches; tokens per step = ... * W)
    batch_size: int = 8  # rows per micro-batch per rank
    seq_len: int = 256
    grad_accum: int = 1  # micro-batches per rank per step at reference_world_size ranks
    reference_world_size: int = 0  # the world size the global batch is defined for (gpt2-124m: 8); 0 = any
    max_steps: int = 300
    # lr schedule: linear warm-up over warmup_steps, constant, then linear decay to 0 over the last cooldown_frac
    # of the horizon schedule_steps (0 = max_steps; a longer horizon ends the run before the decay finishes)
    schedule_steps: int = 0
    warmup_steps: int = 10
    cooldown_frac: float = 0.4
    grad_clip: float = 1.0  # 0 disables
    # validation: a fixed held-out token set, every val_every steps, every val_every_late steps once
    # step/horizon >= val_late_frac (0 = no late cadence), and at the last step
    val_every: int = 25
    val_every_late: int = 0
    val_late_frac: float = 0.9
    val_tokens: int = 65536
    target_val_loss: float = 0.0  # 0 = no target; the run reports steps/seconds to reach it
    target_sigma: float = 0.0  # run-to-run std of the final val loss the target's significance test assumes
    stop_at_target: bool = True
    # system
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (bf16 where kernels._common.native_bf16(device), else fp32) | bf16 | fp32
    compile: str = "auto"  # auto | fullgraph | off (see COMPILE_MODES); train.py resolves auto from the device
    # the training loss is read (a host sync on a GPU) every log_every steps, and at every validation, checkpoint
    # and the last step; each train record carries the mean loss per token over the steps since the previous one
    log_every: int = 1
    # refuse a CUDA run whose estimated step peak (memory.estimate_step_memory) plus memory.margin_bytes exceeds
    # the GPU's memory, before the model is built
    memory_check: bool = True
    threads: int = 0  # torch.set_num_threads on CPU; 0 leaves torch's default
    # distributed (torchrun): a collective waiting longer than dist_timeout_s for a hung peer fails the run
    # (a dead peer fails it at once on gloo); gradient all-reduce buckets of ~dist_bucket_mb
    dist_timeout_s: float = 300.0
    dist_bucket_mb: float = 25.0
    out_dir: str = "runs"
    run_name: str = ""  # default: <preset>-<optimizer>-s<seed>
    # checkpoints: runs/<name>/checkpoint.pt, written atomically every K steps and at the end (0 = end only)
    checkpoint_every: int = 0
    resume: bool = False  # continue from runs/<name>/checkpoint.pt (same config required)

    def __post_init__(self):
        object.__setattr__(self, "compile", _COMPILE_ALIASES.get(self.compile, self.compile))
        if self.compile not in COMPILE_MODES:
            raise ConfigError(f"compile={self.compile!r}; choose from {', '.join(COMPILE_MODES)} (or True/False)")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype={self.dtype!r}; choose from {', '.join(DTYPES)}")
        _check(self.device in DEVICES, f"--device={self.device!r}; choose from {', '.join(DEVICES)}")
        # every count, each with the smallest value that means something (a negative max_steps looped forever,
        # val_every=0 divided by zero)
        for name, least in (("max_steps", 0), ("schedule_steps", 0), ("warmup_steps", 0), ("batch_size", 1),
                            ("seq_len", 1), ("grad_accum", 1), ("reference_world_size", 0), ("val_every", 1),
                            ("val_every_late", 0), ("val_tokens", 1), ("log_every", 1), ("threads", 0),
                            ("checkpoint_every", 0), ("shard_margin", 0), ("seed", 0)):
            _check(getattr(self, name) >= least, f"--{name}={getattr(self, name)} must be >= {least}")
        for name in ("cooldown_frac", "val_late_frac"):
            _check(0 <= getattr(self, name) <= 1, f"--{name}={getattr(self, name)} must lie in [0, 1]")
        for name in ("grad_clip", "target_val_loss", "target_sigma"):
            _check(_non_negative(getattr(self, name)), f"--{name}={getattr(self, name)} must be a number >= 0 "
                                                      "(0 switches it off)")
        for name in ("dist_timeout_s", "dist_bucket_mb"):
            _check(_positive(getattr(self, name)), f"--{name}={getattr(self, name)} must be a number > 0")
        _check(self.seq_len <= self.model.max_seq_len,
               f"--seq_len={self.seq_len} exceeds --model.max_seq_len={self.model.max_seq_len}")
        _check(self.run_name == "" or (self.run_name not in (".", "..") and "/" not in self.run_name),
               f"--run_name={self.run_name!r} must be a plain folder name (it is created under --out_dir)")
        if self.schedule_steps and self.schedule_steps < self.max_steps:
            raise ConfigError(f"schedule_steps={self.schedule_steps} < max_steps={self.max_steps}: the lr would reach "
                              "0 before the end (schedule_steps=0 uses max_steps)")

    @property
    def horizon(self) -> int:
        """The step count the lr schedule and the late validation cadence are defined over (1 for a 0-step run,
        whose warm-up step still reads the schedule)."""
        return self.schedule_steps or self.max_steps or 1


# The GPU presets' implementation names: resolved by resolve_auto from the device the run is on.
GPU_AUTO = dict(attn_impl="auto", mlp_impl="auto", ce_impl="auto")
# The GPU presets read the loss every 25 steps: a read waits for the GPU to finish every queued kernel, and the GPU
# then idles while the host queues the next step's first kernels. 25 divides both presets' validation cadences
# (125, late 25) and step counts (1750, 3250), so every validation and the last step fall on a log step and every
# record averages 25 steps; a non-finite loss is noticed within 25 steps.
GPU_LOG_EVERY = 25

PRESETS = {
    # The speedrun-feature model at CPU scale: python-docs corpus, minutes on 2 cores.
    # 4 × 256 tokens a step, ~2 s a step on 2 cores (the four 50304-row tables dominate: dense embedding
    # gradients and their Adam updates); the fixed val set is the first 16,384 val tokens.
    # target: the tuned AdamW baseline's final val loss on sorted-order pydocs shards (docs/cpu_preset.md).
    "cpu": dict(model=model_preset("cpu"), data_dir="shards/pydocs", batch_size=4, seq_len=256, max_steps=100,
                val_every=20, val_tokens=16384, warmup_steps=10, target_val_loss=5.8976),
    # The H100 speedrun configuration on FineWeb (torchrun --nproc_per_node=8): 8 × 32 × 2048 = 524,288 tokens
    # a step (on W < 8 GPUs each accumulates 8/W micro-batches); the speedrun's 10,485,760 validation tokens
    # are 20 such steps. Implementations "auto" (GPU_AUTO): the Triton kernels, the best FlashAttention and a
    # fullgraph torch.compile on CUDA, eager PyTorch on the CPU.
    "gpt2-124m": dict(model=model_preset("gpt2-124m", **GPU_AUTO), data_dir="shards/fineweb10B",
                      train_pattern="fineweb_train_*.bin", val_pattern="fineweb_val_*.bin", batch_size=32,
                      seq_len=2048, reference_world_size=8, max_steps=1750, val_every=125, val_tokens=10485760,
                      target_val_loss=3.28, log_every=GPU_LOG_EVERY,
                      optim=OptimConfig(name="muon", lr=0.05, adam_lr=0.008, ns_impl="auto")),
    # modded-nanogpt's optimization track (records/track_3_optimization): steps to val loss 3.28 on FineWeb with
    # the architecture, data order and batch fixed. 8 × 64 × 1024 = 524,288 tokens a step (1, 2 or 4 GPUs
    # accumulate 8/W micro-batches of 64 rows), shards in file order, 20 × 524,288 val tokens; validation every
    # 125 steps, every 25 from 90% of the horizon, and at the end; no clipping; no early stop: the run is scored
    # by its final val loss. σ: the README's run-to-run std for its significance rules. Optimizer: the baseline
    # recipe (result #36, Muon + AdamW, 3250 steps); --optimizer track3-adam | track3-normuon for the others.
    # Implementations "auto" as gpt2-124m's (the Triton MLP and loss take track 3's biases and algebraic softcap).
    "track3": dict(model=model_preset("track3", **GPU_AUTO), recipe="track3-muon", data_dir="shards/fineweb10B",
                   train_pattern="fineweb_train_*.bin", val_pattern="fineweb_val_*.bin", shuffle_shards=False,
                   shard_margin=1, batch_size=64, seq_len=1024, reference_world_size=8, max_steps=3250,
                   warmup_steps=0, cooldown_frac=0.7, grad_clip=0.0, val_every=125, val_every_late=25,
                   val_late_frac=0.9, val_tokens=20 * 524288, target_val_loss=3.28, target_sigma=0.0013,
                   stop_at_target=False, log_every=GPU_LOG_EVERY, optim=OptimConfig(ns_impl="auto")),
    # Track 3 scaled to two CPU cores: the same model family, implementation choices ("auto": eager and sdpa on the
    # CPU) and code path (4 layers of one 128-wide head), python-docs data, 4 × 256 tokens a step for 160 steps,
    # the first 8192 val tokens every 16 steps and every 8 over the last 10%. fp32 is pinned: "auto" would pick
    # bf16 on AVX-512-bf16 CPUs and fp32 elsewhere, two different trajectories (the recipe's bf16 Newton-Schulz is
    # emulated where bf16 is slow). Target and σ from 8 seeds (1000-1007) of the baseline recipe (docs/track3_cpu.md):
    #   python -m bench.speedrun --preset track3-cpu --optimizers track3-muon --seeds 8 --threads=1
    # σ = 0.0304, the std of their final val loss; the target 4.77 is the loss the 8 seeds' mean reaches at step
    # 112 (70% of the budget) by the track's rule: (4.77 - 4.7332)·√8 = 0.104 >= z·σ = 0.0935, not at step 96.
    # Pairwise comparisons at this scale take --loss-per-100-steps 0.62 (measured there), not the track's 0.0045.
    # One run: 88 s wall (160 steps at 395 ms, validation, 6.1 s warm-up with the loss's compilation) on 2 threads of
    # an AVX-512 Xeon forced to AVX2 (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2), quiet; not yet measured on a
    # real AVX2-only CPU.
    "track3-cpu": dict(model=model_preset("track3-cpu", **GPU_AUTO), recipe="track3-muon",
                       data_dir="shards/pydocs", optim=OptimConfig(ns_impl="auto"),
                       shuffle_shards=False, shard_margin=1, batch_size=4, seq_len=256, reference_world_size=1,
                       max_steps=160, warmup_steps=0, cooldown_frac=0.7, grad_clip=0.0, val_every=16,
                       val_every_late=8, val_late_frac=0.9, val_tokens=8192, target_val_loss=4.77, target_sigma=0.0304,
                       stop_at_target=False, dtype="fp32"),
    # Tests: a few seconds on the CPU.
    "tiny": dict(model=model_preset("tiny"), data_dir="shards/pydocs", batch_size=2, seq_len=64, max_steps=3,
                 val_every=2, val_tokens=512, warmup_steps=1),
}


def _parse_value(text, current, name: str):
    """Command-line text (a Python literal, or the text itself for a str field) or a recipe's typed value,
    checked against the field's current value's type."""
    if not isinstance(text, str):
        value = text
    elif isinstance(current, str):
        return text
    else:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            if isinstance(current, bool) and text.lower() in ("true", "false"):
                return text.lower() == "true"
            raise ConfigError(f"--{name}={text}: not a Python literal") from None
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"--{name}={text}: expected True/False")
        return value
    if isinstance(current, float) and isinstance(value, int):
        value = float(value)
    if current is not None and not isinstance(value, type(current)):
        if isinstance(current, tuple) and isinstance(value, list):
            return tuple(value)
        raise ConfigError(f"--{name}={text}: expected {type(current).__name__}, got {type(value).__name__}")
    return value


def _apply(obj, overrides: dict, prefix: str = ""):
    """Apply {field: text or nested dict} with one dataclasses.replace per dataclass, so that fields
    validated together (n_embd and n_head) can change together."""
    names = {f.name for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in overrides.items():
        if key not in names:
            raise ConfigError(f"unknown option --{prefix}{key}; {type(obj).__name__} has: {', '.join(sorted(names))}")
        current = getattr(obj, key)
        if isinstance(value, dict):
            if not dataclasses.is_dataclass(current):
                raise ConfigError(f"--{prefix}{key}: {key} has no sub-options")
            changes[key] = _apply(current, value, f"{prefix}{key}.")
        else:
            changes[key] = _parse_value(value, current, prefix + key)
    return dataclasses.replace(obj, **changes)


def recipes() -> dict:
    """Named optimizer recipes: optim.recipes.RECIPES, name -> function returning dotted TrainConfig overrides."""
    from optim.recipes import RECIPES  # here: the optim package imports the kernels

    return RECIPES


# Recipes state their step counts (max_steps, schedule_steps, warmup_steps) for track 3's 3250-step baseline;
# a preset with another budget scales them by its max_steps / 3250 (track3-cpu keeps NorMuon's early end).
RECIPE_STEP_KEYS = ("max_steps", "schedule_steps", "warmup_steps")
RECIPE_REFERENCE_STEPS = 3250


def recipe_overrides(name: str, preset: str) -> dict:
    """The recipe's dotted overrides {key: value}, step counts scaled to the preset's budget."""
    available = recipes()
    if name not in available:
        raise ConfigError(f"unknown optimizer recipe {name!r}; optim/recipes.py has: {', '.join(sorted(available))}")
    overrides = dict(available[name]())
    scale = PRESETS[preset].get("max_steps", TrainConfig.max_steps) / RECIPE_REFERENCE_STEPS
    for key in RECIPE_STEP_KEYS:
        if key not in overrides:
            continue
        if isinstance(overrides[key], bool) or not isinstance(overrides[key], int):
            raise ConfigError(f"recipe {name!r}: {key} must be an int, got {overrides[key]!r}")
        overrides[key] = round(overrides[key] * scale)
    return overrides


def _nest(overrides: dict, key: str, value):
    """Set overrides[a][b][c] = value for key "a.b.c"."""
    *parents, leaf = key.split(".")
    node = overrides
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--{key}: {part} is given both a value and sub-options")
    if isinstance(node.get(leaf), dict):
        raise ConfigError(f"--{key}: {leaf} is given both a value and sub-options")
    node[leaf] = value


def resolve(argv: list[str]) -> TrainConfig:
    """Preset (from --preset=NAME, default cpu) + optimizer recipe + overrides `--key=value` / `--group.key=value`.

    `--key value` is accepted too; `--attention NAME` is short for `--model.attn_impl`. `--optimizer NAME`
    selects a recipe when NAME is one (optim/recipes.py: its overrides apply over the preset, and explicit
    options over both), else it is short for `--optim.name` (starting from that optimizer's DEFAULT_LR unless
    --optim.lr is given) and replaces the preset's recipe. `--recipe NAME` accepts recipes only.
    """
    aliases = {"attention": "model.attn_impl"}
    pairs, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; options look like --key=value")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
        else:
            if i + 1 >= len(argv):
                raise ConfigError(f"{arg} needs a value")
            key, value = arg[2:], argv[i + 1]
            i += 1
        pairs.append((aliases.get(key, key), value))
        i += 1
    preset = dict(pairs).get("preset", "cpu")
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    recipe, user = PRESETS[preset].get("recipe", ""), {}
    for key, value in pairs:
        if key == "preset":
            continue
        if key in ("optimizer", "recipe"):
            if key == "recipe" or value in recipes():
                recipe = value
                continue
            recipe, key = "", "optim.name"  # a plain optimizer replaces the preset's recipe
        _nest(user, key, value)
    optim = user.get("optim", {})
    if isinstance(optim, dict) and "name" in optim and "lr" not in optim and optim["name"] in DEFAULT_LR:
        optim["lr"] = repr(DEFAULT_LR[optim["name"]])
    overrides = {"recipe": recipe}
    if recipe:
        for key, value in recipe_overrides(recipe, preset).items():
            _nest(overrides, key, value)
    _merge(overrides, user)
    cfg = _apply(TrainConfig(preset=preset, **PRESETS[preset]), overrides)
    check_names(cfg)
    return cfg


def check_names(cfg: TrainConfig):
    """Every implementation, optimizer and option name in `cfg` exists (the ranges are checked by the dataclasses
    themselves; the names live in the registries, which import torch, so they are checked here)."""
    import optim
    from kernels import attention_select, reference, registry
    from optim import muon, normuon

    def choose(option: str, value, allowed):
        _check(value in allowed, f"--{option}={value!r}; choose from {', '.join(map(str, allowed))}")

    m, o = cfg.model, cfg.optim
    choose("model.attn_impl", m.attn_impl, (*attention_select.BACKENDS, "auto"))
    choose("model.mlp_impl", m.mlp_impl, (*registry.names("relu2_mlp"), "auto"))
    choose("model.ce_impl", m.ce_impl, (*registry.names("linear_cross_entropy"), "auto"))
    choose("optim.ns_impl", o.ns_impl, (*registry.names("newton_schulz"), "auto"))
    choose("optim.name", o.name, sorted(optim.OPTIMIZERS))
    choose("optim.ns_coefficients", o.ns_coefficients, tuple(reference.NS_DEFAULT_STEPS))
    choose("optim.normuon_axis", o.normuon_axis, normuon.AXES)
    choose("optim.muon_lr_scaling", o.muon_lr_scaling, muon.LR_SCALINGS)


def _merge(base: dict, top: dict):
    """Nested dict update: top's values win; a value against sub-options is an error."""
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        elif key in base and isinstance(value, dict) != isinstance(base[key], dict):
            raise ConfigError(f"--{key} is given both a value and sub-options")
        else:
            base[key] = value


def device_type(device: str) -> str:
    """The device type a run with --device=`device` uses: "auto" is CUDA when torch sees a GPU, else the CPU."""
    import torch

    if device != "auto":
        return torch.device(device).type
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_auto(cfg: TrainConfig, device, *, bf16_native: bool | None = None) -> TrainConfig:
    """The config a run on `device` executes: every "auto" replaced by that device's choice, explicit values kept.

        field                           "auto" on CUDA                         "auto" elsewhere (the CPU)
        device                          the device's type
        dtype                           bf16 where bf16 matmuls are native (kernels._common.native_bf16), else fp32
        model.attn_impl                 fa3 > fa2 > sdpa, the best that runs   sdpa
        model.mlp_impl                  triton                                 eager
        model.ce_impl                   triton                                 chunked (one compiled pass per row)
        optim.ns_impl                   triton                                 eager
        optim.ns_dtype                  as dtype (optim.muon.resolve_ns_dtype's rule)
        compile                         fullgraph                              off

    The attention choice is kernels.attention_select.select_backend's, for the run's compute dtype and head dim;
    an explicit backend that cannot run on `device` raises there. An explicit triton MLP, loss or Newton-Schulz off
    CUDA needs Triton's interpreter (TRITON_INTERPRET=1, kernels._common.is_interpreter): without it, or where the
    interpreter cannot run (interpreter_unavailable_reason), it is a ConfigError here, before anything is built.
    bf16_native replaces the native_bf16 probe (memory.py estimates a CUDA step on a machine without a GPU).
    """
    import torch

    from kernels import _common, attention_select

    device = torch.device(device)
    cuda = device.type == "cuda"
    native = _common.native_bf16(device) if bf16_native is None else bf16_native

    def precision(name: str) -> str:
        return ("bf16" if native else "fp32") if name == "auto" else name

    def kernel(name: str, cpu: str = "eager") -> str:
        return ("triton" if cuda else cpu) if name == "auto" else name

    dtype = precision(cfg.dtype)
    compute = torch.bfloat16 if dtype == "bf16" else torch.float32
    try:
        attention = attention_select.select_backend(cfg.model.attn_impl, device, compute, cfg.model.head_dim)
    except (TypeError, ValueError) as e:  # an explicit backend that does not take this dtype or head dim
        raise ConfigError(f"--model.attn_impl: {e}") from e
    model = dataclasses.replace(cfg.model, attn_impl=attention, mlp_impl=kernel(cfg.model.mlp_impl),
                                ce_impl=kernel(cfg.model.ce_impl, cpu="chunked"))
    optim = dataclasses.replace(cfg.optim, ns_impl=kernel(cfg.optim.ns_impl), ns_dtype=precision(cfg.optim.ns_dtype))
    if not cuda:
        for option, impl in (("model.mlp_impl", model.mlp_impl), ("model.ce_impl", model.ce_impl),
                             ("optim.ns_impl", optim.ns_impl)):
            if impl == "triton":
                why = (_common.interpreter_unavailable_reason() if _common.is_interpreter() else
                       "Triton kernels run on CUDA GPUs, or on the CPU under Triton's interpreter, slowly, with "
                       "TRITON_INTERPRET=1 set before the command")
                if why:
                    raise ConfigError(f"--{option}=triton cannot run on {device.type}: {why}; use "
                                      f"--{option}=auto (the device's choice) or eager")
    compile_mode = ("fullgraph" if cuda else "off") if cfg.compile == "auto" else cfg.compile
    return dataclasses.replace(cfg, device=device.type, dtype=dtype, model=model, optim=optim, compile=compile_mode)



def _field_comments(cls) -> dict:
    """{field: its end-of-line comment} from the dataclass's source: the help text is the documentation."""
    comments = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s{4}(\w+): [^=]+=.*?  # (.*)$", line)
        if m:
            comments[m.group(1)] = m.group(2)
    return comments


def help_text() -> str:
    """`python train.py --help`: every option, dotted, with the default preset's value and its comment."""
    cfg = resolve([])
    lines = [
        "usage: python train.py [--key=value | --key value ...] [--debug]",
        "",
        "Options override the preset's values (--preset=NAME first; values are Python literals, text for str",
        "options). --optimizer NAME takes an optimizer recipe (optim/recipes.py) or an optimizer name;",
        "--attention NAME is short for --model.attn_impl. --debug (or SPEEDRUN_DEBUG=1) shows tracebacks.",
        f"Presets: {', '.join(PRESETS)}. Recipes: {', '.join(sorted(recipes()))}.",
        "",
        f"Options and their values in the default preset ({cfg.preset}):",
    ]

    def walk(obj, prefix):
        comments = _field_comments(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
                continue
            entry = f"  --{prefix}{f.name}={value if isinstance(value, str) else repr(value)}"
            comment = comments.get(f.name)
            lines.append(f"{entry:<44} {comment}" if comment else entry)

    walk(cfg, "")
    return "\n".join(lines)
