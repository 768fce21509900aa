"""Input and buffer checks of the launchers: a bad tensor raises an error that names the argument and the problem,
before anything reaches Triton (where it would crash, or give a silently wrong answer).

    check_tensor         type, rank, dtype, non-empty, contiguity of one argument
    check_same_device    all tensors on one device
    check_triton_device  ... and a device the Triton kernels run on (CUDA, or the CPU under the interpreter)
    same_dtype           all tensors of one dtype
    check_out            an output buffer: allocated when None, else checked against shape, dtype and device
    check_workspace      every buffer of a workspace dataclass
"""

import torch
from torch._subclasses.fake_tensor import is_fake

from kernels.device import InterpreterUnavailable, interpreter_unavailable_reason, is_interpreter


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_tensor(t, name: str, *, ndim=None, dtypes=None, contiguous: bool = False, nonempty: bool = True):
    """Raise a TypeError/ValueError naming `name` when `t` does not match the launcher's contract."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.ndim not in allowed:
            raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} dims, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(dtype_name(d) for d in dtypes)
        raise TypeError(f"{name} has dtype {t.dtype}; supported: {names}")
    if nonempty and t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (shape {tuple(t.shape)}, strides {t.stride()}); "
                         "call .contiguous()")


def check_same_device(*tensors_and_names) -> torch.device:
    """The one device of every tensor; called as check_same_device((x, "x"), (w, "w"), ...)."""
    devices = {t.device for t, _ in tensors_and_names}
    if len(devices) > 1:
        listing = ", ".join(f"{n} on {t.device}" for t, n in tensors_and_names)
        raise ValueError(f"all inputs must be on one device: {listing}")
    return devices.pop()


def check_triton_device(*tensors_and_names):
    """Triton kernels need CUDA tensors, or CPU tensors under the interpreter; all on one device.

    Called as check_triton_device((x, "x"), (w, "w"), ...).
    """
    device = check_same_device(*tensors_and_names)
    if device.type == "cuda":
        return device
    # memory.py's trace runs on fake tensors: no data, the ops' fake implementations run. (Under torch.compile
    # every tensor is fake too, and is_fake cannot be traced: there the device rule applies as in eager.)
    if not torch.compiler.is_compiling() and all(is_fake(t) for t, _ in tensors_and_names):
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


def check_out(out, name: str, shape, *, dtype: torch.dtype, device, contiguous: bool = True) -> torch.Tensor:
    """An output buffer the launcher will fill: a new tensor when `out` is None, else `out` after checking that it
    has exactly this shape, dtype and device (and is contiguous, unless the launcher writes through strides)."""
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    check_tensor(out, name, dtypes=(dtype,), contiguous=contiguous)
    if tuple(out.shape) != tuple(shape) or out.device != torch.device(device):
        raise ValueError(f"{name} must have shape {tuple(shape)} on {device}, got {tuple(out.shape)} on {out.device}")
    return out


def check_workspace(ws, shapes: dict, *, dtype: torch.dtype, device, builder: str):
    """Every buffer ws.<name> of `shapes` ({name: shape}) is a contiguous tensor of that shape, dtype and device;
    else a ValueError naming the buffer and the function that builds a right one."""
    for name, shape in shapes.items():
        t = getattr(ws, name)
        if (t is None or tuple(t.shape) != tuple(shape) or t.dtype != dtype or t.device != torch.device(device)
                or not t.is_contiguous()):
            got = "None" if t is None else f"{tuple(t.shape)} {t.dtype} on {t.device}"
            raise ValueError(f"workspace.{name} must be a contiguous {tuple(shape)} {dtype} tensor on {device}, got "
                             f"{got}; build it with {builder}()")
