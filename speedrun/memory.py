"""Peak memory of one training step, estimated without running it.

    estimate = estimate_step_memory(cfg)          # cfg: configs.TrainConfig
    print(estimate)                               # peak GB and its parts
    check_fit(cfg, capacity_bytes)                # raises StepDoesNotFit, naming a micro-batch that fits

The step (two of them: the first allocates the optimizer state, the second is the steady state that is
reported) is traced on fake tensors (torch's FakeTensorMode: shapes, dtypes and strides, no data, no compute),
under a dispatch mode that counts the bytes of every tensor storage alive after each op and keeps the
maximum. Autograd's saved tensors are alive until the backward frees them, so they are counted; views share
their base's storage and are counted once. Nothing is allocated and nothing runs on a device, so a 124M
config at its GPU micro-batch is estimated in seconds on a CPU.

What it models: the parameters, their gradients, the optimizer state, every activation the forward saves and
every temporary of the forward, backward and optimizer step, in the dtypes the run uses (bf16 autocast or
fp32). What it does not: the CUDA caching allocator's rounding and fragmentation, cuBLAS/cuDNN workspaces, the
CUDA context (~0.5 GB), NCCL buffers, and the internals of kernels whose outputs are all that fake tensors see
(a FlashAttention kernel's fp32 dq accumulator, for instance). check_fit() adds margin_bytes() for those.
"auto" implementations are resolved for the device type as the trainer resolves them (configs.resolve_auto),
a CUDA device taken to multiply bf16 natively.

Attention is traced as the GPU would run it: every CUDA backend (FlashAttention 2/3/4, SDPA's flash kernel,
flex) keeps O(T) memory per head (the output and its log-sum-exp), which the CPU's SDPA flash kernel
reproduces on fake tensors, so a GPU attention backend is traced as `sdpa` (with a dense mask when the model
uses windows or document masks, as SDPA does).

keep_freed_memory() is the host side: it makes glibc keep freed memory in the process (a CPU run's logits-sized
blocks are reused instead of page-faulted anew each step).
"""

import ctypes
import dataclasses
import sys
import weakref

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from speedrun.cli import UserError

GB = 1e9
# What the estimate leaves out, added on top of it by check_fit. Fixed: the CUDA context (~0.5 GB), cuBLAS and
# cuDNN workspaces, NCCL's buffers and DataParallel's flat bucket copies of the replicated gradients. Relative: the
# CUDA caching allocator's rounding (large blocks to 2 MiB) and fragmentation between steps.
MARGIN_FIXED_BYTES = 2 * 2**30
MARGIN_FRACTION = 0.10


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of the tensor storages alive (those created inside the mode, plus any registered with
    `add`), and the maximum of that count."""

    def __init__(self):
        super().__init__()
        self._seen = WeakIdKeyDictionary()  # storage -> bytes
        self.current = 0
        self.peak = 0

    def add(self, *tensors):
        for t in tensors:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            if storage in self._seen:
                continue
            n = storage.nbytes()
            self._seen[storage] = n
            self.current += n
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._free, n)

    def _free(self, n: int):
        self.current -= n

    def reset_peak(self):
        self.peak = self.current

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.add(*tree_flatten(out)[0])
        return out


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    peak_bytes: int  # the steady-state step's maximum of live bytes
    params_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    micro_batch_rows: int
    seq_len: int
    micro_batches: int  # per rank per step
    implementations: str = ""  # what was traced, e.g. "mlp triton, ce triton, attention sdpa, ns triton"

    @property
    def transient_bytes(self) -> int:
        """Activations and temporaries on top of what persists (parameters, gradients, optimizer state)."""
        return self.peak_bytes - self.params_bytes - self.grads_bytes - self.optimizer_bytes

    def __str__(self):
        return (f"estimated peak {self.peak_bytes / GB:.2f} GB per rank at micro-batch {self.micro_batch_rows}x"
                f"{self.seq_len} x {self.micro_batches}: parameters {self.params_bytes / GB:.2f} GB, gradients "
                f"{self.grads_bytes / GB:.2f} GB, optimizer state {self.optimizer_bytes / GB:.2f} GB, activations "
                f"and temporaries {self.transient_bytes / GB:.2f} GB"
                + (f" ({self.implementations})" if self.implementations else ""))


def _traced_attention(impl: str, device_type: str) -> str:
    """The attention implementation that stands in for `impl` on fake CPU tensors (see the module docstring)."""
    if device_type == "cuda" and impl in ("auto", "fa3", "fa2", "fa4", "flex"):
        return "sdpa"
    return impl


def _storages_bytes(tensors) -> int:
    seen = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            seen[id(t.untyped_storage())] = t.untyped_storage().nbytes()
    return sum(seen.values())


def estimate_step_memory(cfg, *, device_type: str | None = None, micro_batches: int | None = None,
                         batch_size: int | None = None) -> MemoryEstimate:
    """Peak bytes of one steady-state training step of `cfg` on one rank of a device of `device_type`
    ("cuda" or "cpu"; default: cfg.device, "auto" meaning cuda when present).

    `batch_size` overrides the micro-batch rows and `micro_batches` the micro-batches traced per step (default:
    two when a rank accumulates, else one: the second micro-batch runs with the first one's gradients alive, and
    further ones repeat it).
    """
    from model.gpt import GPT  # here, not at import: train.py imports this module
    from optim import build_optimizer
    from speedrun.config import device_type as run_device_type
    from speedrun.config import resolve_auto

    if device_type is None:
        device_type = run_device_type(cfg.device)
    rows = cfg.batch_size if batch_size is None else batch_size
    if micro_batches is None:  # gradients persist across micro-batches, activations do not: two show the peak
        micro_batches = min(2, cfg.grad_accum * max(1, cfg.reference_world_size))
    cuda = device_type == "cuda"
    traced = dataclasses.replace(cfg.model, attention_impl=_traced_attention(cfg.model.attention_impl, device_type))
    cfg = resolve_auto(dataclasses.replace(cfg, model=traced), device_type, bf16_native=True if cuda else None)
    model_cfg = cfg.model
    bf16 = cfg.dtype == "bf16"
    impls = (f"mlp {model_cfg.relu2_mlp_impl}, ce {model_cfg.linear_cross_entropy_impl}, "
             f"attention {model_cfg.attention_impl}")
    for op, impl in (cfg.optim.implementations() if hasattr(cfg.optim, "implementations") else {}).items():
        impls += f", {op} {impl}"
    # as train.Trainer: bf16 autocast, or for a bf16_embedding model a bf16 embedding and no autocast
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16 and not cfg.model.bf16_embedding)

    live = LiveBytes()
    with FakeTensorMode(), live:
        model = GPT(model_cfg, dtype=torch.bfloat16 if bf16 else torch.float32)
        optimizer = build_optimizer(cfg.optim, model)
        params = list(model.parameters())
        live.add(*params, *model.buffers())
        x = torch.zeros(rows, cfg.seq_len, dtype=torch.long)
        for step in range(2):  # the first step allocates the optimizer state; the second is measured
            live.reset_peak()
            for _ in range(micro_batches):
                with autocast:
                    loss = model(x, x)
                loss.backward()
                del loss
            grads = _storages_bytes(p.grad for p in params)
            torch.nn.utils.clip_grad_norm_(params, 1.0) if cfg.grad_clip else None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)  # as the trainer: gradients are reallocated each step
        state = _storages_bytes(v for s in optimizer.state.values() for v in s.values())
        return MemoryEstimate(peak_bytes=live.peak, params_bytes=_storages_bytes(params), grads_bytes=grads,
                              optimizer_bytes=state, micro_batch_rows=rows, seq_len=cfg.seq_len,
                              micro_batches=micro_batches, implementations=impls)


def margin_bytes(peak_bytes: int) -> int:
    """What check_fit adds to an estimated peak (see MARGIN_FIXED_BYTES and MARGIN_FRACTION)."""
    return int(MARGIN_FRACTION * peak_bytes) + MARGIN_FIXED_BYTES


class StepDoesNotFit(UserError, RuntimeError):
    """The estimated peak of a training step plus the margin exceeds the device's memory."""


def check_fit(cfg, capacity_bytes: int, *, device_type: str = "cuda", device_name: str = "the GPU",
              micro_batches: int | None = None) -> MemoryEstimate:
    """The estimate of cfg's step on a device of `device_type` with `capacity_bytes` of memory, if it fits with the
    margin; else StepDoesNotFit naming the estimate, the memory, and the largest micro-batch that fits at the same
    tokens per step (batch_size halved and grad_accum doubled until it fits), or that none does.

    micro_batches: this rank's micro-batches per step, capped at 2 (estimate_step_memory's default otherwise)."""
    def fits(e: MemoryEstimate) -> bool:
        return e.peak_bytes + margin_bytes(e.peak_bytes) <= capacity_bytes

    estimate = estimate_step_memory(cfg, device_type=device_type, micro_batches=micro_batches)
    if fits(estimate):
        return estimate
    rows, accum, hint = cfg.batch_size, cfg.grad_accum, None
    while rows % 2 == 0:
        rows, accum = rows // 2, accum * 2
        smaller = estimate_step_memory(cfg, device_type=device_type, batch_size=rows, micro_batches=2)
        if fits(smaller):
            hint = (f"at the same tokens per step, --batch_size={rows} --grad_accum={accum} fits (estimated "
                    f"{smaller.peak_bytes / GB:.1f} GB)")
            break
    if hint is None:
        hint = (f"not even a micro-batch of {rows} row{'s' if rows > 1 else ''} fits (batch_size {cfg.batch_size} "
                "halved while even); the parameters, gradients and optimizer state alone take "
                f"{(estimate.params_bytes + estimate.grads_bytes + estimate.optimizer_bytes) / GB:.2f} GB")
    margin = margin_bytes(estimate.peak_bytes)
    raise StepDoesNotFit(
        f"this training step does not fit in the memory of {device_name}: {estimate}; with a margin of "
        f"{margin / GB:.1f} GB ({MARGIN_FRACTION:.0%} for the allocator's fragmentation + "
        f"{MARGIN_FIXED_BYTES / GB:.1f} GB for the CUDA context, workspaces and communication buffers) it needs "
        f"{(estimate.peak_bytes + margin) / GB:.1f} GB of the device's {capacity_bytes / GB:.1f} GB; {hint}. "
        "(--memory_check=False skips this check)")


def check_device(cfg, device, capacity_bytes: int, *, micro_batches: int, announce: bool = True):
    """check_fit on the run's device: the estimate, or StepDoesNotFit; None (said when `announce`) where the step
    cannot be traced on fake tensors (an op without a fake implementation), so the check cannot run."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    try:
        return check_fit(cfg, capacity_bytes, device_type=device.type, device_name=name, micro_batches=micro_batches)
    except StepDoesNotFit:
        raise
    except Exception as e:  # noqa: BLE001 - an op without a fake-tensor implementation: the check cannot run
        if announce:
            print(f"memory check not done: one step of this config could not be traced on fake tensors "
                  f"({type(e).__name__}: {e})", file=sys.stderr)
        return None


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
