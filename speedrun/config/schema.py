"""TrainConfig: everything a run is, as one frozen dataclass with a docstring under every field (that docstring is
what `train.py --help` prints). The model is model.config.GPTConfig; the optimizer, schedule, wrapper and readout
are parts of optim.registry, each its own dataclass, chosen by name (--optimizer, --schedule, --wrapper,
--readout)."""

import math
from dataclasses import dataclass, field
from typing import Any

from model.config import GPTConfig
from optim.adamw import AdamWConfig
from optim.registry import Steps, require
from optim.schedules import StableDecay
from speedrun.cli import ConfigError

DTYPES = ("auto", "bf16", "fp32")
DEVICES = ("auto", "cpu", "cuda")
# torch.compile of the model and of Muon/NorMuon's per-shape update: fullgraph (one graph each, an error at any
# graph break) | off | auto (fullgraph on CUDA, off elsewhere); True and False are accepted for fullgraph and off
COMPILE_MODES = ("auto", "fullgraph", "off")
_COMPILE_ALIASES = {True: "fullgraph", False: "off", "True": "fullgraph", "False": "off", "true": "fullgraph",
                    "false": "off"}
# Track 3's significance rule (records/track_3_optimization/README.md): z·σ = 0.004 with σ = 0.0013 (3.077σ; the
# README writes 3.09σ, p < .001), and 100 steps of its baseline are worth 0.0045 of val loss.
TRACK3_Z = 0.004 / 0.0013
TRACK3_LOSS_PER_100_STEPS = 0.0045


def _finite(value, least: float, strict: bool) -> bool:
    return math.isfinite(value) and (value > least if strict else value >= least)


@dataclass(frozen=True)
class TrainConfig:
    """One run: the model, the optimizer and its schedule, the data, the batch, validation and the system."""

    preset: str = "cpu"
    """The preset the run starts from (speedrun.config.presets); every option below overrides it."""
    recipe: str = ""
    """The optimizer recipe the settings start from (set by --optimizer RECIPE or the preset; "" = none)."""
    model: GPTConfig = field(default_factory=GPTConfig)
    """The model (model.config.GPTConfig)."""
    optim: Any = field(default_factory=AdamWConfig)
    """The optimizer's hyper-parameters: --optimizer NAME picks the optimizer (or a recipe, or FILE.py:NAME)."""
    schedule: Any = field(default_factory=lambda: StableDecay(warmup_steps=10, cooldown_frac=0.4))
    """The lr and momentum schedule (optim.schedules): --schedule NAME picks it."""
    wrapper: Any = None
    """An optimizer wrapper (optim.wrappers): --wrapper NAME picks one; None = the optimizer alone."""
    readout: Any = None
    """Which weights validation reads (optim.readouts): --readout NAME picks one; None = the trained weights."""
    data_dir: str = "shards/pydocs"
    """The directory of shards written by `python -m data.prepare`."""
    train_pattern: str = "*_train_*.bin"
    """Glob of the train shards in data_dir."""
    val_pattern: str = "*_val_*.bin"
    """Glob of the val shards in data_dir."""
    shuffle_shards: bool = True
    """Permute the train shards by the seed; False: sorted file order (track 3)."""
    shard_margin: int = 0
    """A window is taken from a shard only if at least this many of its tokens remain after it (track 3: 1,
    modded-nanogpt's `pos + batch + 1 >= len` switch rule); 0 = whenever the window fits."""
    batch_size: int = 8
    """Rows per micro-batch per rank. Tokens per step = batch_size·seq_len·grad_accum·reference_world_size."""
    seq_len: int = 256
    """Tokens per row."""
    grad_accum: int = 1
    """Micro-batches per rank per step at reference_world_size ranks."""
    reference_world_size: int = 0
    """The world size the global batch is defined for (track 3 and gpt2-124m: 8): on W ranks each runs
    reference_world_size·grad_accum/W micro-batches (an error if W does not divide it); 0 = the batch grows with W."""
    max_steps: Steps = 300
    """Optimizer steps the run takes."""
    schedule_steps: Steps = 0
    """The horizon the schedule and the late validation cadence are defined over; 0 = max_steps. A longer horizon
    ends the run before the schedule does ("end N steps early")."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables."""
    val_every: int = 25
    """Validate every this many steps (and at the last step)."""
    val_every_late: int = 0
    """Validate every this many steps once step/horizon >= val_late_frac; 0 = no late cadence."""
    val_late_frac: float = 0.9
    """Where the late validation cadence starts, as a fraction of the horizon."""
    val_tokens: int = 65536
    """Tokens of the fixed held-out val set (the first val_tokens of the val shards)."""
    val_slice_tokens: int = 0
    """Also log, at every validation, the val loss of each consecutive slice of this many tokens of the val set
    (`val_slices` in the record): the same weights on disjoint val samples, for the noise study (bench.noise).
    val_loss is unchanged; 0 = none. Must divide val_tokens into whole validation steps."""
    target_val_loss: float = 0.0
    """The val loss a run is scored against (steps and seconds to reach it); 0 = no target."""
    target_sigma: float = 0.0
    """Run-to-run std of the final val loss that the target's significance test assumes (0 = unknown)."""
    target_z: float = TRACK3_Z
    """z of the significance tests: n runs reach the target when (target - mean)·√n >= target_z·target_sigma."""
    loss_per_100_steps: float = TRACK3_LOSS_PER_100_STEPS
    """Val loss that 100 more steps of the baseline buy: converts steps into loss in pairwise comparisons."""
    stop_at_target: bool = True
    """End the run at the first validation that reaches the target (track 3: False, every run trains its budget)."""
    seed: int = 1337
    """Seeds the init, the shard order and everything random."""
    data_offset: int = 0
    """Start the train stream this many steps' windows later: the same order from a later, disjoint stretch of the
    data, with the init unchanged (the data-order term of the noise study, bench.noise); 0 = from the start."""
    device: str = "auto"
    """auto (CUDA when torch sees a GPU, else the CPU) | cpu | cuda."""
    dtype: str = "auto"
    """auto (bf16 where the device multiplies bf16 natively, else fp32) | bf16 | fp32."""
    compile: str = "auto"
    """torch.compile of the model and of Muon's per-shape update: auto (fullgraph on CUDA, off elsewhere) |
    fullgraph | off (True and False are accepted for fullgraph and off)."""
    log_every: int = 1
    """The training loss is read (a host sync on a GPU) every log_every steps, and at every validation, checkpoint
    and the last step; each train record holds the mean loss per token since the previous one."""
    memory_check: bool = True
    """Refuse a CUDA run whose estimated step peak (speedrun.memory) plus a margin exceeds the GPU's memory, before
    the model is built."""
    threads: int = 0
    """torch.set_num_threads on the CPU; 0 leaves torch's default."""
    dist_timeout_s: float = 300.0
    """torchrun: a collective waiting longer than this for a hung peer fails the run (a dead one fails at once on
    gloo)."""
    dist_bucket_mb: float = 25.0
    """torchrun: size of the gradient all-reduce buckets."""
    out_dir: str = "runs"
    """Where run directories are created."""
    run_name: str = ""
    """The run's directory under out_dir; "" = <preset>-<optimizer>-s<seed>."""
    checkpoint_every: int = 0
    """Write runs/<name>/checkpoint.pt atomically every this many steps and at the end; 0 = none while training."""
    resume: bool = False
    """Continue from runs/<name>/checkpoint.pt (the options that shape the trajectory must be the checkpoint's)."""

    def __post_init__(self):
        object.__setattr__(self, "compile", _COMPILE_ALIASES.get(self.compile, self.compile))
        if self.compile not in COMPILE_MODES:
            raise ConfigError(f"compile={self.compile!r}; choose from {', '.join(COMPILE_MODES)} (or True/False)")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype={self.dtype!r}; choose from {', '.join(DTYPES)}")
        require(self.device in DEVICES, f"--device={self.device!r}; choose from {', '.join(DEVICES)}")
        # every count, each with the smallest value that means something (a negative max_steps looped forever,
        # val_every=0 divided by zero)
        for name, least in (("max_steps", 0), ("schedule_steps", 0), ("batch_size", 1), ("seq_len", 1),
                            ("grad_accum", 1), ("reference_world_size", 0), ("val_every", 1), ("val_every_late", 0),
                            ("val_tokens", 1), ("log_every", 1), ("threads", 0), ("checkpoint_every", 0),
                            ("shard_margin", 0), ("seed", 0), ("data_offset", 0),
                            ("val_slice_tokens", 0)):
            require(getattr(self, name) >= least, f"--{name}={getattr(self, name)} must be >= {least}")
        require(0 <= self.val_late_frac <= 1, f"--val_late_frac={self.val_late_frac} must lie in [0, 1]")
        for name in ("grad_clip", "target_val_loss", "target_sigma"):
            require(_finite(getattr(self, name), 0, strict=False),
                    f"--{name}={getattr(self, name)} must be a number >= 0 (0 switches it off)")
        for name in ("dist_timeout_s", "dist_bucket_mb", "target_z", "loss_per_100_steps"):
            require(_finite(getattr(self, name), 0, strict=True),
                    f"--{name}={getattr(self, name)} must be a number > 0")
        require(not self.val_slice_tokens or self.val_tokens % self.val_slice_tokens == 0,
                f"--val_slice_tokens={self.val_slice_tokens} must divide --val_tokens={self.val_tokens}")
        require(self.seq_len <= self.model.max_seq_len,
                f"--seq_len={self.seq_len} exceeds --model.max_seq_len={self.model.max_seq_len}")
        require(self.run_name == "" or (self.run_name not in (".", "..") and "/" not in self.run_name),
                f"--run_name={self.run_name!r} must be a plain folder name (it is created under --out_dir)")
        if self.schedule_steps and self.schedule_steps < self.max_steps:
            raise ConfigError(f"schedule_steps={self.schedule_steps} < max_steps={self.max_steps}: the lr would reach "
                              "0 before the end (schedule_steps=0 uses max_steps)")

    @property
    def horizon(self) -> int:
        """The step count the lr schedule and the late validation cadence are defined over (1 for a 0-step run,
        whose warm-up step still reads the schedule)."""
        return self.schedule_steps or self.max_steps or 1
