"""Named presets: functions returning a TrainConfig, each building on another where it is a variant of it
(track3-cpu is track3 with what differs). A preset may name a recipe (optim.registry), applied when the run is
resolved, with its step counts scaled to the preset's max_steps; `--optimizer` replaces it."""

from dataclasses import replace

from model.config import model_preset
from optim.muon import MuonConfig
from optim.schedules import StableDecay
from speedrun.config.schema import TrainConfig

# The GPU presets' implementation names: resolved by speedrun.config.device.resolve_auto from the device.
GPU_AUTO = dict(attention_impl="auto", relu2_mlp_impl="auto", linear_cross_entropy_impl="auto")
# The GPU presets read the loss every 25 steps: a read waits for the GPU to finish every queued kernel, and the GPU
# then idles while the host queues the next step's first kernels. 25 divides both presets' validation cadences
# (125, late 25) and step counts (1750, 3250), so every validation and the last step fall on a log step and every
# record averages 25 steps; a non-finite loss is noticed within 25 steps.
GPU_LOG_EVERY = 25


def cpu() -> TrainConfig:
    """The speedrun-feature model at CPU scale: python-docs corpus, minutes on 2 cores. 4 × 256 tokens a step,
    ~2 s a step on 2 cores (the four 50304-row tables dominate: dense embedding gradients and their Adam updates);
    the fixed val set is the first 16,384 val tokens. Target: the tuned AdamW baseline's final val loss on
    sorted-order pydocs shards (docs/cpu_preset.md)."""
    return TrainConfig(preset="cpu", model=model_preset("cpu"), data_dir="shards/pydocs", batch_size=4, seq_len=256,
                       max_steps=100, val_every=20, val_tokens=16384,
                       schedule=StableDecay(warmup_steps=10, cooldown_frac=0.4), target_val_loss=5.8976)


def gpt2_124m() -> TrainConfig:
    """The H100 speedrun configuration on FineWeb (torchrun --nproc_per_node=8): 8 × 32 × 2048 = 524,288 tokens a
    step (on W < 8 GPUs each accumulates 8/W micro-batches); the speedrun's 10,485,760 validation tokens are 20 such
    steps. Implementations "auto": the Triton kernels, the best FlashAttention and a fullgraph torch.compile on
    CUDA, eager PyTorch on the CPU."""
    return TrainConfig(preset="gpt2-124m", model=model_preset("gpt2-124m", **GPU_AUTO), data_dir="shards/fineweb10B",
                       train_pattern="fineweb_train_*.bin", val_pattern="fineweb_val_*.bin", batch_size=32,
                       seq_len=2048, reference_world_size=8, max_steps=1750, val_every=125, val_tokens=10485760,
                       target_val_loss=3.28, log_every=GPU_LOG_EVERY, optim=MuonConfig(lr=0.05, aux_lr=0.008),
                       schedule=StableDecay(warmup_steps=10, cooldown_frac=0.4))


def track3() -> TrainConfig:
    """modded-nanogpt's optimization track (records/track_3_optimization): steps to val loss 3.28 on FineWeb with the
    architecture, data order and batch fixed. 8 × 64 × 1024 = 524,288 tokens a step (1, 2 or 4 GPUs accumulate 8/W
    micro-batches of 64 rows), shards in file order, 20 × 524,288 val tokens; validation every 125 steps, every 25
    from 90% of the horizon, and at the end; no clipping; no early stop: the run is scored by its final val loss.
    σ and z: the README's rule for its significance tests. Optimizer: the baseline recipe (result #36, Muon + AdamW,
    3250 steps); --optimizer picks another. Implementations "auto" as gpt2-124m's."""
    return TrainConfig(preset="track3", model=model_preset("track3", **GPU_AUTO), recipe="track3-muon",
                       data_dir="shards/fineweb10B", train_pattern="fineweb_train_*.bin",
                       val_pattern="fineweb_val_*.bin", shuffle_shards=False, shard_margin=1, batch_size=64,
                       seq_len=1024, reference_world_size=8, max_steps=3250,
                       schedule=StableDecay(warmup_steps=0, cooldown_frac=0.7), grad_clip=0.0, val_every=125,
                       val_every_late=25, val_late_frac=0.9, val_tokens=20 * 524288, target_val_loss=3.28,
                       target_sigma=0.0013, stop_at_target=False, log_every=GPU_LOG_EVERY, optim=MuonConfig())


def track3_cpu() -> TrainConfig:
    """Track 3 scaled to two CPU cores: the same model family, implementation choices ("auto": eager and sdpa on
    the CPU) and code path (4 layers of one 128-wide head), python-docs data, 4 × 256 tokens a step for 160 steps,
    the first 8192 val tokens every 16 steps and every 8 over the last 10%. fp32 is pinned: "auto" would pick bf16
    on AVX-512-bf16 CPUs and fp32 elsewhere, two different trajectories (the recipe's bf16 Newton-Schulz is
    emulated where bf16 is slow). Recipe step counts scale by 160/3250.

    Its statistics (docs/track3_cpu.md): σ = 0.0304, the std of the final val loss of 8 seeds (1000-1007) of the
    baseline recipe; the target 4.77 is the loss those 8 seeds' mean reaches at step 112 (70% of the budget) by the
    track's rule, (4.77 - 4.7332)·√8 = 0.104 >= z·σ = 0.0935, not at step 96:
        python -m bench.speedrun --preset track3-cpu --optimizers track3-muon --seeds 8 --threads=1
    Pairwise comparisons at this scale convert steps with 0.62 val loss per 100 steps (measured there), not the
    track's 0.0045. One run: 88 s wall on 2 threads of an AVX-512 Xeon forced to AVX2, quiet."""
    base = track3()
    return replace(base, preset="track3-cpu", model=model_preset("track3-cpu", **GPU_AUTO), data_dir="shards/pydocs",
                   train_pattern=TrainConfig.train_pattern, val_pattern=TrainConfig.val_pattern, batch_size=4,
                   seq_len=256, reference_world_size=1, max_steps=160, val_every=16, val_every_late=8,
                   val_tokens=8192, target_val_loss=4.77, target_sigma=0.0304, loss_per_100_steps=0.62, dtype="fp32",
                   log_every=1)


def tiny() -> TrainConfig:
    """Tests: a few seconds on the CPU."""
    return TrainConfig(preset="tiny", model=model_preset("tiny"), data_dir="shards/pydocs", batch_size=2, seq_len=64,
                       max_steps=3, val_every=2, val_tokens=512,
                       schedule=StableDecay(warmup_steps=1, cooldown_frac=0.4))


PRESETS = {"cpu": cpu, "gpt2-124m": gpt2_124m, "track3": track3, "track3-cpu": track3_cpu, "tiny": tiny}
