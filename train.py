"""The speedrun trainer: steps and wall-clock to a target validation loss.

    python train.py --preset cpu --optimizer muon                       # the CPU track (python docs corpus)
    torchrun --nproc_per_node=8 train.py --preset gpt2-124m              # the H100 speedrun on FineWeb

Options are `--key=value` overrides of configs.TrainConfig (`--optim.lr=0.02`, `--model.n_layer=6`).
The clock runs only while training: validation pauses it, and the warm-up steps (torch.compile, first-call
allocation) run before it starts, on a snapshot of the initial state that is restored afterwards; their
time is reported apart as warmup_s. Each run writes runs/<name>/{config.json,log.jsonl,summary.json}.
"""

import copy
import dataclasses
import json
import math
import os
import sys
import time

import torch
import torch.distributed as dist

from configs import TrainConfig, resolve
from data.loader import TokenLoader, val_batches
from data.shards import list_shards
from model.gpt import GPT
from optim import build_optimizer


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Trapezoidal schedule: linear warm-up, constant, linear cool-down to 0 over the last cooldown_frac."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    cooldown_start = cfg.max_steps * (1 - cfg.cooldown_frac)
    if step < cooldown_start:
        return 1.0
    return max(0.0, (cfg.max_steps - step) / (cfg.max_steps - cooldown_start))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Trainer:
    """Holds the run's state; `run()` trains to max_steps (or the target) and returns the summary."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if cfg.device == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(cfg.device)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.master = self.rank == 0
        self.run_dir = os.path.join(cfg.out_dir, cfg.run_name or f"{cfg.preset}-{cfg.optim.name}-s{cfg.seed}")

        train_files = list_shards(cfg.data_dir, cfg.train_pattern)
        val_files = list_shards(cfg.data_dir, cfg.val_pattern)
        self.train_files = train_files
        self.val = val_batches(val_files, n_tokens=cfg.val_tokens, batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                               rank=self.rank, world_size=self.world_size)

        torch.manual_seed(cfg.seed)
        self.model = GPT(cfg.model).to(self.device)
        self.step_model = torch.compile(self.model) if cfg.compile else self.model
        self.optimizer = build_optimizer(cfg.optim, self.model)
        self.loader = self._new_loader()

    def _new_loader(self) -> TokenLoader:
        cfg = self.cfg
        return TokenLoader(self.train_files, batch_size=cfg.batch_size, seq_len=cfg.seq_len, rank=self.rank,
                           world_size=self.world_size, seed=cfg.seed)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.autocast)

    def _all_reduce_mean(self, tensors):
        if self.world_size == 1:
            return
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t.div_(self.world_size)

    def train_step(self, step: int) -> float:
        cfg, model = self.cfg, self.model
        factor = lr_factor(step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        total = torch.zeros((), device=self.device)
        for _ in range(cfg.grad_accum):
            x, y = self.loader.next_batch()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self._autocast():
                loss = self.step_model(x, y)
            (loss / cfg.grad_accum).backward()
            total += loss.detach() / cfg.grad_accum
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        self._all_reduce_mean(grads + [total])
        loss_value = total.item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"step {step}: training loss is {loss_value}; {self._first_bad_grad()}")
        if cfg.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if not torch.isfinite(norm):
                raise FloatingPointError(f"step {step}: gradient norm is {norm.item()}; {self._first_bad_grad()}")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value

    def _first_bad_grad(self) -> str:
        for name, p in self.model.named_parameters():
            if p.grad is not None and not torch.isfinite(p.grad).all():
                return f"first parameter with a non-finite gradient: {name}"
        return "every gradient is finite"

    @torch.no_grad()
    def evaluate(self) -> float:
        self.model.eval()
        total = torch.zeros((), device=self.device)
        for x, y in self.val:
            with self._autocast():
                total += self.step_model(x.to(self.device), y.to(self.device)).float()
        total /= len(self.val)
        self._all_reduce_mean([total])
        self.model.train()
        return total.item()

    def warmup(self, steps: int = 1) -> float:
        """Run `steps` training steps (compilation, allocator warm-up) then restore the initial state."""
        if steps <= 0:
            return 0.0
        model_state = copy.deepcopy(self.model.state_dict())
        optim_state = copy.deepcopy(self.optimizer.state_dict())
        start = time.perf_counter()
        for step in range(steps):
            self.train_step(step)
        self.evaluate()
        _sync(self.device)
        elapsed = time.perf_counter() - start
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(optim_state)
        self.loader = self._new_loader()
        return elapsed

    def run(self) -> dict:
        cfg = self.cfg
        if self.master:
            os.makedirs(self.run_dir, exist_ok=True)
            with open(os.path.join(self.run_dir, "config.json"), "w") as f:
                json.dump(dataclasses.asdict(cfg), f, indent=1)
            log = open(os.path.join(self.run_dir, "log.jsonl"), "w")
        tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * self.world_size
        warmup_s = self.warmup()
        train_time, reached = 0.0, None
        val_loss = float("nan")
        progress = None
        if self.master and cfg.max_steps:
            from tqdm import tqdm

            progress = tqdm(total=cfg.max_steps, desc=f"{cfg.preset}/{cfg.optim.name}", dynamic_ncols=True)
        step = 0
        while True:
            last = step == cfg.max_steps
            if last or step % cfg.val_every == 0:
                val_loss = self.evaluate()
                record = {"step": step, "val_loss": val_loss, "tokens": step * tokens_per_step,
                          "train_time_s": train_time}
                if cfg.target_val_loss and reached is None and val_loss <= cfg.target_val_loss:
                    reached = {"steps_to_target": step, "seconds_to_target": train_time}
                    record.update(reached)
                if self.master:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    if progress is not None:
                        progress.set_postfix(val=f"{val_loss:.4f}")
                if last or (reached and cfg.stop_at_target):
                    break
            _sync(self.device)
            start = time.perf_counter()
            train_loss = self.train_step(step)
            _sync(self.device)
            train_time += time.perf_counter() - start
            step += 1
            if self.master:
                log.write(json.dumps({"step": step, "train_loss": train_loss, "lr_factor": lr_factor(step - 1, cfg),
                                      "tokens": step * tokens_per_step, "train_time_s": train_time,
                                      "step_avg_ms": 1e3 * train_time / step}) + "\n")
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
        if progress is not None:
            progress.close()
        summary = {
            "preset": cfg.preset, "optimizer": cfg.optim.name, "seed": cfg.seed, "steps": step,
            "tokens": step * tokens_per_step, "final_val_loss": val_loss, "target_val_loss": cfg.target_val_loss or None,
            "reached_target": reached is not None,
            "steps_to_target": reached["steps_to_target"] if reached else None,
            "seconds_to_target": reached["seconds_to_target"] if reached else None,
            "train_time_s": train_time, "step_avg_ms": 1e3 * train_time / max(step, 1), "warmup_s": warmup_s,
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            "world_size": self.world_size, "threads": torch.get_num_threads(),
            "params": self.model.num_params(), "run_dir": self.run_dir,
        }
        if self.master:
            log.close()
            with open(os.path.join(self.run_dir, "summary.json"), "w") as f:
                json.dump(summary, f, indent=1)
        return summary


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


def main(argv=None) -> dict:
    cfg = resolve(sys.argv[1:] if argv is None else argv)
    trainer = Trainer(cfg)
    if trainer.master:
        print(json.dumps(dataclasses.asdict(cfg)))
    try:
        summary = trainer.run()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if trainer.master:
        print(format_summary(summary))
    return summary


if __name__ == "__main__":
    main()
