"""The CPU stand-ins a CUDA/NCCL script runs under: torch.compile as the identity, a one-process gloo group,
CUDA devices and pinned memory redirected to the CPU, torch.cuda's device calls as no-ops, a fixed thread count;
optionally bf16 GEMMs emulated (fp32 GEMM of the bf16 operands, rounded to bf16). Also the token shards the
script's own loader reads.
"""

import contextlib
import math
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

from . import DATA_VOCAB, ROWS, SEQ, TRAIN_SEED, VAL_SEED, VAL_TOKENS


def _is_cuda(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return isinstance(device, str) and device.startswith("cuda")


class CpuMode(TorchFunctionMode):
    """CUDA devices and pinned memory redirected to the CPU; bf16 x bf16 matmuls counted, or emulated for the peer
    (fp32 GEMM of the bf16 operands, exactly representable, rounded to bf16: a bf16 GEMM summed in another order)."""

    MATMULS = (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm, torch.bmm)

    def __init__(self, emulate_bf16: bool):
        super().__init__()
        self.emulate, self.bf16_matmuls = emulate_bf16, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in self.MATMULS and len(args) >= 2 and all(
                isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16 for a in args[:2]):
            self.bf16_matmuls += 1
            if self.emulate:
                return torch.matmul(args[0].float(), args[1].float()).bfloat16()
        if func in (torch.Tensor.cuda, torch.Tensor.pin_memory):
            return args[0]
        if "device" in kwargs and _is_cuda(kwargs["device"]):
            kwargs["device"] = "cpu"
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


def _identity_compile(fn=None, *args, **kwargs):
    return fn if callable(fn) else (lambda f: f)


@contextlib.contextmanager
def patched(workdir: Path, argv0: str, env: dict, threads: int, on_optimizer):
    """The CPU stand-ins for what the script asks of CUDA, NCCL and torch.compile; restored afterwards."""
    saved = []

    def setattr_(obj, name, value):
        saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    init_process_group_ = dist.init_process_group

    def init_process_group(*args, **kwargs):
        if not dist.is_initialized():
            init_process_group_("gloo", store=dist.HashStore(), rank=0, world_size=1)

    all_reduce = dist.all_reduce

    def all_reduce_(tensor, op=dist.ReduceOp.SUM, *args, **kwargs):
        if op == dist.ReduceOp.AVG:  # gloo has no AVG; with one process AVG and SUM are the identity
            op = dist.ReduceOp.SUM
        return all_reduce(tensor, op, *args, **kwargs)

    optimizer_init = torch.optim.Optimizer.__init__

    def optimizer_init_(self, *args, **kwargs):
        optimizer_init(self, *args, **kwargs)
        on_optimizer(self)

    old_env = {k: os.environ.get(k) for k in [*env, "LOCAL_RANK", "RANK", "WORLD_SIZE"]}
    old_argv, old_cwd, old_threads = sys.argv, os.getcwd(), torch.get_num_threads()
    try:
        os.environ.update({"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1", **{k: str(v) for k, v in env.items()}})
        sys.argv = [argv0]
        os.chdir(workdir)
        torch.set_num_threads(threads)
        setattr_(torch, "compile", _identity_compile)
        setattr_(torch.nn.Module, "compile", lambda self, *a, **k: None)
        setattr_(torch.nn.Module, "cuda", lambda self, *a, **k: self)
        for name, value in {"set_device": None, "synchronize": None, "manual_seed": None, "manual_seed_all": None,
                            "empty_cache": None, "reset_peak_memory_stats": None, "get_device_name": "cpu",
                            "memory_allocated": 0, "max_memory_allocated": 0, "max_memory_reserved": 0,
                            "memory_reserved": 0}.items():
            setattr_(torch.cuda, name, lambda *a, _v=value, **k: _v)
        setattr_(dist, "init_process_group", init_process_group)
        setattr_(dist, "all_reduce", all_reduce_)
        setattr_(torch.optim.Optimizer, "__init__", optimizer_init_)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)
        if dist.is_initialized():
            dist.destroy_process_group()
        torch.set_num_threads(old_threads)
        os.chdir(old_cwd)
        sys.argv = old_argv
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def write_shard(path: Path, tokens: torch.Tensor):
    """The speedrun's shard format: 256 int32 header (magic 20240520, version 1, token count), uint16 tokens."""
    header = torch.zeros(256, dtype=torch.int32)
    header[0], header[1], header[2] = 20240520, 1, len(tokens)
    path.write_bytes(header.numpy().tobytes() + tokens.to(torch.int32).numpy().astype("uint16").tobytes())


def streams(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The train stream (1024 tokens, more in whole 1024s when the steps need them) and the val stream."""
    need = steps * ROWS * SEQ + 2
    train_tokens = 1024 * math.ceil(need / 1024)
    train = torch.randint(0, DATA_VOCAB, (train_tokens,), generator=torch.Generator().manual_seed(TRAIN_SEED))
    val = torch.randint(0, DATA_VOCAB, (2 * VAL_TOKENS + 1,), generator=torch.Generator().manual_seed(VAL_SEED))
    return train, val
