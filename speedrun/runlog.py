"""What a run reports as it goes: log.jsonl and the progress bar.

log.jsonl holds one JSON record a line, each flushed as it is written: a train record at every boundary (step,
train_loss: the mean loss per token since the previous one, interval_steps, lr_factor, tokens, train_time_s,
step_avg_ms) and a val record at every validation (step, val_loss, tokens, train_time_s, and steps_to_target /
seconds_to_target where the target is first reached). `offset` is the file's length after the last record; each
checkpoint keeps it, and a resumed run truncates the file there, dropping the records written after the
checkpoint, so the log of a resumed run is the uninterrupted run's. summary() is a finished run's summary.json,
format_summary the line it prints from it.
"""

import json


class RunLog:
    """Rank 0's log.jsonl and progress bar; on other ranks (path None) both are absent and writes do nothing."""

    def __init__(self, path: str | None, *, offset: int = 0, resume: bool = False, total: int = 0, initial: int = 0,
                 desc: str = ""):
        self.offset = offset
        self.file = self.bar = None
        if path is None:
            return
        self.file = open(path, "r+" if resume else "w")
        self.file.truncate(offset)  # drop lines written after the checkpoint we resume from
        self.file.seek(offset)
        if total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)

    def write(self, record: dict):
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
            self.offset = self.file.tell()

    def progress(self, steps: int = 0, **postfix):
        """Advance the bar by `steps` and show `postfix` (name=value)."""
        if self.bar is not None:
            if steps:
                self.bar.update(steps)
            self.bar.set_postfix(**postfix)

    def close_bar(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self):
        self.close_bar()
        if self.file is not None:
            self.file.close()
            self.file = None


def summary(trainer, warmup_s: float) -> dict:
    """A finished run's summary.json, from its trainer: what ran where, steps and seconds to the target, the final
    val loss, the clock (the warm-up apart) and the machine."""
    import os

    import torch

    from speedrun.memory import GB

    cfg, reached, step = trainer.cfg, trainer.reached, trainer.step
    elapsed = trainer.clock.elapsed
    return {
        "preset": cfg.preset, "optimizer": cfg.optim.name, "recipe": cfg.recipe, "seed": cfg.seed, "steps": step,
        "tokens": step * trainer.loader.tokens_per_step, "final_val_loss": trainer.val_loss,  # all ranks
        "final_val_loss_raw": trainer.val_loss_raw if cfg.readout is not None else trainer.val_loss,
        "target_val_loss": cfg.target_val_loss or None, "reached_target": reached is not None,
        "steps_to_target": reached["steps_to_target"] if reached else None,
        "seconds_to_target": reached["seconds_to_target"] if reached else None,
        "train_time_s": elapsed, "step_avg_ms": 1e3 * elapsed / max(step, 1), "warmup_s": warmup_s,
        "device": torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda" else "cpu",
        "world_size": trainer.world_size, "threads": torch.get_num_threads(),
        "dtype": "bf16" if trainer.dtype == torch.bfloat16 else "fp32", "precision": trainer.precision,
        "implementations": trainer.implementations, "log_every": cfg.log_every,
        "memory_estimate_gb": round(trainer.memory.peak_bytes / GB, 2) if trainer.memory else None,
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
        "params": trainer.model.num_params(), "run_dir": trainer.run_dir,
    }


def format_summary(s: dict) -> str:
    target = s["target_val_loss"]
    if not target:
        outcome = "no target set"
    elif s["reached_target"]:
        outcome = f"target {target:.4f} reached at step {s['steps_to_target']} in {s['seconds_to_target']:.1f}s"
    else:
        outcome = f"target {target:.4f} NOT reached in {s['steps']} steps"
    return (f"{s['preset']}/{s['optimizer']} seed {s['seed']}: val {s['final_val_loss']:.4f} after {s['steps']} steps "
            f"({s['tokens']:,} tokens, {s['train_time_s']:.1f}s train, {s['step_avg_ms']:.0f} ms/step, "
            f"warm-up {s['warmup_s']:.1f}s excluded); {outcome}")
