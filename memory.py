"""Peak memory of one training step, estimated without running it.

    estimate = estimate_step_memory(cfg)          # cfg: configs.TrainConfig
    print(estimate)                               # peak GB and its parts

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
(a FlashAttention kernel's fp32 dq accumulator, for instance). `fits()` keeps a margin for those.

Attention is traced as the GPU would run it: every CUDA backend (FlashAttention 2/3/4, SDPA's flash kernel,
flex) keeps O(T) memory per head (the output and its log-sum-exp), which the CPU's SDPA flash kernel
reproduces on fake tensors, so a GPU attention backend is traced as `sdpa` (with a dense mask when the model
uses windows or document masks, as SDPA does).
"""

import dataclasses
import weakref

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

GB = 1e9


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

    @property
    def transient_bytes(self) -> int:
        """Activations and temporaries on top of what persists (parameters, gradients, optimizer state)."""
        return self.peak_bytes - self.params_bytes - self.grads_bytes - self.optimizer_bytes

    def __str__(self):
        return (f"estimated peak {self.peak_bytes / GB:.2f} GB per rank at micro-batch {self.micro_batch_rows}x"
                f"{self.seq_len} x {self.micro_batches}: parameters {self.params_bytes / GB:.2f} GB, gradients "
                f"{self.grads_bytes / GB:.2f} GB, optimizer state {self.optimizer_bytes / GB:.2f} GB, activations "
                f"and temporaries {self.transient_bytes / GB:.2f} GB")


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

    if device_type is None:
        device_type = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    rows = cfg.batch_size if batch_size is None else batch_size
    if micro_batches is None:  # gradients persist across micro-batches, activations do not: two show the peak
        micro_batches = min(2, cfg.grad_accum * max(1, cfg.reference_world_size))
    model_cfg = dataclasses.replace(cfg.model, attn_impl=_traced_attention(cfg.model.attn_impl, device_type))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=_uses_bf16(cfg, device_type))

    live = LiveBytes()
    with FakeTensorMode(), live:
        model = GPT(model_cfg)
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
                              micro_batches=micro_batches)


def _uses_bf16(cfg, device_type: str) -> bool:
    """Whether the run computes its matmuls in bf16 (autocast) on a device of this type."""
    return bool(cfg.autocast)
