"""The body of the track-3 script bench.export_track3 writes: the run's settings, the training loop and main().

Not run from here: bench.export_track3 writes the section between the `export:` markers (the model, the run, the
optimizer, schedule, wrapper and readout with their values) and inlines, by bench.flatten, every definition of the
repository this file and that section use, so that the written file imports nothing from the repository. What the
loop does is what train.py's Trainer does for the track3 preset, step for step (the tests compare the two):

    validation (every val_every steps, every val_every_late over the last 1 - val_late_frac of the horizon, at the end)
    per step: the schedule sets each param group's lr (and the hidden matrices' momentum), the wrapper's
    before_forward, accum micro-batches forward and backward (the summed loss as it is), the gradients summed over
    the ranks, optional clipping, the optimizer's step, the readout's update

Its data parallelism is the simplest one: every gradient all-reduced, every rank stepping the whole optimizer (the
trainer shards Muon's matrices; the same numbers, since every rank then computes the same update).
"""

import ast
import dataclasses
import os
import sys
import time
import uuid
from contextlib import nullcontext

import torch
import torch.distributed as dist

from data.loader import DataExhausted, TokenLoader, val_batches
from data.shards import list_shards
from model.config import GPTConfig
from model.gpt import GPT
from optim.distributed import accumulation_steps
from optim.readouts import Readout
from optim.roles import param_groups

########################################
#             Run settings             #
########################################


@dataclasses.dataclass(frozen=True)
class Run:
    """What the run is besides the model and the optimizer: the track's data, batch, steps and validation (each
    field is the repository's TrainConfig field of the same name), and where it runs."""

    data_dir: str = "data/fineweb10B"
    """The folder of the FineWeb shards (the track's quickstart downloads them here, relative to the working
    directory)."""
    train_pattern: str = "fineweb_train_*.bin"
    """Train shards in data_dir, read in sorted file order."""
    val_pattern: str = "fineweb_val_*.bin"
    """Val shards in data_dir."""
    shuffle_shards: bool = False
    """Permute the train shards by the seed (the track reads them in file order)."""
    shard_margin: int = 1
    """A step's window is taken from a shard only if at least this many tokens remain after it (the track's
    `pos + batch_size + 1 >= len(tokens)` switch)."""
    batch_size: int = 64
    """Rows per micro-batch."""
    seq_len: int = 1024
    """Tokens per row."""
    grad_accum: int = 1
    """Micro-batches per rank at reference_world_size ranks."""
    reference_world_size: int = 8
    """The GPU count the batch is defined for: on W ranks each runs reference_world_size·grad_accum/W
    micro-batches, so 1, 2, 4 and 8 GPUs take the same global batch of the same tokens."""
    max_steps: int = 3250
    """Optimizer steps."""
    schedule_steps: int = 0
    """The horizon the schedule and the late validation cadence are defined over; 0 = max_steps."""
    grad_clip: float = 0.0
    """Clip the global gradient norm to this value; 0 = no clipping (the track's)."""
    val_every: int = 125
    """Validate every this many steps, and at the last step."""
    val_every_late: int = 25
    """Validate every this many steps from val_late_frac of the horizon on (0: no late cadence)."""
    val_late_frac: float = 0.9
    """Where the late validation cadence starts, as a fraction of the horizon."""
    val_tokens: int = 20 * 524288
    """Tokens of the val set: the first val_tokens of the val shards."""
    target_val_loss: float = 3.28
    """The track's target; the log names the first validation at or below it (the run trains its whole budget)."""
    seed: int = 1337
    """Seeds the initialisation (every rank draws the same weights)."""
    dtype: str = "bf16"
    """bf16 (the track's GPUs) | fp32: the compute dtype (a bf16_embedding model keeps bf16 activations from its
    embedding on; any other model runs under bf16 autocast)."""
    compile: str = "auto"
    """torch.compile the model (and a Muon-family optimizer's per-shape update): auto (on CUDA) | on | off."""
    device: str = "auto"
    """auto (CUDA when torch sees a GPU) | cuda | cpu."""
    threads: int = 0
    """torch.set_num_threads on the CPU; 0 leaves torch's default."""
    log_every: int = 25
    """Log the mean training loss every this many steps (each log reads the loss back from the GPU)."""
    log_dir: str = "logs"
    """Rank 0 writes its log here, as logs/<uuid>.txt: this file's source, a line of '=', then the log."""

    @property
    def horizon(self) -> int:
        return self.schedule_steps or self.max_steps or 1


# ---- export: settings (bench.export_track3 writes this section) ----
MODEL = GPTConfig()
RUN = Run()
OPTIMIZER = BUILD_OPTIMIZER = None
SCHEDULE = None
WRAPPER = WRAP = None
READOUT = MAKE_READOUT = None
# ---- export: end ----

########################################
#        Training and Validation       #
########################################


def build_optimizer(model: torch.nn.Module):
    """The optimizer over the model's parameters by role (optim.build_optimizer): each param group carries its role
    (hidden when the builder set none), its initial lr and, where it has one, its initial momentum; the schedule
    scales those every step. Inside the wrapper when there is one."""
    optimizer = BUILD_OPTIMIZER(OPTIMIZER, param_groups(model))
    for group in optimizer.param_groups:
        group.setdefault("role", "hidden")
        group["initial_lr"] = group["lr"]
        if "momentum" in group:
            group["initial_momentum"] = group["momentum"]
    return optimizer if WRAPPER is None else WRAP(WRAPPER, optimizer, model)


def apply_schedule(optimizer, step: int, horizon: int):
    """Each param group's lr at `step`, and the hidden matrices' momentum, from their initial values."""
    for group in optimizer.param_groups:
        role = group.get("role", "hidden")
        group["lr"] = SCHEDULE.lr(group["initial_lr"], step, horizon, role)
        if role == "hidden" and "initial_momentum" in group:
            group["momentum"] = SCHEDULE.momentum.momentum(group["initial_momentum"], step, horizon)


def is_val_step(step: int, run: Run) -> bool:
    late = run.val_every_late and step / run.horizon >= run.val_late_frac
    return step == run.max_steps or step % (run.val_every_late if late else run.val_every) == 0


def parse_options(argv: list[str], run: Run, model: GPTConfig) -> tuple[Run, GPTConfig]:
    """--FIELD=VALUE sets a field of RUN, --model.FIELD=VALUE one of MODEL (Python literals; text for text fields).
    For smoke tests and debugging: the track's run takes no options, its settings are written above."""
    changes = {"run": {}, "model": {}}
    for arg in argv:
        key, sep, text = arg.removeprefix("--").partition("=")
        target, _, name = key.rpartition(".")
        config = {"": run, "model": model}.get(target)
        if not arg.startswith("--") or not sep or config is None or name not in {
                f.name for f in dataclasses.fields(config)}:
            raise SystemExit(f"error: {arg!r}: options are --FIELD=VALUE for a field of Run or --model.FIELD=VALUE "
                             f"for one of GPTConfig")
        current = getattr(config, name)
        value = text if isinstance(current, str) else ast.literal_eval(text)
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if current is not None and type(value) is not type(current):
            raise SystemExit(f"error: {arg}: expected {type(current).__name__}, got {type(value).__name__}")
        changes["model" if target else "run"][name] = value
    return dataclasses.replace(run, **changes["run"]), dataclasses.replace(model, **changes["model"])


def main(argv: list[str] | None = None, hooks=None):
    """Train with the settings above (and the options in argv); `hooks`, for tests and tools, may have
    after_step(step, loss, model) (step = steps taken, loss per token as a 0-D tensor) and
    after_validation(step, val_loss)."""
    with open(__file__) as f:
        code = f.read()
    run, model_config = parse_options(sys.argv[1:] if argv is None else argv, RUN, MODEL)

    # --- devices and processes: torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; without it, one process ---
    world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if run.device == "auto":
        run = dataclasses.replace(run, device="cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(run.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if world_size > 1:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                **({"device_id": device} if device.type == "cuda" else {}))
    if run.threads:
        torch.set_num_threads(run.threads)
    master = rank == 0
    accum = accumulation_steps(run.grad_accum, run.reference_world_size, world_size, run.batch_size)
    logfile = None
    if master:
        os.makedirs(run.log_dir, exist_ok=True)
        logfile = os.path.join(run.log_dir, f"{uuid.uuid4()}.txt")
        print(logfile)

    def print0(line: str, console: bool = True):
        if master:
            if console:
                print(line, flush=True)
            with open(logfile, "a") as f:
                print(line, file=f)

    print0(code.rstrip("\n"), console=False)
    print0("=" * 100, console=False)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print0(f"Running PyTorch {torch.__version__} on {name} with world_size {world_size} ({accum} micro-batches of "
           f"{run.batch_size} x {run.seq_len} tokens per rank per step)")
    print0(f"run: {run}")
    print0("=" * 100, console=False)

    # --- data: the same global windows on every world size; rank r reads its slice of each ---
    train_files = list_shards(run.data_dir, run.train_pattern)
    val = val_batches(list_shards(run.data_dir, run.val_pattern), n_tokens=run.val_tokens, batch_size=run.batch_size,
                      seq_len=run.seq_len, rank=rank, world_size=world_size, vocab_size=model_config.vocab_size)
    loader = TokenLoader(train_files, batch_size=run.batch_size * accum, seq_len=run.seq_len, rank=rank,
                         world_size=world_size, seed=run.seed if run.shuffle_shards else 0, margin=run.shard_margin,
                         vocab_size=model_config.vocab_size)
    if loader.steps_available() < run.max_steps:
        raise DataExhausted(f"max_steps={run.max_steps} needs {run.max_steps} windows of {loader.tokens_per_step + 1} "
                            f"tokens, but the train shards in {run.data_dir} hold {loader.steps_available()}")

    # --- model, optimizer, readout ---
    dtype = torch.bfloat16 if run.dtype == "bf16" else torch.float32
    autocast = dtype == torch.bfloat16 and not model_config.bf16_embedding
    torch.manual_seed(run.seed)
    model = GPT(model_config, dtype=dtype).to(device)
    optimizer = build_optimizer(model)
    readout = Readout(model) if READOUT is None else MAKE_READOUT(READOUT, model)
    compiled = run.compile == "on" or (run.compile == "auto" and device.type == "cuda")
    step_model = torch.compile(model, dynamic=False) if compiled else model
    if compiled and hasattr(optimizer, "compile_update"):
        optimizer.compile_update()
    params = [p for p in model.parameters() if p.requires_grad]
    summed = model_config.loss_reduction == "sum"
    tokens_per_rank = accum * run.batch_size * run.seq_len

    def to_device(t: torch.Tensor) -> torch.Tensor:
        return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)

    def autocast_context():
        return torch.autocast(device.type, dtype=torch.bfloat16) if autocast else nullcontext()

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def train_step(step: int) -> torch.Tensor:
        """One optimizer step; the training loss per token (a float64 0-D tensor on the device)."""
        apply_schedule(optimizer, step, run.horizon)
        if hasattr(optimizer, "before_forward"):  # a wrapper's lookahead moves the weights first
            optimizer.before_forward(step)
        x, y = loader.next_batch()  # this rank's accum micro-batches, (accum·batch_size, seq_len)
        total = torch.zeros((), device=device)
        for xm, ym in zip(x.split(run.batch_size), y.split(run.batch_size)):
            with autocast_context():
                loss = step_model(to_device(xm), to_device(ym))
            if summed:  # summed over the tokens: the gradients add up to the step's summed loss over every rank
                loss.backward()
                total += loss.detach()
            else:
                (loss / accum).backward()
                total += loss.detach() / accum
        if world_size > 1:  # sums; a mean loss's gradients are then divided by the ranks
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                if not summed:
                    p.grad.div_(world_size)
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
            total.div_(world_size)
        loss = total.double()
        if summed:
            loss = loss / tokens_per_rank
        if run.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, run.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        readout.update(step + 1)
        return loss

    @torch.no_grad()
    def evaluate() -> float:
        model.eval()
        total = torch.zeros((), device=device)
        with readout.weights():  # the weights the readout evaluates (by default the trained ones)
            for x, y in val:
                with autocast_context():
                    total += step_model(to_device(x), to_device(y)).float()
        total /= len(val) * (run.batch_size * run.seq_len if summed else 1)  # per token
        if world_size > 1:
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
            total /= world_size
        model.train()
        return total.item()

    # --- the loop: the clock runs while training, not while validating ---
    train_time, reached, val_loss = 0.0, None, float("nan")
    loss_sum, since_log = torch.zeros((), dtype=torch.float64, device=device), 0
    synchronize()
    clock = time.perf_counter()
    for step in range(run.max_steps + 1):
        if is_val_step(step, run):
            synchronize()
            train_time += time.perf_counter() - clock
            val_loss = evaluate()
            if hooks is not None and hasattr(hooks, "after_validation"):
                hooks.after_validation(step, val_loss)
            if reached is None and run.target_val_loss and val_loss <= run.target_val_loss:
                reached = step
            print0(f"step:{step}/{run.max_steps} val_loss:{val_loss:.5f} train_time:{train_time:.3f}s "
                   f"step_avg:{1000 * train_time / max(step, 1):.2f}ms")
            synchronize()
            clock = time.perf_counter()
        if step == run.max_steps:
            break
        loss = train_step(step)
        loss_sum += loss
        since_log += 1
        if hooks is not None and hasattr(hooks, "after_step"):
            hooks.after_step(step + 1, loss, model)
        if (step + 1) % run.log_every == 0 or step + 1 == run.max_steps:
            elapsed = train_time + time.perf_counter() - clock
            print0(f"step:{step + 1}/{run.max_steps} train_loss:{loss_sum.item() / since_log:.5f} "
                   f"train_time:{elapsed:.3f}s step_avg:{1000 * elapsed / (step + 1):.2f}ms")
            loss_sum.zero_()
            since_log = 0
    outcome = (f"target {run.target_val_loss} reached at step {reached}" if reached is not None
               else f"target {run.target_val_loss} not reached" if run.target_val_loss else "no target")
    print0(f"final val_loss:{val_loss:.5f} after {run.max_steps} steps; {outcome}; train_time:{train_time:.3f}s")
    if device.type == "cuda":
        print0(f"peak memory allocated: {torch.cuda.max_memory_allocated(device) // 2**20} MiB")
    if dist.is_initialized():
        dist.destroy_process_group()
    return val_loss


if __name__ == "__main__":
    main()
