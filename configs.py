"""Run configuration: frozen dataclasses, named presets, and `--key=value` overrides checked against them.

    cfg = resolve(["--preset=cpu", "--optim.name=muon", "--optim.lr=0.02"])

One config object per run; train.py prints `asdict(cfg)` at start and writes it into the log.
"""

import ast
import dataclasses
from dataclasses import dataclass, field

from model.config import GPTConfig, model_preset


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
    ns_impl: str = "eager"  # kernels.registry impl of "newton_schulz": eager | triton
    ns_coefficients: str = "quintic"  # quintic | polar_express | cubic
    ns_steps: int = 0  # 0 = the coefficient set's own (kernels.reference.NS_DEFAULT_STEPS: 5, 5, 12)
    # Newton-Schulz precision: auto = bf16 where the device multiplies bf16 natively (kernels._common.native_bf16),
    # else fp32; bf16 on a CPU without it runs each matmul as an fp32 matmul of the bf16 operands, rounded
    ns_dtype: str = "auto"  # auto | bf16 | fp32
    normuon_beta2: float = 0.95  # NorMuon: EMA of the per-row (per-column) second moment
    normuon_axis: str = "row"  # NorMuon: row (the NorMuon authors') | longer (modded-nanogpt's; see optim/normuon.py)
    muon_lr_scaling: str = "original"  # original: sqrt(max(1, rows/cols)); match_rms_adamw: 0.2·sqrt(max(rows, cols))


# An optimizer chosen with --optimizer / --optim.name starts from its own learning rate unless --optim.lr is given.
DEFAULT_LR = {"adamw": 3e-3, "sgd": 0.1, "muon": 0.02, "normuon": 0.02}


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "cpu"
    model: GPTConfig = field(default_factory=GPTConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    # data: directories of shards written by `python -m data.prepare`
    data_dir: str = "shards/pydocs"
    train_pattern: str = "*_train_*.bin"
    val_pattern: str = "*_val_*.bin"
    # batch: tokens per step = batch_size * seq_len * grad_accum * reference_world_size, on any world size W:
    # each rank runs reference_world_size * grad_accum / W micro-batches of batch_size rows (an error if W does
    # not divide it), so the 8-GPU global batch runs unchanged on 1, 2 or 4 GPUs. reference_world_size=0: the
    # batch grows with W (each rank runs grad_accum micro-batches; tokens per step = ... * W)
    batch_size: int = 8  # rows per micro-batch per rank
    seq_len: int = 256
    grad_accum: int = 1  # micro-batches per rank per step at reference_world_size ranks
    reference_world_size: int = 0  # the world size the global batch is defined for (gpt2-124m: 8); 0 = any
    max_steps: int = 300
    warmup_steps: int = 10
    cooldown_frac: float = 0.4  # linear decay to 0 over the last fraction of steps (trapezoidal schedule)
    grad_clip: float = 1.0  # 0 disables
    # validation: a fixed held-out token set, every val_every steps and at the end
    val_every: int = 25
    val_tokens: int = 65536
    target_val_loss: float = 0.0  # 0 = no target; the run reports steps/seconds to reach it
    stop_at_target: bool = True
    # system
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda
    autocast: bool = True  # bf16 autocast for matmuls
    compile: bool = False
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


PRESETS = {
    # The CPU track: python-docs corpus, a model small enough for minutes on 2 cores.
    # 4 × 256 tokens a step, ~2 s a step on 2 cores (the four 50304-row tables dominate: dense embedding
    # gradients and their Adam updates); the fixed val set is the first 16,384 val tokens.
    # target: the tuned AdamW baseline's final val loss (README, "CPU-track record").
    "cpu": dict(model=model_preset("cpu"), data_dir="shards/pydocs", batch_size=4, seq_len=256, max_steps=100,
                val_every=20, val_tokens=16384, warmup_steps=10, target_val_loss=5.8976),
    # The H100 speedrun configuration on FineWeb (torchrun --nproc_per_node=8): 8 × 32 × 2048 = 524,288 tokens
    # a step (on W < 8 GPUs each accumulates 8/W micro-batches); the speedrun's 10,485,760 validation tokens
    # are 20 such steps.
    "gpt2-124m": dict(model=model_preset("gpt2-124m"), data_dir="shards/fineweb10B",
                      train_pattern="fineweb_train_*.bin", val_pattern="fineweb_val_*.bin", batch_size=32,
                      seq_len=2048, reference_world_size=8, max_steps=1750, val_every=125, val_tokens=10485760,
                      target_val_loss=3.28, compile=True, optim=OptimConfig(name="muon", lr=0.05, adam_lr=0.008)),
    # Tests: a few seconds on the CPU.
    "tiny": dict(model=model_preset("tiny"), data_dir="shards/pydocs", batch_size=2, seq_len=64, max_steps=3,
                 val_every=2, val_tokens=512, warmup_steps=1),
}


def _parse_value(text: str, current, name: str):
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if isinstance(current, bool) and text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise ValueError(f"--{name}={text}: not a Python literal") from None
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ValueError(f"--{name}={text}: expected True/False")
        return value
    if isinstance(current, float) and isinstance(value, int):
        value = float(value)
    if current is not None and not isinstance(value, type(current)):
        if isinstance(current, tuple) and isinstance(value, list):
            return tuple(value)
        raise ValueError(f"--{name}={text}: expected {type(current).__name__}, got {type(value).__name__}")
    return value


def _apply(obj, overrides: dict, prefix: str = ""):
    """Apply {field: text or nested dict} with one dataclasses.replace per dataclass, so that fields
    validated together (n_embd and n_head) can change together."""
    names = {f.name for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in overrides.items():
        if key not in names:
            raise ValueError(f"unknown option --{prefix}{key}; {type(obj).__name__} has: {', '.join(sorted(names))}")
        current = getattr(obj, key)
        if isinstance(value, dict):
            if not dataclasses.is_dataclass(current):
                raise ValueError(f"--{prefix}{key}: {key} has no sub-options")
            changes[key] = _apply(current, value, f"{prefix}{key}.")
        else:
            changes[key] = _parse_value(value, current, prefix + key)
    return dataclasses.replace(obj, **changes)


def resolve(argv: list[str]) -> TrainConfig:
    """Preset (from --preset=NAME, default cpu) + overrides `--key=value` / `--group.key=value`.

    `--key value` is accepted too; `--optimizer NAME` and `--attention NAME` are short for
    `--optim.name` and `--model.attn_impl`.
    """
    aliases = {"optimizer": "optim.name", "attention": "model.attn_impl"}
    pairs, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}; options look like --key=value")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
        else:
            if i + 1 >= len(argv):
                raise ValueError(f"{arg} needs a value")
            key, value = arg[2:], argv[i + 1]
            i += 1
        pairs.append((aliases.get(key, key), value))
        i += 1
    preset = dict(pairs).get("preset", "cpu")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    overrides = {}
    for key, value in pairs:
        if key == "preset":
            continue
        *parents, leaf = key.split(".")
        node = overrides
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--{key}: {part} is given both a value and sub-options")
        node[leaf] = value
    optim = overrides.get("optim", {})
    if isinstance(optim, dict) and "name" in optim and "lr" not in optim and optim["name"] in DEFAULT_LR:
        optim["lr"] = repr(DEFAULT_LR[optim["name"]])
    return _apply(TrainConfig(preset=preset, **PRESETS[preset]), overrides)
