"""Counting what would make the host wait for the GPU, on a machine without one.

On a GPU the host queues kernels and runs ahead; anything that needs a value computed on the device makes it
wait (a "host sync"), and the GPU then idles while the host catches up. Without a GPU the same code runs on
the CPU, where nothing waits, so `HostSyncs` records the calls that would wait:

    Python entry points   Tensor.item, tolist, __bool__, __float__, __int__, __index__, __array__ (numpy),
                          numpy, and cpu() of a tensor on the compute device; torch.cuda.synchronize and
                          torch.cpu.synchronize (the trainer synchronizes through the device's module)
    aten operators        _local_scalar_dense (what item/bool/float/int run, also when called from C++),
                          is_nonzero, equal, nonzero, masked_select, unique, and index/index_put with a boolean
                          mask (their output shape depends on the data, so the host must read it)

Each event is recorded with what the caller says is happening (`where()`, e.g. the trainer's step and whether
a train_step is running). Used by tests/test_train.py, on one process and, through `python -m
tests.host_syncs OUT ARGS...` under torchrun, on every rank of a gloo process group.
"""

import json
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_TENSOR_METHODS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "__array__", "numpy", "cpu")
_DATA_DEPENDENT = {"_local_scalar_dense", "is_nonzero", "equal", "nonzero", "masked_select", "unique_dim",
                   "_unique", "_unique2", "unique_consecutive"}
_MASK_INDEXING = {"index", "index_put", "index_put_", "_index_put_impl_"}


def _has_bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


class _Ops(TorchDispatchMode):
    def __init__(self, record):
        super().__init__()
        self.record = record

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in _DATA_DEPENDENT or (name in _MASK_INDEXING and _has_bool_index(args)):
            self.record(f"aten.{name}")
        return func(*args, **(kwargs or {}))


class HostSyncs:
    """with HostSyncs(device, where=lambda: label) as syncs: ... -> syncs.events: [(label, what), ...]."""

    def __init__(self, device: torch.device, where=lambda: None):
        self.device, self.where = torch.device(device), where
        self.events = []
        self._saved = []
        self._inside = 0  # a patched method calling another (item -> _local_scalar_dense) is one event

    def record(self, what: str):
        if not self._inside:
            self.events.append((self.where(), what))

    def _wrap_method(self, name):
        original = getattr(torch.Tensor, name)
        counter = self

        def wrapper(tensor, *args, **kwargs):
            if name != "cpu" or tensor.device == counter.device:
                counter.record(f"Tensor.{name}")
            counter._inside += 1
            try:
                return original(tensor, *args, **kwargs)
            finally:
                counter._inside -= 1

        return original, wrapper

    def _wrap_function(self, module, name):
        original = getattr(module, name)
        counter = self

        def wrapper(*args, **kwargs):
            counter.record(f"{module.__name__}.{name}")
            return original(*args, **kwargs)

        return original, wrapper

    def __enter__(self):
        for name in _TENSOR_METHODS:
            original, wrapper = self._wrap_method(name)
            self._saved.append((torch.Tensor, name, original))
            setattr(torch.Tensor, name, wrapper)
        for module in (torch.cuda, torch.cpu):
            original, wrapper = self._wrap_function(module, "synchronize")
            self._saved.append((module, "synchronize", original))
            setattr(module, "synchronize", wrapper)
        self._ops = _Ops(self.record)
        self._ops.__enter__()
        return self

    def __exit__(self, *exc):
        self._ops.__exit__(*exc)
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()


def trainer_syncs(trainer) -> "HostSyncs":
    """A HostSyncs whose events are labelled (trainer.step, "train_step" | "loop"): train_step is wrapped to say
    when it runs. Use as a context manager around trainer.run()."""
    phase = ["loop"]
    train_step = trainer.train_step

    def labelled_train_step(step, **kwargs):
        phase[0] = "train_step"
        try:
            return train_step(step, **kwargs)
        finally:
            phase[0] = "loop"

    trainer.train_step = labelled_train_step
    return HostSyncs(trainer.device, where=lambda: (trainer.step, phase[0]))


def _worker(out: str, *args: str):
    """One rank of a torchrun job: run the trainer under trainer_syncs and write this rank's events as JSON."""
    import torch.distributed as dist

    import train
    from speedrun.config import resolve

    trainer = train.Trainer(resolve(list(args)))
    with trainer_syncs(trainer) as syncs:
        trainer.run()
    boundaries = [s for s in range(trainer.cfg.max_steps + 1) if trainer.is_boundary(s)]
    with open(f"{out}/syncs_rank{dist.get_rank()}.json", "w") as f:
        json.dump({"events": syncs.events, "boundaries": boundaries, "max_steps": trainer.cfg.max_steps,
                   "accum": trainer.accum, "world_size": trainer.world_size}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    _worker(*sys.argv[1:])
