"""The speedrun trainer: steps and wall-clock to a target validation loss.

    python train.py --preset cpu --optimizer muon                       # the CPU track (python docs corpus)
    torchrun --nproc_per_node=8 train.py --preset gpt2-124m              # the H100 speedrun on FineWeb
    torchrun --nproc_per_node=8 train.py --preset track3                 # modded-nanogpt's optimization track
    python train.py --preset track3-cpu                                  # the same track, scaled to 2 CPU cores

Options are `--key=value` overrides of configs.TrainConfig (`--optim.lr=0.02`, `--model.n_layer=6`); `--help`
lists them with their defaults. Each run writes runs/<name>/{config.json,log.jsonl,summary.json} and, with
--checkpoint_every=K, an atomic checkpoint.pt every K steps and at the end; `--resume=True` continues it and
produces the same trajectory as an uninterrupted run (bitwise on the CPU with a fixed thread count). A resumed run
may change the options in RESUMABLE_OPTIONS (cadences, threads, paths); any other difference is refused, named.

Errors. Everything the user can get wrong is checked before the warm-up: the options' ranges and names (configs),
the data (shards present and well-formed, enough train windows for --max_steps, a val set of --val_tokens), the
checkpoint to resume (readable, same trajectory options, same data) and the run directory (writable, not in use:
rank 0 holds runs/<name>/lock while it runs; a lock left by a dead process is taken over with a note). Token ids
are checked against the vocabulary as each shard is opened. Each ends the command with one line,
`error: ...`, and exit status 2 (options) or 1 (anything else); --debug shows the traceback (cli.py).

Interruption. SIGINT (Ctrl-C) or SIGTERM (preemption; torchrun passes it to every rank) stops the run at the next
boundary (below): the ranks agree on it there, a checkpoint is written, and the last line is
`interrupted at step N; resume with: <the command with --resume=True>`; exit status 130 (SIGINT) or 143 (SIGTERM).
A second signal stops at once, without a checkpoint.

Implementations: "auto" values (the GPU presets' attention, MLP, loss and Newton-Schulz kernels, compile, dtype)
are resolved once, from the device, before anything is built (configs.resolve_auto): the Triton kernels, the best
FlashAttention and torch.compile(fullgraph=True) on CUDA (of the model, and of Muon/NorMuon's per-shape update:
Muon.compile_update), eager PyTorch and no compile on the CPU; an explicit value wins. The result is printed
("implementations: attention fa3, mlp triton, ...") and config.json holds the resolved config. On a GPU the step's
memory is estimated first (memory.check_fit): a step whose estimated peak plus a margin exceeds the GPU's memory is
refused before the model is built, naming a micro-batch that fits.

The hot path does not wait for the device. The loss stays on it, summed there; the host reads it (one sync) only
at a boundary: every --log_every steps (1 on the CPU presets, 25 on the GPU presets), before each validation and
checkpoint, and at the last step. Each train record holds the mean loss per token over the steps since the
previous one (interval_steps). The clock runs from boundary to boundary, so it times whole steps without a sync
per step; validation and checkpoints pause it, and the warm-up steps (torch.compile, first-call allocation) run
before it starts, on the initial state that is restored afterwards; their time is reported apart as warmup_s.
A non-finite loss or gradient norm is recorded on the device and found at the next boundary; the run then rolls
back to its last checkpoint (or the initial state, kept in host memory until the first one) and replays the steps
with a check after each, stopping with the step and the first parameter whose gradient is not finite. A
checkpoint is only written after a clean check and with finite weights.

Precision (--dtype): auto runs bf16 where kernels._common.native_bf16(device) (CUDA, AVX-512-bf16/AMX CPUs),
else fp32; bf16 means autocast over fp32 parameters, or, for a bf16_embedding model (track 3), a bf16 token
embedding whose bf16 activations flow through every layer without autocast. The choice is printed at the start
and recorded in the summary.

Loss: a model with loss_reduction="sum" (track 3) returns the summed loss of a micro-batch, whose gradients
add up to the gradient of the step's total summed loss; train and val losses are reported per token.

Data parallel (optim/distributed.py): NCCL on GPUs, gloo on the CPU. The global batch is fixed by the config,
not by the GPU count: each of W ranks accumulates reference_world_size*grad_accum/W micro-batches (the
gpt2-124m preset is defined for 8 GPUs and runs unchanged on 1, 2 or 4), and the ranks together read the same
token windows whatever W is (reference_world_size=0, the other presets' default: the batch grows with W).
Adam-side gradients are all-reduced in buckets launched during the backward; Muon/NorMuon matrices are
reduce-scattered to one owner each, orthogonalized there once, and all-gathered.
Rank 0 writes the log and checkpoints (gathering the sharded optimizer state); on --resume every rank reads
the checkpoint, so out_dir must be on a filesystem every node sees.

    torchrun --standalone --nproc_per_node=4 train.py --preset gpt2-124m             # one node, 4 GPUs

    # two nodes × 4 GPUs: run the same command on each node (HOST0 = an address of one node, reachable
    # from the other; any free port; a job id shared by the nodes; --max_restarts=0: a failure ends the job)
    torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d --rdzv_endpoint=HOST0:29500 \
        --rdzv_id=speedrun-1 --max_restarts=0 train.py --preset gpt2-124m

    # 16 GPUs (2 × 8): the 8 × 32 × 2048 global batch as 16 ranks × 16 rows
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST0:29500 \
        --rdzv_id=speedrun-1 --max_restarts=0 train.py --preset gpt2-124m --batch_size=16 \
        --reference_world_size=16

A rank that dies ends the job: torchrun stops the other local ranks, and ranks elsewhere fail their next
collective (at once on gloo; after --dist_timeout_s on NCCL, whose watchdog aborts them). A rank that hangs
makes the others fail after --dist_timeout_s seconds (default 300) with an error naming the timeout.
"""

import ctypes
import json
import math
import os
import shlex
import signal
import sys
import threading
import time

import torch
import torch.distributed as dist

from data.loader import DataExhausted, TokenLoader, val_batches
from data.shards import list_shards
from model.gpt import GPT
from optim import build_optimizer, make_readout, wrap_optimizer
from optim.distributed import DataParallel, accumulation_steps, all_reduce_mean, init_process_group
from optim.muon import Muon
from speedrun import checkpoint, cli, memory
from speedrun.config import TrainConfig, device_type, help_text, resolve, resolve_auto, to_dict


class Diverged(cli.UserError, FloatingPointError):
    """A non-finite loss, gradient norm or weight; the message names the step (and the parameter when known)."""


# Options a resumed run may change: they decide what is logged, validated, checkpointed and where, or how fast it
# runs, not the sequence of weights (every other option is refused on --resume when it differs from the checkpoint).
RESUMABLE_OPTIONS = frozenset({
    "resume", "checkpoint_every", "val_every", "val_every_late", "val_late_frac", "log_every", "threads", "out_dir",
    "run_name", "data_dir", "memory_check", "dist_timeout_s", "dist_bucket_mb"})


def lr_factor(step: int, cfg: TrainConfig, role: str = "hidden") -> float:
    """The schedule's lr multiplier at `step` for a param group of `role` (optim.schedules)."""
    return cfg.schedule.lr(1.0, step, cfg.horizon, role)


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


def keep_freed_memory():
    """Make glibc's malloc keep freed memory in the process instead of returning it to the OS.

    By default glibc serves every block over 32 MB with a fresh mmap and returns it with munmap when freed, so
    each step's logits-sized tensors (tokens × 50304 × 4 bytes) are page-faulted and zeroed anew: ~940k page
    faults a step at the track3-cpu size, 2.2 s a step against 1.2 s with this (1 thread, AVX2 emulation,
    fwd+bwd+AdamW). Serving every block from the heap (M_MMAP_MAX=0) and never trimming it (M_TRIM_THRESHOLD=-1)
    keeps those pages mapped. The cost is memory: the heap keeps its peak and fragments (torch's aligned
    allocations), ~4 GB resident for a track3-cpu run against ~0.7 GB. Nothing changes numerically.
    A no-op where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    mallopt(m_mmap_max, 0)
    mallopt(m_trim_threshold, -1)


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


class Trainer:
    """Holds the run's state; `run()` trains to max_steps (or the target) and returns the summary.

    The step does not wait for the device: the loss stays on it and is summed there over the steps between two
    boundaries (is_boundary), where the host reads it once, stops or restarts the clock and checks the guard.
    Guard: each step records on the device the first step whose loss or gradient norm is not finite
    (torch.where, no read). When a boundary finds it set, the run rolls back to the last good state (its last
    checkpoint; before the first one, the initial state kept in host memory since the warm-up) and replays the
    steps up to the recorded one with a host check after each, which stops the run naming the step, the value
    and the first parameter with a non-finite gradient. A checkpoint is written only after a clean check and
    with finite weights, so the last checkpoint is always good.
    """

    def __init__(self, cfg: TrainConfig, argv: list[str] | None = None):
        self.requested = cfg  # as given; self.cfg is what runs (every "auto" resolved)
        self.argv = argv  # the command line, for the command that resumes an interrupted run
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
        self.master = self.rank == 0
        self.run_dir = run_directory(cfg)

        self.train_files = list_shards(cfg.data_dir, cfg.train_pattern)
        val_files = list_shards(cfg.data_dir, cfg.val_pattern)
        self.val = val_batches(val_files, n_tokens=cfg.val_tokens, batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                               rank=self.rank, world_size=self.world_size, vocab_size=cfg.model.vocab_size)
        self.val_slice_batches = val_slice_batches(cfg, self.world_size)
        self.val_slices = []  # the last validation's loss per val slice (--val_slice_tokens)

        self.dtype = torch.bfloat16 if cfg.dtype == "bf16" else torch.float32
        self.autocast = self.dtype == torch.bfloat16 and not cfg.model.bf16_embedding
        self.attention = cfg.model.attn_impl
        self.memory = self._check_memory()  # before the model is on the device
        torch.manual_seed(cfg.seed)
        self.model = GPT(cfg.model, dtype=self.dtype).to(self.device)
        self.step_model = torch.compile(self.model, fullgraph=True) if cfg.compile == "fullgraph" else self.model
        self.optimizer = wrap_optimizer(cfg.wrapper, build_optimizer(cfg.optim, self.model), self.model)
        self.readout = make_readout(cfg.readout, self.model)  # which weights validation reads
        if cfg.compile == "fullgraph" and isinstance(self.optimizer, Muon):
            self.optimizer.compile_update()  # Muon/NorMuon's per-shape update too; lr and momentum as 0-D tensors
        self.parallel = DataParallel(self.model, self.optimizer, world_size=self.world_size, rank=self.rank,
                                     bucket_mb=cfg.dist_bucket_mb)
        self.loader = self._new_loader()
        # progress of the timed run; restored by --resume
        self.step, self.train_time, self.reached, self.val_loss, self.log_offset = 0, 0.0, None, float("nan"), 0
        self._reset_device_records()
        self._clock_start = None
        self._initial = None  # the state at step 0 in host memory, the rollback point until the first checkpoint
        self._checkpoint_step = None  # the step of the last checkpoint this run wrote or resumed from
        self._stop_signal = 0  # SIGINT or SIGTERM received during the loop: stop at the next boundary
        self._stop_at_boundary = 0  # the signal every rank agreed on at the last boundary
        self._stop_flag = torch.zeros((), dtype=torch.float64, device=self.device)  # its all-reduced copy

    # --- resolved configuration ------------------------------------------------------------------------

    @property
    def implementations(self) -> dict:
        """What runs, by op ("unused": Newton-Schulz under an optimizer without it)."""
        cfg = self.cfg
        optimizer = cfg.optim.implementations() if hasattr(cfg.optim, "implementations") else {}
        return {"attention": cfg.model.attn_impl, "mlp": cfg.model.mlp_impl, "ce": cfg.model.ce_impl, **optimizer,
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
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else str(self.device)
        try:
            return memory.check_fit(self.cfg, capacity, device_type=self.device.type, device_name=name,
                                    micro_batches=min(2, self.accum))
        except memory.StepDoesNotFit:
            raise
        except Exception as e:  # noqa: BLE001 - an op without a fake-tensor implementation: the check cannot run
            if self.master:
                print(f"memory check not done: one step of this config could not be traced on fake tensors "
                      f"({type(e).__name__}: {e})", file=sys.stderr)
            return None

    # --- checkpoints -------------------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.run_dir, "checkpoint.pt")

    def save_checkpoint(self):
        """Every rank (the sharded optimizer state is gathered); rank 0 writes. Never writes non-finite weights."""
        self._check_weights_finite()
        optimizer_state = self.parallel.optimizer_state_dict()  # every rank: gathers the sharded Muon state
        if self.master:
            checkpoint.save_atomic({
                "config": to_dict(self.cfg), "step": self.step, "train_time": self.train_time,
                "reached": self.reached, "val_loss": self.val_loss, "log_offset": self.log_offset,
                "model": self.model.state_dict(), "optimizer": optimizer_state, "readout": self.readout.state_dict(),
                "loader": self.loader.state_dict(), "rng": checkpoint.rng_state(),
            }, self.checkpoint_path)
        self._checkpoint_step, self._initial = self.step, None  # the checkpoint is now the rollback point

    def read_checkpoint(self) -> dict:
        """The run's checkpoint, read and checked against this run: the options that shape the trajectory (all but
        RESUMABLE_OPTIONS) and the data files must be the checkpoint's. Changes nothing."""
        state = checkpoint.load(self.checkpoint_path)
        saved, current = dict(state["config"]), to_dict(self.cfg)
        for name in RESUMABLE_OPTIONS:
            saved.pop(name, None), current.pop(name, None)
        diff = _differences(saved, current)
        if diff:
            raise checkpoint.CheckpointMismatch(
                f"{self.checkpoint_path} was written by a different config, and these options change the "
                f"trajectory: {'; '.join(diff)}. Resume with the checkpoint's values on the same kind of machine "
                "(implementations chosen by 'auto' are part of the config), or pick another --run_name")
        try:
            self._new_loader().load_state_dict(state["loader"])
        except ValueError as e:
            raise checkpoint.CheckpointMismatch(f"{self.checkpoint_path} was written for other data: {e}") from e
        return state

    def load_checkpoint(self, state: dict | None = None):
        """Continue from the checkpoint `state` (default: read and check the run's checkpoint)."""
        state = self.read_checkpoint() if state is None else state
        self.model.load_state_dict(state["model"])
        self.parallel.load_optimizer_state_dict(state["optimizer"])
        self.readout.load_state_dict(state["readout"])
        self.loader.load_state_dict(state["loader"])
        checkpoint.set_rng_state(state["rng"])
        self.step, self.train_time, self.reached = state["step"], state["train_time"], state["reached"]
        self.val_loss, self.log_offset = state["val_loss"], state["log_offset"]
        self._checkpoint_step, self._initial = self.step, None

    def _check_weights_finite(self):
        named = list(self.model.named_parameters())
        finite = torch.stack([torch.isfinite(p).all() for _, p in named])
        if not finite.all():
            name = named[int((~finite).nonzero()[0, 0])][0]
            raise Diverged(f"parameter {name} is not finite after {self.step} steps, although every "
                                     "loss and gradient norm was finite; no checkpoint written")

    # --- the step ----------------------------------------------------------------------------------------

    def _new_loader(self) -> TokenLoader:
        return train_loader(self.cfg, self.train_files, rank=self.rank, world_size=self.world_size)

    def micro_batches(self):
        """This rank's micro-batches of the next step: accum pairs (x, y) of shape (batch_size, seq_len)."""
        x, y = self.loader.next_batch()  # (accum*B, T)
        return zip(x.split(self.cfg.batch_size), y.split(self.cfg.batch_size))

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """Host batch -> device without waiting: a copy from pageable memory may wait for the stream, one from
        pinned memory does not."""
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast)

    @property
    def summed_loss(self) -> bool:
        return self.cfg.model.loss_reduction == "sum"

    def _reset_device_records(self):
        """The per-interval loss sum and the non-finite record: [first bad step (-1: none), its loss, its norm]."""
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._interval_steps = 0
        self._nonfinite = torch.tensor([-1.0, 0.0, 0.0], dtype=torch.float64, device=self.device)

    def train_step(self, step: int, *, checked: bool = False) -> torch.Tensor:
        """One optimizer step; returns the training loss per token, a float64 0-dim tensor on the device.

        Nothing here waits for the device: a non-finite loss or gradient norm is recorded in self._nonfinite
        (the first such step) for the next boundary to find. checked=True reads both at once and raises
        FloatingPointError naming the step and the first parameter with a non-finite gradient (the replay)."""
        cfg, model = self.cfg, self.model
        self._apply_schedule(step)
        if hasattr(self.optimizer, "before_forward"):  # a wrapper's lookahead moves the weights first
            self.optimizer.before_forward(step)
        total = torch.zeros((), device=self.device)
        for micro, (x, y) in enumerate(self.micro_batches()):
            x, y = self._to_device(x), self._to_device(y)
            with self._autocast():
                loss = self.step_model(x, y)
            self.parallel.prepare_backward(last_micro_batch=micro == self.accum - 1)  # then grads go out as ready
            if self.summed_loss:
                # DataParallel averages over the ranks: W × each rank's sum averages to the sum over all ranks
                # (track 3 all-reduces a SUM); a power-of-two W scales exactly
                (loss * self.world_size).backward()
                total += loss.detach()
            else:
                (loss / self.accum).backward()
                total += loss.detach() / self.accum
        loss_per_token = self.parallel.reduce(total).double()  # waits for every gradient's reduction (on the GPU)
        if self.summed_loss:
            loss_per_token = loss_per_token / (self.accum * cfg.batch_size * cfg.seq_len)  # this rank's tokens
        norm = self.parallel.grad_norm()
        if checked:
            loss_value = loss_per_token.item()
            if not math.isfinite(loss_value):
                raise Diverged(f"step {step}: training loss is {loss_value}; {self._first_bad_grad()}")
            if not torch.isfinite(norm):
                raise Diverged(f"step {step}: gradient norm is {norm.item()}; {self._first_bad_grad()}")
        else:
            self._record_nonfinite(step, loss_per_token, norm)
        if cfg.grad_clip:
            torch.nn.utils.clip_grads_with_norm_(model.parameters(), cfg.grad_clip, norm)
        self.parallel.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.readout.update(step + 1)
        return loss_per_token

    def _apply_schedule(self, step: int):
        """Each param group's lr (and the hidden matrices' momentum) at `step`, from its initial values
        (optim.schedules)."""
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            role = group.get("role", "hidden")
            group["lr"] = cfg.schedule.lr(group["initial_lr"], step, cfg.horizon, role)
            if role == "hidden" and "initial_momentum" in group:
                group["momentum"] = cfg.schedule.momentum.momentum(group["initial_momentum"], step, cfg.horizon)

    def _record_nonfinite(self, step: int, loss: torch.Tensor, norm: torch.Tensor):
        """If this is the first step with a non-finite loss or norm, remember (step, loss, norm), on the device."""
        values = torch.stack((loss, norm.double()))
        first = ~torch.isfinite(values).all() & (self._nonfinite[0] < 0)
        self._nonfinite = torch.where(first, torch.cat((values.new_full((1,), step), values)), self._nonfinite)

    def _first_bad_grad(self) -> str:
        for name, p in self.model.named_parameters():
            if p.grad is not None and not torch.isfinite(p.grad).all():
                return f"first parameter with a non-finite gradient: {name}"
        return "every gradient is finite"

    @torch.no_grad()
    def evaluate(self) -> float:
        """The val loss per token; with --val_slice_tokens also each slice's (self.val_slices), each summed in the
        same order as the whole, so the first slice's loss is the val loss of a run whose val set is that slice."""
        self.model.eval()
        total = torch.zeros((), device=self.device)
        k = self.val_slice_batches
        # allocated before the loop: small tensors kept across the val batches would split the freed logits blocks
        # that the next batch reuses (train.keep_freed_memory), and the heap would grow by one block a batch
        sums = torch.zeros(len(self.val) // k if k else 0, device=self.device)
        with self.readout.weights():  # the weights the run's readout evaluates (by default the trained ones)
            for i, (x, y) in enumerate(self.val):
                with self._autocast():
                    loss = self.step_model(self._to_device(x), self._to_device(y)).float()
                total += loss
                if k:
                    sums[i // k] += loss
        per_token = self.cfg.batch_size * self.cfg.seq_len if self.summed_loss else 1
        total /= len(self.val) * per_token
        all_reduce_mean(total, self.world_size)  # every rank holds the same number of val batches
        if k:
            sums /= k * per_token
            all_reduce_mean(sums, self.world_size)
            self.val_slices = sums.tolist()
        self.model.train()
        return total.item()

    # --- the clock, rollback and replay ------------------------------------------------------------------

    def synchronize(self):
        """Wait for the device's queued work (a no-op on the CPU, whose ops have finished when they return)."""
        torch.get_device_module(self.device).synchronize(self.device)

    def _start_clock(self):
        self.synchronize()
        self._clock_start = time.perf_counter()

    def _stop_clock(self):
        self.synchronize()
        self.train_time += time.perf_counter() - self._clock_start
        self._clock_start = None

    def _snapshot(self) -> dict:
        """The model and optimizer state in host memory (a copy), the RNG state; the loader restarts from step 0."""
        def to_host(value):
            if torch.is_tensor(value):
                return value.detach().to("cpu", copy=True)
            if isinstance(value, dict):
                return {k: to_host(v) for k, v in value.items()}
            if isinstance(value, list):
                return [to_host(v) for v in value]
            return value

        return {"model": to_host(self.model.state_dict()), "optimizer": to_host(self.optimizer.state_dict()),
                "readout": to_host(self.readout.state_dict()), "rng": checkpoint.rng_state()}

    def _restore(self, snapshot: dict):
        self.model.load_state_dict(snapshot["model"])
        self.parallel.load_optimizer_state_dict(snapshot["optimizer"])
        self.readout.load_state_dict(snapshot["readout"])
        checkpoint.set_rng_state(snapshot["rng"])
        self.loader = self._new_loader()

    def _replay_to_failure(self, bad_step: int, loss: float, norm: float):
        """The guard found `bad_step`: roll back to the last good state, replay with a check after every step, and
        raise the replay's FloatingPointError (or, where the replay does not reproduce it, the recorded values)."""
        what = f"training loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {norm}"
        if self._checkpoint_step is not None:
            self.load_checkpoint()
        elif self._initial is not None:
            self._restore(self._initial)
            self.step = 0
        else:  # train_step driven by hand, without run(): nothing to roll back to
            raise Diverged(f"step {bad_step}: {what}")
        start = self.step
        while self.step <= bad_step:
            self.train_step(self.step, checked=True)
            self.step += 1
        raise Diverged(f"step {bad_step}: {what}; replayed from step {start}, the step was finite "
                                 "(the device's arithmetic is not deterministic), so the parameter is not known")

    def warmup(self, steps: int = 1) -> float:
        """Run `steps` training steps (compilation, allocator warm-up), then restore the initial state, which stays
        in host memory as the rollback point until the first checkpoint."""
        self._initial = self._snapshot()
        if steps <= 0:
            return 0.0
        start = time.perf_counter()
        for step in range(steps):
            self.train_step(step)
        self.evaluate()
        self.synchronize()
        elapsed = time.perf_counter() - start
        self._restore(self._initial)
        self._reset_device_records()
        return elapsed

    # --- the run -----------------------------------------------------------------------------------------

    def run(self) -> dict:
        """Train; before the warm-up, the checkpoint to resume is read and checked, and rank 0 (the only writer)
        takes the run directory's lock, so a bad --resume or a directory in use fails before any compute."""
        cfg = self.cfg
        if self.loader.steps_available() < cfg.max_steps:  # found now, not after hours of training
            raise DataExhausted(
                f"--max_steps={cfg.max_steps} needs {cfg.max_steps} windows of {self.loader.tokens_per_step + 1} "
                f"tokens, but the train shards in {cfg.data_dir} hold {self.loader.steps_available()}; use fewer "
                "steps or add shards")
        resumed = self.read_checkpoint() if cfg.resume else None
        lock = checkpoint.RunLock(self.run_dir).acquire() if self.master else None
        try:
            return self._run(resumed)
        finally:
            if lock is not None:
                lock.release()

    def _run(self, resumed: dict | None) -> dict:
        cfg = self.cfg
        warmup_s = self.warmup()
        if resumed is not None:
            self.load_checkpoint(resumed)
        log = None
        if self.master:
            with open(os.path.join(self.run_dir, "config.json"), "w") as f:
                json.dump(to_dict(cfg), f, indent=1)
            log = open(os.path.join(self.run_dir, "log.jsonl"), "r+" if cfg.resume else "w")
            log.truncate(self.log_offset)  # drop lines written after the checkpoint we resume from
            log.seek(self.log_offset)
        previous_handlers = self._catch_stop_signals()
        try:
            self._loop(log)
        finally:
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            if log is not None:
                log.close()
        summary = self.summary(warmup_s)
        if self.master:
            with open(os.path.join(self.run_dir, "summary.json"), "w") as f:
                json.dump(summary, f, indent=1)
        return summary

    # --- interruption --------------------------------------------------------------------------------------

    def _catch_stop_signals(self) -> dict:
        """SIGINT and SIGTERM (Ctrl-C, a scheduler's preemption, torchrun stopping its workers) during the loop end
        the run at the next boundary with a checkpoint; a second signal stops at once. Returns the handlers to
        put back. Signals can only be caught on the main thread; elsewhere they keep their handlers."""
        self._stop_signal = self._stop_at_boundary = 0
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):
            if self._stop_signal:
                raise KeyboardInterrupt
            self._stop_signal = signum
            if self.master:
                print(f"{signal.Signals(signum).name}: stopping after the next logged step with a checkpoint "
                      "(send it again to stop at once, without one)", file=sys.stderr, flush=True)

        return {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}

    def resume_command(self) -> str:
        """The command line that resumes this run: its own, with --resume=True."""
        args, skip = [], False
        for arg in self.argv or []:
            if skip:
                skip = False
            elif arg == "--resume":
                skip = True
            elif not arg.startswith("--resume="):
                args.append(arg)
        here = os.path.relpath(os.path.abspath(__file__))
        script = [here if not here.startswith("..") else os.path.abspath(__file__), *args, "--resume=True"]
        if self.world_size == 1:
            return shlex.join([sys.executable, *script])
        local = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
        if local == self.world_size:
            return shlex.join(["torchrun", "--standalone", f"--nproc_per_node={local}", *script])
        return "the same torchrun command on every node, with: " + shlex.join(script)

    def is_boundary(self, step: int) -> bool:
        return is_boundary(step, self.cfg)

    def _log(self, log, record: dict):
        if log is not None:
            log.write(json.dumps(record) + "\n")
            log.flush()
            self.log_offset = log.tell()

    def _end_interval(self, log) -> float:
        """At a boundary, with the clock stopped: one read of the device (the interval's loss sum, the guard's
        record and, on several ranks, the stop flag), the replay if the guard tripped, and the train record;
        returns the interval's mean loss."""
        values = [self._loss_sum.view(1), self._nonfinite]
        if self.world_size > 1:  # every rank stops at the same boundary: the largest signal number any rank got
            self._stop_flag.fill_(self._stop_signal)
            dist.all_reduce(self._stop_flag, op=dist.ReduceOp.MAX)
            values.append(self._stop_flag.view(1))
        loss_sum, bad_step, bad_loss, bad_norm, *stop = torch.cat(values).tolist()
        self._stop_at_boundary = int(stop[0]) if stop else self._stop_signal
        if bad_step >= 0:
            self._replay_to_failure(int(bad_step), bad_loss, bad_norm)
        steps, tokens_per_step = self._interval_steps, self.loader.tokens_per_step
        train_loss = loss_sum / steps
        self._log(log, {"step": self.step, "train_loss": train_loss, "interval_steps": steps,
                        "lr_factor": lr_factor(self.step - 1, self.cfg), "tokens": self.step * tokens_per_step,
                        "train_time_s": self.train_time, "step_avg_ms": 1e3 * self.train_time / self.step})
        self._loss_sum.zero_()
        self._interval_steps = 0
        return train_loss

    def _loop(self, log):
        cfg = self.cfg
        tokens_per_step = self.loader.tokens_per_step  # all ranks, all micro-batches
        progress = None
        if self.master and cfg.max_steps:
            from tqdm import tqdm

            progress = tqdm(total=cfg.max_steps, initial=self.step, desc=f"{cfg.preset}/{cfg.optim.name}",
                            dynamic_ncols=True)
        while True:
            # Here the clock is stopped: at the start, and after every boundary (every validation step is one).
            last = self.step == cfg.max_steps
            if is_val_step(self.step, cfg):
                self.val_loss = self.evaluate()
                record = {"step": self.step, "val_loss": self.val_loss, "tokens": self.step * tokens_per_step,
                          "train_time_s": self.train_time}
                if self.val_slice_batches:
                    record["val_slices"] = self.val_slices
                if cfg.target_val_loss and self.reached is None and self.val_loss <= cfg.target_val_loss:
                    self.reached = {"steps_to_target": self.step, "seconds_to_target": self.train_time}
                    record.update(self.reached)
                self._log(log, record)
                if progress is not None:
                    progress.set_postfix(val=f"{self.val_loss:.4f}")
                if last or (self.reached and cfg.stop_at_target):
                    break
            if self._clock_start is None:
                self._start_clock()
            self._loss_sum += self.train_step(self.step)
            self._interval_steps += 1
            self.step += 1
            if not is_boundary(self.step, cfg):
                continue  # no host read: the next step's kernels queue behind this one's
            self._stop_clock()
            steps = self._interval_steps
            train_loss = self._end_interval(log)
            if progress is not None:
                progress.update(steps)
                progress.set_postfix(loss=f"{train_loss:.4f}", val=f"{self.val_loss:.4f}")
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
            if self._stop_at_boundary and self.step < cfg.max_steps:
                if progress is not None:
                    progress.close()
                if self._checkpoint_step != self.step:
                    self.save_checkpoint()
                raise cli.Interrupted(f"interrupted at step {self.step}; resume with: {self.resume_command()}",
                                      self._stop_at_boundary)
        if progress is not None:
            progress.close()
        self.save_checkpoint()

    def summary(self, warmup_s: float) -> dict:
        cfg, reached = self.cfg, self.reached
        tokens_per_step = self.loader.tokens_per_step  # all ranks, all micro-batches
        return {
            "preset": cfg.preset, "optimizer": cfg.optim.name, "recipe": cfg.recipe, "seed": cfg.seed,
            "steps": self.step,
            "tokens": self.step * tokens_per_step, "final_val_loss": self.val_loss,
            "target_val_loss": cfg.target_val_loss or None, "reached_target": reached is not None,
            "steps_to_target": reached["steps_to_target"] if reached else None,
            "seconds_to_target": reached["seconds_to_target"] if reached else None,
            "train_time_s": self.train_time, "step_avg_ms": 1e3 * self.train_time / max(self.step, 1),
            "warmup_s": warmup_s,
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            "world_size": self.world_size, "threads": torch.get_num_threads(),
            "dtype": "bf16" if self.dtype == torch.bfloat16 else "fp32", "precision": self.precision,
            "implementations": self.implementations, "log_every": cfg.log_every,
            "memory_estimate_gb": round(self.memory.peak_bytes / memory.GB, 2) if self.memory else None,
            "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
            "params": self.model.num_params(), "run_dir": self.run_dir,
        }


def _differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """'name: saved -> current' for each config field (dotted) whose value differs."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"--{prefix}{key}: {a!r} in the checkpoint, {b!r} now")
    return out


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


def main(argv=None) -> dict | None:
    """Train with the options in argv (default sys.argv[1:]); returns the summary. `--help` lists the options."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--help" in argv or "-h" in argv:
        print(help_text([a for a in argv if a not in ("--help", "-h")]))
        return None
    cfg = resolve(argv)
    trainer = Trainer(cfg, argv)
    if trainer.master:
        print(json.dumps(to_dict(trainer.cfg)))
        print(f"precision: dtype={cfg.dtype} -> {trainer.precision}")
        print(f"attention: {cfg.model.attn_impl} -> {trainer.attention}")
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
