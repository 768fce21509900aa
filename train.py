"""The speedrun trainer: steps and wall-clock to a target validation loss.

    python train.py --preset track3-cpu                                  # track 3 scaled to 2 CPU cores
    python train.py --preset cpu --optimizer muon                        # the CPU track (python docs corpus)
    torchrun --nproc_per_node=8 train.py --preset gpt2-124m              # the H100 speedrun on FineWeb
    torchrun --nproc_per_node=8 train.py --preset track3                 # modded-nanogpt's optimization track

Options are `--key=value` overrides of speedrun.config.TrainConfig (`--optim.lr=0.02`, `--model.n_layer=6`);
`--help` lists them with their defaults. docs/trainer.md explains each part below in full.

What a run does. It resolves every "auto" (implementations, precision, compile) for its device once, before
anything is built, and prints the result; checks everything a user can get wrong; builds the model and optimizer;
runs a warm-up step on the initial state, which is then restored (its time is reported apart as warmup_s); and
trains --max_steps steps, validating at step 0, on the --val_every cadence and at the last step, and stopping early
at --target_val_loss when --stop_at_target. The host reads the device only at boundaries (is_boundary); the clock
counts the training steps between them and nothing else.

What it writes, in runs/<name>/ (--out_dir, --run_name; rank 0 only): config.json (the resolved config) at the
start, log.jsonl (a train record per boundary, a val record per validation), summary.json at the end (steps and
seconds to the target, the final val loss, the machine), and `lock` while it runs. checkpoint.pt, written
atomically, follows one rule: with --checkpoint_every=K, every K steps and at the end, and the last one is kept;
a stop by a signal writes one and keeps it (the run can be resumed); a run that finishes without
--checkpoint_every leaves none (a checkpoint of its own interruption is removed at the end).

What it guarantees.
- Every mistake a user can make (options, implementations this device cannot run, data, the checkpoint to
  resume, the run directory) is found before the warm-up and ends the command with one line, `error: ...`, exit
  status 2 (options) or 1 (the rest).
- A run directory holding an earlier run (finished, interrupted or failed) is never written into unasked: the
  command is refused, naming --resume=True, a new --run_name and --overwrite (which replaces the earlier run only
  once the new one writes its first file).
- --resume=True continues from checkpoint.pt along the same trajectory as an uninterrupted run (bitwise on the CPU
  with a fixed thread count). Options the command line does not give keep the checkpoint's values; those it gives,
  and edits made to config.json, are applied and printed when they leave the trajectory so far unchanged
  (speedrun/resume.py: cadences, paths, threads, more steps when the schedule of the steps taken stays the same)
  and refused otherwise, each named with both values. config.json is rewritten only with a note.
- SIGINT or SIGTERM stops the run at the next boundary on every rank with a checkpoint, printing
  `interrupted at step N; resume with: <command>` (exit status 130 or 143). Further signals are held until that
  checkpoint is in place; two more within 3 s abort at once, leaving the last good checkpoint as it was.
- A NaN or inf loss or gradient stops the run naming the step and the first parameter with a non-finite
  gradient (speedrun/guard.py); a checkpoint never holds non-finite weights, so the last one is always good.
- On several ranks (torchrun) the trajectory is the one-rank trajectory of the same global batch; a rank that
  dies or hangs ends the job within --dist_timeout_s with an error naming it.
"""

import json
import os
import signal
import sys
import time

import torch
import torch.distributed as dist

from data.loader import DataExhausted, TokenLoader, val_batches
from data.shards import list_shards
from model.gpt import GPT
from optim import build_optimizer, make_readout, wrap_optimizer
from optim.distributed import DataParallel, accumulation_steps, init_process_group
from optim.muon import Muon
from optim.schedules import apply_schedule
from speedrun import checkpoint, cli, memory, resume, rundir
from speedrun.checkpoint import Checkpointer, host_copy
from speedrun.clock import Clock
from speedrun.config import TrainConfig, device_type, help_text, resolve, resolve_auto, to_dict
from speedrun.guard import Diverged, NonFiniteGuard, check_weights
from speedrun.memory import keep_freed_memory
from speedrun.resume import RESUMABLE_OPTIONS, SCHEDULE_OPTIONS
from speedrun.runlog import RunLog, format_summary, summary
from speedrun.signals import Aborted, StopSignals
from speedrun.step import TrainingStep

__all__ = ["Diverged", "RESUMABLE_OPTIONS", "SCHEDULE_OPTIONS", "Trainer", "format_summary", "is_boundary",
           "is_val_step", "keep_freed_memory", "lr_factor", "main"]


def lr_factor(step: int, cfg: TrainConfig, role: str = "hidden") -> float:
    """The schedule's lr multiplier at `step` for a param group of `role` (optim.schedules)."""
    return cfg.schedule.lr(1.0, step, cfg.horizon, role)


def schedule_at(step: int, cfg: TrainConfig) -> dict:
    """What the schedule sets at `step`: the lr factor of the hidden matrices and of the other roles, and the
    matrices' momentum (for the optimizer's own). A resumed run compares it over the steps already taken."""
    return {"lr factor": lr_factor(step, cfg, "hidden"), "aux lr factor": lr_factor(step, cfg, "embed"),
            "momentum": cfg.schedule.momentum.momentum(getattr(cfg.optim, "momentum", 0.95), step, cfg.horizon)}


def is_val_step(step: int, cfg: TrainConfig) -> bool:
    """Validate at the last step, and every val_every steps (every val_every_late once step/horizon >=
    val_late_frac): track 3 checks every 125 steps, then every 25 over the last 10% of the horizon."""
    late = cfg.val_every_late and step / cfg.horizon >= cfg.val_late_frac
    return step == cfg.max_steps or step % (cfg.val_every_late if late else cfg.val_every) == 0


def is_boundary(step: int, cfg: TrainConfig) -> bool:
    """Whether the host reads the device after `step` steps (the clock stops, the loss of the steps since the last
    boundary is logged, the non-finite guard is checked): every log_every steps, before every validation and
    checkpoint, and at the last step. Between boundaries nothing waits for the device."""
    return (step % cfg.log_every == 0 or is_val_step(step, cfg)
            or bool(cfg.checkpoint_every and step % cfg.checkpoint_every == 0))


def run_directory(cfg: TrainConfig) -> str:
    """Where a run writes: out_dir/run_name, by default out_dir/<preset>-<optimizer>-s<seed>."""
    return os.path.join(cfg.out_dir, cfg.run_name or f"{cfg.preset}-{cfg.optim.name}-s{cfg.seed}")


def train_loader(cfg: TrainConfig, files, *, rank: int, world_size: int) -> TokenLoader:
    """One step's rows per rank (accum micro-batches of batch_size rows): every world size reads the same global
    windows, and rank r's micro-batch m is the (r*accum + m)-th block of batch_size rows of the step's window."""
    accum = accumulation_steps(cfg.grad_accum, cfg.reference_world_size, world_size, cfg.batch_size)
    return TokenLoader(files, batch_size=cfg.batch_size * accum, seq_len=cfg.seq_len, rank=rank,
                       world_size=world_size, seed=cfg.seed if cfg.shuffle_shards else 0, margin=cfg.shard_margin,
                       vocab_size=cfg.model.vocab_size, skip=cfg.data_offset)


def val_slice_batches(cfg: TrainConfig, world_size: int) -> int:
    """Val batches per rank in one --val_slice_tokens slice (0: no slices); a slice must be whole validation steps."""
    if not cfg.val_slice_tokens:
        return 0
    per_step = world_size * cfg.batch_size * cfg.seq_len
    if cfg.val_slice_tokens % per_step:
        raise cli.ConfigError(f"--val_slice_tokens={cfg.val_slice_tokens} must be a multiple of the tokens of one "
                              f"validation step, world_size*batch_size*seq_len = {per_step}")
    return cfg.val_slice_tokens // per_step


def device_memory_bytes(device: torch.device) -> int | None:
    """The memory of the accelerator the run is on (a CUDA GPU's total memory); None for the CPU, whose memory is
    shared with everything else on the machine and is not checked."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return None


class Trainer(TrainingStep):
    """A run: `Trainer(cfg)` builds it (every "auto" resolved, inputs checked, model and optimizer built), `run()`
    trains to max_steps (or the target) and returns the summary. It wires together the parts in speedrun/: the
    training step (step.py), the clock, the non-finite guard, the checkpointer, the stop signals and the run
    log."""

    def __init__(self, cfg: TrainConfig, argv: list[str] | None = None, *, overwrite: bool = False):
        self.requested = cfg  # as given; self.cfg is what runs (every "auto" resolved, the resumed run's changes)
        self.argv = argv  # the command line, for the command that resumes an interrupted run
        self.overwrite = overwrite  # replace an earlier run in the run directory (train.py --overwrite)
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = torch.device(cfg.device if cfg.device != "auto" else device_type("auto"))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise cli.UserError("--device=cuda but no CUDA GPU is visible to torch here; use --device=auto or cpu")
        if self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        # Implementations, precision and compile, once, before anything is built: the model's registry lookups
        # get the resolved names, and an explicit attention backend that cannot run here fails now.
        self.cfg = cfg = resolve_auto(cfg, self.device)
        self.master = self.rank == 0
        self.run_dir = run_directory(cfg)
        self.config_path = os.path.join(self.run_dir, "config.json")
        self.checkpoints = Checkpointer(self.run_dir)
        self._resumed = self._config_json = None  # --resume: the checkpoint and config.json, read now
        if overwrite and cfg.resume:
            raise cli.UsageError("--overwrite and --resume=True contradict each other: choose one")
        if cfg.resume:  # before anything that depends on an option config.json or the command line may change
            self.cfg = cfg = self._resume_config(cfg)
        try:
            self.accum = accumulation_steps(cfg.grad_accum, cfg.reference_world_size, self.world_size,
                                            cfg.batch_size)
        except ValueError as e:  # a global batch this many ranks cannot share
            raise cli.ConfigError(str(e)) from e
        if self.world_size > 1 and not dist.is_initialized():
            init_process_group(self.device, cfg.dist_timeout_s)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if self.device.type == "cpu":
            keep_freed_memory()

        self.train_files = list_shards(cfg.data_dir, cfg.train_pattern)
        if self._resumed is not None:
            self._check_data(self._resumed)
        val_files = list_shards(cfg.data_dir, cfg.val_pattern)
        self.val = val_batches(val_files, n_tokens=cfg.val_tokens, batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                               rank=self.rank, world_size=self.world_size, vocab_size=cfg.model.vocab_size)
        self.val_slice_batches = val_slice_batches(cfg, self.world_size)
        self.val_slices = []  # the last validation's loss per val slice (--val_slice_tokens)

        self.dtype = torch.bfloat16 if cfg.dtype == "bf16" else torch.float32
        self.autocast = self.dtype == torch.bfloat16 and not cfg.model.bf16_embedding
        self.attention = cfg.model.attention_impl
        self.memory = self._check_memory()  # before the model is on the device
        torch.manual_seed(cfg.seed)
        self.model = GPT(cfg.model, dtype=self.dtype).to(self.device)
        self.step_model = torch.compile(self.model, fullgraph=True) if cfg.compile == "fullgraph" else self.model
        self.optimizer = wrap_optimizer(cfg.wrapper, build_optimizer(cfg.optim, self.model), self.model)
        self.readout = make_readout(cfg.readout, self.model)  # which weights validation reads
        inner = getattr(self.optimizer, "inner", self.optimizer)  # a wrapper's inner optimizer
        if cfg.compile == "fullgraph" and isinstance(inner, Muon):
            inner.compile_update()  # Muon/NorMuon's per-shape update too; lr and momentum as 0-D tensors
        self.parallel = DataParallel(self.model, self.optimizer, world_size=self.world_size, rank=self.rank,
                                     bucket_mb=cfg.dist_bucket_mb)
        self.loader = self._new_loader()
        # the run's collaborators, and its progress (restored by --resume)
        self.clock = Clock(self.synchronize)
        self.guard = NonFiniteGuard(self.device)
        self.signals = StopSignals(self.device, self.world_size, announce=self.master)
        self.log = RunLog(None)
        self.step, self.reached, self.val_loss, self.val_step = 0, None, float("nan"), None
        self.val_loss_raw = float("nan")  # with a readout: the trained weights' val loss at the last validation
        self._loss_sum, self._interval_steps = torch.zeros((), dtype=torch.float64, device=self.device), 0

    # --- what runs -----------------------------------------------------------------------------------------

    @property
    def implementations(self) -> dict:
        """What runs, by op ("unused": Newton-Schulz under an optimizer without it)."""
        cfg = self.cfg
        optimizer = cfg.optim.implementations() if hasattr(cfg.optim, "implementations") else {}
        return {"attention": cfg.model.attention_impl, "mlp": cfg.model.relu2_mlp_impl,
                "ce": cfg.model.linear_cross_entropy_impl, **optimizer,
                "compile": cfg.compile}

    @property
    def precision(self) -> str:
        """What --dtype resolved to, in words."""
        if self.dtype == torch.float32:
            return "fp32"
        if self.autocast:
            return "bf16 autocast (fp32 parameters)"
        return "bf16 activations from the bf16 token embedding (no autocast; fp32 parameters elsewhere)"

    def _check_memory(self) -> memory.MemoryEstimate | None:
        """Refuse a step that cannot fit in the device's memory (memory.check_fit), before the model is built."""
        capacity = device_memory_bytes(self.device)
        if capacity is None or not self.cfg.memory_check:
            return None
        return memory.check_device(self.cfg, self.device, capacity, micro_batches=min(2, self.accum),
                                   announce=self.master)

    # --- checkpoints (speedrun/checkpoint.py) --------------------------------------------------------------

    @property
    def checkpoint_path(self) -> str:
        return self.checkpoints.path

    def save_checkpoint(self):
        """Every rank (the sharded optimizer state is gathered); rank 0 writes. Never writes non-finite weights."""
        check_weights(self.model.named_parameters(), self.step)
        optimizer_state = self.parallel.optimizer_state_dict()  # every rank: gathers the sharded Muon state
        state = None
        if self.master:
            state = {"config": to_dict(self.cfg), "step": self.step, "train_time": self.clock.elapsed,
                     "reached": self.reached, "val_loss": self.val_loss, "val_step": self.val_step,
                     "log_offset": self.log.offset, "model": self.model.state_dict(), "optimizer": optimizer_state,
                     "readout": self.readout.state_dict(), "loader": self.loader.state_dict(),
                     "rng": checkpoint.rng_state()}
        self.checkpoints.save(self.step, state)

    def _resume_config(self, cfg: TrainConfig) -> TrainConfig:
        """--resume: read the checkpoint and config.json (as the user may have edited it); the config the run
        continues with, the changes it may make applied and printed (speedrun/resume.py), the others refused."""
        state = self._resumed = self.checkpoints.read()
        self._config_json = rundir.read_config(self.config_path)
        given = None if self.argv is None else resume.given_options(self.argv, self.requested, resolve)
        new, applied = resume.resumed_config(cfg, state["config"], self._config_json, given=given,
                                             step=state["step"], schedule=schedule_at,
                                             checkpoint_path=self.checkpoint_path, config_path=self.config_path)
        if applied and self.master:
            print(f"resuming {self.run_dir} at step {state['step']} with: {'; '.join(applied)}")
        return resolve_auto(new, self.device)  # the checkpoint's implementations must run here too

    def _check_data(self, state: dict):
        try:
            self._new_loader().load_state_dict(state["loader"])
        except ValueError as e:
            raise checkpoint.CheckpointMismatch(f"{self.checkpoint_path} was written for other data: {e}") from e

    def load_checkpoint(self, state: dict):
        """Continue from the checkpoint `state`."""
        self._restore(state)
        self.loader.load_state_dict(state["loader"])
        self.step, self.reached, self.val_loss = state["step"], state["reached"], state["val_loss"]
        self.val_step = state.get("val_step")
        self.clock.elapsed, self.log.offset = state["train_time"], state["log_offset"]
        self.checkpoints.resumed(self.step)

    def _snapshot(self) -> dict:
        """The model and optimizer state in host memory (a copy), the RNG state; the loader restarts from step 0."""
        return {"model": host_copy(self.model.state_dict()), "optimizer": host_copy(self.optimizer.state_dict()),
                "readout": host_copy(self.readout.state_dict()), "rng": checkpoint.rng_state()}

    def _restore(self, state: dict):
        self.model.load_state_dict(state["model"])
        self.parallel.load_optimizer_state_dict(state["optimizer"])
        self.readout.load_state_dict(state["readout"])
        checkpoint.set_rng_state(state["rng"])
        self.loader = self._new_loader()

    def _roll_back(self) -> int | None:
        """Back to the last good state (the last checkpoint, else the initial state); returns its step, or None
        when there is nothing to roll back to (train_step driven by hand, without run())."""
        state = self.checkpoints.rollback_state()
        if state is None:
            return None
        if "step" in state:
            self.load_checkpoint(state)
        else:
            self._restore(state)
            self.step = 0
        return self.step

    # --- the step ----------------------------------------------------------------------------------------

    def _new_loader(self) -> TokenLoader:
        return train_loader(self.cfg, self.train_files, rank=self.rank, world_size=self.world_size)

    def micro_batches(self):
        """This rank's micro-batches of the next step: accum pairs (x, y) of shape (batch_size, seq_len)."""
        x, y = self.loader.next_batch()  # (accum*B, T)
        return zip(x.split(self.cfg.batch_size), y.split(self.cfg.batch_size))

    def _apply_schedule(self, step: int):
        """Each param group's lr (and the hidden matrices' momentum) at `step` (optim.schedules.apply_schedule)."""
        apply_schedule(self.cfg.schedule, self.optimizer, step, self.cfg.horizon)

    def warmup(self, steps: int = 1) -> float:
        """Run `steps` training steps (compilation, allocator warm-up), then restore the initial state, which stays
        in host memory as the rollback point until the first checkpoint."""
        initial = self._snapshot()
        self.checkpoints.keep_initial(initial)
        if steps <= 0:
            return 0.0
        start = time.perf_counter()
        for step in range(steps):
            self.train_step(step)
        self.evaluate()
        self.synchronize()
        elapsed = time.perf_counter() - start
        self._restore(initial)
        self.guard.reset()
        self._loss_sum, self._interval_steps = torch.zeros((), dtype=torch.float64, device=self.device), 0
        return elapsed

    # --- the run -----------------------------------------------------------------------------------------

    def is_boundary(self, step: int) -> bool:
        return is_boundary(step, self.cfg)

    def run(self) -> dict:
        """Train. Before the warm-up (the checkpoint to resume was read and checked when the run was built), rank 0
        (the only writer) takes the run directory's lock and every rank checks that it holds no earlier run, unless
        resuming or told to overwrite it, so a directory in use or holding a run fails before any compute. Stop
        signals are handled from here to the end (speedrun/signals.py)."""
        cfg = self.cfg
        if self.loader.steps_available() < cfg.max_steps:  # found now, not after hours of training
            raise DataExhausted(
                f"--max_steps={cfg.max_steps} needs {cfg.max_steps} windows of {self.loader.tokens_per_step + 1} "
                f"tokens, but the train shards in {cfg.data_dir} hold {self.loader.steps_available()}; use fewer "
                "steps or add shards")
        with self.signals:
            lock = checkpoint.RunLock(self.run_dir).acquire() if self.master else None
            try:
                if not cfg.resume and not self.overwrite:
                    rundir.refuse_earlier_run(self.run_dir)
                return self._run()
            except Aborted as e:
                raise cli.Interrupted(self._aborted(e), e.signum) from None
            finally:
                if lock is not None:
                    lock.release()

    def _run(self) -> dict:
        warmup_s = self.warmup()
        if self._resumed is not None:
            self.load_checkpoint(self._resumed)
            self._resumed = None
        if self.master:
            self._write_config()
        self.log = RunLog(os.path.join(self.run_dir, "log.jsonl") if self.master else None, offset=self.log.offset,
                          resume=self.cfg.resume, total=self.cfg.max_steps, initial=self.step,
                          desc=f"{self.cfg.preset}/{self.cfg.optim.name}")
        try:
            self._loop()
        finally:
            self.log.close()
        summary = self.summary(warmup_s)
        if self.master:
            rundir.write_json(os.path.join(self.run_dir, "summary.json"), summary)
            if not self.cfg.checkpoint_every and os.path.exists(self.checkpoint_path):
                os.unlink(self.checkpoint_path)  # a finished run keeps a checkpoint only with --checkpoint_every
        return summary

    def _write_config(self):
        """config.json: written at the start; on --resume rewritten only where this run's config differs from it (an
        option the command line changed), saying so, and left as it is when it holds this run's config already."""
        if self.overwrite:
            rundir.remove_earlier_run(self.run_dir)
        earlier = self._config_json if self.cfg.resume else None
        changed = rundir.write_config(self.config_path, to_dict(self.cfg), earlier=earlier)
        if changed:
            print(f"{self.config_path} now holds this run's config: {'; '.join(changed)}")

    def _loop(self):
        cfg = self.cfg
        while True:  # the clock is stopped here: at the start, and after every boundary (every validation is one)
            if is_val_step(self.step, cfg) and self.val_step != self.step:  # (a resumed run may have validated it)
                self._validate()
            if self.step == cfg.max_steps or (self.reached and cfg.stop_at_target):
                break
            if not self.clock.running:
                self.clock.start()
            self._loss_sum += self.train_step(self.step)
            self._interval_steps += 1
            self.step += 1
            if not is_boundary(self.step, cfg):
                continue  # no host read: the next step's kernels queue behind this one's
            self.clock.stop()
            self._end_interval()
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
            if self.signals.agreed and self.step < cfg.max_steps:
                self._stop()
        self.log.close_bar()
        if cfg.checkpoint_every:
            self.save_checkpoint()

    def _validate(self):
        """The val loss at this step, logged; the target's step and time when it is first reached."""
        self.val_loss, self.val_step = self.evaluate(), self.step
        record = {"step": self.step, "val_loss": self.val_loss, "tokens": self.step * self.loader.tokens_per_step,
                  "train_time_s": self.clock.elapsed}
        if self.cfg.readout is not None:  # the readout's loss is the run's; the trained weights' beside it
            raw = self.evaluate(readout=False) if self.readout.blends() else self.val_loss
            self.val_loss_raw = record["val_loss_raw"] = raw
        if self.val_slice_batches:
            record["val_slices"] = self.val_slices
        target = self.cfg.target_val_loss
        if target and self.reached is None and self.val_loss <= target:
            self.reached = {"steps_to_target": self.step, "seconds_to_target": self.clock.elapsed}
            record.update(self.reached)
        self.log.write(record)
        self.log.progress(val=f"{self.val_loss:.4f}")

    def _end_interval(self):
        """At a boundary, with the clock stopped: one read of the device (the interval's loss sum, the guard's
        record and, on several ranks, the stop flag), the replay if the guard tripped, and the train record."""
        stop_flag = self.signals.flag()
        values = [self._loss_sum.view(1), self.guard.first] + ([stop_flag] if stop_flag is not None else [])
        loss_sum, bad_step, bad_loss, bad_norm, *stop = torch.cat(values).tolist()
        self.signals.agree(stop[0] if stop else None)
        if bad_step >= 0:
            self.guard.replay(int(bad_step), bad_loss, bad_norm, start=self._roll_back(), step=self._replay_step)
        steps, self._interval_steps = self._interval_steps, 0
        train_loss = loss_sum / steps
        self.log.write({"step": self.step, "train_loss": train_loss, "interval_steps": steps,
                        "lr_factor": self._lr_factor(),
                        "tokens": self.step * self.loader.tokens_per_step, "train_time_s": self.clock.elapsed,
                        "step_avg_ms": 1e3 * self.clock.elapsed / self.step})
        self.log.progress(steps, loss=f"{train_loss:.4f}", val=f"{self.val_loss:.4f}")
        self._loss_sum.zero_()

    def _lr_factor(self) -> float:
        """lr / initial lr of the hidden matrices' group as the last step applied it (the first group if none)."""
        groups = self.optimizer.param_groups
        group = next((g for g in groups if g.get("role", "hidden") == "hidden"), groups[0])
        return group["lr"] / group["initial_lr"]

    def _replay_step(self, step: int):
        self.step = step
        self.train_step(step, checked=True)
        self.step = step + 1

    def _stop(self):
        """The ranks agreed on a stop signal: checkpoint (unless this step's is written) and end the run."""
        self.log.close_bar()
        if self.checkpoints.step != self.step:
            self.save_checkpoint()
        raise cli.Interrupted(f"interrupted at step {self.step}; resume with: {self.resume_command()}",
                              self.signals.agreed)

    def _aborted(self, e: Aborted) -> str:
        """The last line of a run aborted by repeated signals."""
        name = f"aborted by repeated {signal.Signals(e.signum).name}, without a checkpoint for this stop"
        if self.checkpoints.step is None or not os.path.exists(self.checkpoint_path):
            return f"{name}; there is no checkpoint, so the run cannot be resumed"
        return (f"{name}; the last checkpoint, of step {self.checkpoints.step}, is intact: resume with: "
                f"{self.resume_command()}")

    def resume_command(self) -> str:
        """The command line that resumes this run (speedrun.resume.resume_command)."""
        carried = resume.carried_options(resolve_auto(self.requested, self.device), self.cfg)
        return resume.resume_command(self.argv or [], __file__, carried, world_size=self.world_size)

    def summary(self, warmup_s: float) -> dict:
        """summary.json (speedrun.runlog.summary)."""
        return summary(self, warmup_s)


def main(argv=None) -> dict | None:
    """Train with the options in argv (default sys.argv[1:]); returns the summary. `--help` lists the options."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--help" in argv or "-h" in argv:
        print(help_text([a for a in argv if a not in ("--help", "-h")]))
        print("\ntrain.py also takes --overwrite: replace the earlier run in the run directory (refused without it)")
        return None
    overwrite, options = cli.flag(argv, "--overwrite")
    cfg = resolve(options)
    if not cfg.resume and not overwrite:
        rundir.refuse_earlier_run(run_directory(cfg))  # before anything is built (and again under the lock)
    trainer = Trainer(cfg, argv, overwrite=overwrite)
    if trainer.master:
        print(json.dumps(to_dict(trainer.cfg)))
        print(f"precision: dtype={cfg.dtype} -> {trainer.precision}")
        print(f"attention: {cfg.model.attention_impl} -> {trainer.attention}")
        print("implementations: " + ", ".join(f"{op} {impl}" for op, impl in trainer.implementations.items()))
        if trainer.memory is not None:
            print(f"memory: {trainer.memory}")
    try:
        summary = trainer.run()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if trainer.master:
        print(format_summary(summary))
    return summary


if __name__ == "__main__":
    cli.run_main(main)
