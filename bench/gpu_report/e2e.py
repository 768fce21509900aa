"""Stage 4, e2e: the training step of the track3 and gpt2-124m presets on one GPU at the preset's micro-batch (the
speedrun.config.TrainConfig the preset resolves to, built by train.Trainer on synthetic token shards): ms/step,
tokens/s, peak memory, and the projected full run on 8 GPUs, beside the step times published in track 3's logs. A
step is timed as the trainer's own clock does (CUDA-synchronised perf_counter), not by the kernel timer."""

import os
import tempfile
import time

from bench.gpu_report.published import published_track3
from bench.gpu_report.runner import Stage, short_error
from bench.gpu_report.timing import free, sync

E2E_PRESETS = ("track3", "gpt2-124m")
DRY_VOCAB = 256


def synthetic_shards(directory: str, train_tokens: int, val_tokens: int, vocab: int, seed: int = 0) -> None:
    """One train and one val shard of uniform random token ids (timing does not depend on the text)."""
    import numpy as np

    from data.shards import write_shard

    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    write_shard(os.path.join(directory, "synthetic_train_000000.bin"),
                rng.integers(0, min(vocab, 50257), train_tokens, dtype=np.uint16))
    write_shard(os.path.join(directory, "synthetic_val_000000.bin"),
                rng.integers(0, min(vocab, 50257), val_tokens, dtype=np.uint16))


def e2e_config(preset: str, data_dir: str, dry_run: bool, extra: list[str]):
    """The TrainConfig of `preset` on the synthetic shards (one micro-batch of validation; a dry run shrinks the
    model to the tiny preset's dimensions and turns compilation off). `extra` are --key=value overrides."""
    from model.config import model_preset
    from speedrun.config import PRESETS, resolve

    p = PRESETS[preset]()
    batch, seq = p.batch_size, p.seq_len
    args = [f"--preset={preset}", f"--data_dir={data_dir}", "--train_pattern=synthetic_train_*.bin",
            "--val_pattern=synthetic_val_*.bin", f"--device={'cpu' if dry_run else 'cuda'}"]
    if dry_run:
        tiny = model_preset("tiny")
        batch, seq = 2, tiny.max_seq_len
        # one micro-batch a step (reference_world_size 0: no accumulation), a small vocab: seconds on a CPU
        args += [f"--model.n_layer={tiny.n_layer}", f"--model.n_head={tiny.n_head}", f"--model.n_embd={tiny.n_embd}",
                 f"--model.max_seq_len={tiny.max_seq_len}", f"--model.vocab_size={DRY_VOCAB}", f"--batch_size={batch}",
                 f"--seq_len={seq}", "--reference_world_size=0", "--grad_accum=1", "--compile=False"]
    return resolve(args + [f"--val_tokens={batch * seq}"] + list(extra))


def _impls(cfg) -> str:
    model, optim = cfg.model, cfg.optim
    return (f"attn {model.attention_impl}, mlp {model.relu2_mlp_impl}, ce {model.linear_cross_entropy_impl}, "
            f"optimizer {optim.name} "
            f"(ns {getattr(optim, 'newton_schulz_impl', '—')}), compile {cfg.compile}")


def run_e2e(ctx, preset: str, deadline: float, steps: int, warmup_steps: int) -> dict:
    """Build the preset's Trainer, warm up (compile), time `steps` CUDA-synchronised training steps."""
    import torch

    from bench.harness import quantiles_ms
    from train import Trainer

    with tempfile.TemporaryDirectory(prefix="gpu_report_e2e_") as tmp:
        cfg = e2e_config(preset, tmp, ctx.dry_run, ctx.options["e2e_set"])
        accum_rows = cfg.batch_size * max(cfg.reference_world_size, 1) * cfg.grad_accum
        step_tokens = accum_rows * cfg.seq_len
        synthetic_shards(tmp, (steps + warmup_steps + 2) * step_tokens + 1, cfg.val_tokens + 1, cfg.model.vocab_size)
        cfg = e2e_config(preset, tmp, ctx.dry_run, ctx.options["e2e_set"] + [f"--out_dir={tmp}/runs"])
        key = f"e2e/{preset}"
        t0 = time.time()
        trainer = Trainer(cfg)
        fields = {"preset": preset, "impls": _impls(trainer.cfg), "micro_batch": f"{cfg.batch_size}×{cfg.seq_len}",
                  "accum_steps": trainer.accum, "tokens_per_step": trainer.loader.tokens_per_step,
                  "max_steps": cfg.max_steps, "params": trainer.model.num_params(),
                  "attention_backend": trainer.attention, "build_s": time.time() - t0}
        # progress rows: a preset stopped at the time box still says how far it got (compiling, warm, timing)
        ctx.row(key, "running", reason=f"warm-up: {warmup_steps} step(s), the first compiles", **fields)
        t0 = time.time()
        for step in range(warmup_steps):
            trainer.train_step(step)
        sync(ctx.device)
        fields["warmup_s"] = time.time() - t0
        ctx.row(key, "running", reason=f"warm after {fields['warmup_s']:.0f} s; timing up to {steps} steps", **fields)
        if ctx.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for step in range(warmup_steps, warmup_steps + steps):
            if times and time.time() + max(times) * 1.5 > deadline:
                break
            sync(ctx.device)
            t = time.perf_counter()
            trainer.train_step(step)
            sync(ctx.device)
            times.append(time.perf_counter() - t)
        if not times:
            raise RuntimeError("no step was timed before the deadline")
        med, p20, p80 = quantiles_ms(times, (0.5, 0.2, 0.8))  # whole training steps: perf_counter with syncs
        fields.update(steps_timed=len(times), ms_per_step=med, ms_p20=p20, ms_p80=p80,
                      ms_mean=1e3 * sum(times) / len(times), tokens_per_s=trainer.loader.tokens_per_step / (med / 1e3),
                      peak_mem_gb=torch.cuda.max_memory_allocated() / 2**30 if ctx.device == "cuda" else None,
                      projection_8gpu={"ms_per_step": med / 8, "full_run_s": cfg.max_steps * med / 8 / 1e3,
                                       "label": "projection: 1-GPU step / 8 × max_steps, perfect scaling assumed"})
        return fields


def run(ctx):
    published = published_track3()
    ctx.info(published=published)
    steps = 3 if ctx.dry_run else ctx.options["e2e_steps"]
    warmup = 1 if ctx.dry_run else 2
    min_s = 5.0 if ctx.dry_run else 45.0
    todo = list(E2E_PRESETS)
    for preset in todo:  # the whole plan from the start, as in stage 3
        ctx._write({"row": {"key": f"e2e/{preset}", "status": "pending", "preset": preset}})
    partial, summary = False, []
    for i, preset in enumerate(todo):
        key = f"e2e/{preset}"
        share = ctx.remaining() / (len(todo) - i)
        if share < min_s:
            partial = True
            ctx.row(key, "skipped", preset=preset,
                    reason=f"time box: {share:.0f} s for this preset, needs ~{min_s:.0f}")
            continue
        try:
            fields = run_e2e(ctx, preset, time.time() + share, steps, warmup)
        except Exception as exc:  # noqa: BLE001 - an OOM or compile error in one preset leaves the other to run
            ctx.row(key, "failed", preset=preset, error=short_error(exc))
            continue
        finally:
            free(ctx.device, collect=True)
        if preset == "track3":
            fields["published"] = published
        summary.append(f"{preset} {fields['ms_per_step']:.1f} ms/step")
        if fields["steps_timed"] < steps:
            partial = True
            ctx.row(key, "partial", reason=f"{fields['steps_timed']} of {steps} steps fitted in the time box", **fields)
        else:
            ctx.row(key, "ok", **fields)
    ctx.end("partial" if partial else "done", summary="; ".join(summary) or None)


STAGE = Stage("e2e", "one training step of the track3 and gpt2-124m presets on one GPU", run, min_s=60, cap_s=150,
              dry_min_s=10)
