"""Helpers shared by every kernel launcher: backend detection and input checks.

The launchers call these before touching Triton so that a bad tensor produces an error that names the
argument and the problem instead of a crash (or a silent wrong answer) inside a kernel.
"""

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import triton
import triton.language as tl


def is_interpreter() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


class InterpreterUnavailable(RuntimeError):
    """Triton's interpreter cannot run kernels with the installed packages (see interpreter_unavailable_reason)."""


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def interpreter_unavailable_reason() -> str | None:
    """Why Triton's interpreter cannot run our kernels here, or None.

    Triton 3.6's interpreter (and, unverified, 3.7/3.8) converts numpy arrays to Python scalars in a way numpy
    2.4 rejects ("only 0-dimensional arrays can be converted to Python scalars"): every interpreted matmul
    kernel fails. numpy < 2.4 or triton >= 3.9 both work. GPU runs do not use the interpreter.
    """
    if _version(triton.__version__) < (3, 9) and _version(np.__version__) >= (2, 4):
        return (f"Triton {triton.__version__}'s interpreter fails with numpy {np.__version__} (\"only 0-dimensional "
                "arrays can be converted to Python scalars\"); to run Triton kernels on the CPU install "
                "'numpy<2.4' or 'triton>=3.9'")
    return None


def cpu_capability() -> str:
    """The SIMD level torch's CPU kernels run at: 'AVX512', 'AVX2', ... (ATEN_CPU_CAPABILITY can lower it)."""
    return torch.backends.cpu.get_cpu_capability()


def native_bf16(device) -> bool:
    """True when `device` runs bf16 matmuls natively (fast): CUDA GPUs with bf16, and CPUs where oneDNN has a
    bf16 path (AVX-512 bf16 / AMX). On other CPUs (AVX2 only) torch's bf16 matmul is emulated and runs about
    100-300x slower than fp32, so every "auto" precision choice falls back to fp32 there."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def check_tensor(t, name: str, *, ndim=None, dtypes=None, contiguous: bool = False, nonempty: bool = True):
    """Raise a TypeError/ValueError naming `name` when `t` does not match the launcher's contract."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.ndim not in allowed:
            raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} dims, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{name} has dtype {t.dtype}; supported: {names}")
    if nonempty and t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (shape {tuple(t.shape)}, strides {t.stride()}); "
                         "call .contiguous()")


def check_triton_device(*tensors_and_names):
    """Triton kernels need CUDA tensors, or CPU tensors under the interpreter; all on one device.

    Called as check_triton_device((x, "x"), (w, "w"), ...).
    """
    devices = {t.device for t, _ in tensors_and_names}
    if len(devices) > 1:
        listing = ", ".join(f"{n} on {t.device}" for t, n in tensors_and_names)
        raise ValueError(f"all inputs must be on one device: {listing}")
    device = devices.pop()
    if device.type == "cuda":
        return device
    if device.type == "cpu" and is_interpreter():
        why = interpreter_unavailable_reason()
        if why:
            raise InterpreterUnavailable(why)
        return device
    names = ", ".join(n for _, n in tensors_and_names)
    raise RuntimeError(
        f"the triton implementation needs CUDA tensors ({names} are on {device}); "
        "set TRITON_INTERPRET=1 before importing triton to run it on the CPU, or use impl='eager'"
    )


def same_dtype(*tensors_and_names):
    dtypes = {t.dtype for t, _ in tensors_and_names}
    if len(dtypes) > 1:
        listing = ", ".join(f"{n}: {t.dtype}" for t, n in tensors_and_names)
        raise TypeError(f"inputs must share one dtype, got {listing}")


@dataclass
class CodegenCase:
    """One kernel configuration to compile ahead of time for sm_90 (see bench/codegen.py).

    `signature` uses Triton's AOT syntax ({'x_ptr': '*bf16', 'M': 'i32', 'BLOCK': 'constexpr'});
    `divisible` names the arguments the JIT would mark 16-divisible at the real shape (pointers,
    sizes and strides that are multiples of 16), so that the report shows the code a launch gets.
    `flops` and `bytes` are the work of one launch at the 124M shape, for the roofline floor.
    """

    kernel: str
    config: str
    fn: Callable
    signature: dict
    constexprs: dict
    divisible: tuple = ()
    num_warps: int = 4
    num_stages: int = 3
    flops: float = 0.0
    bytes: float = 0.0
    expect_hgmma: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


@triton.jit
def round_to_bf16_grid(x):
    """Round fp32 `x` to the nearest bf16 value, ties to even, keeping fp32 type (NaN passes through).

    The interpreter's fp32->bf16 cast truncates (shared/PLATFORM.md) while the GPU's cvt.rn rounds to
    nearest even; after this the cast is exact, so interpreted results carry the GPU's rounding.
    """
    bits = x.to(tl.int32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536  # -65536 = 0xFFFF0000: clear 16 low mantissa bits
    return tl.where(x != x, x, rounded.to(tl.float32, bitcast=True))
