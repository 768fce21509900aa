"""Every op's benchmark case, once: what the pytest benches (bench/kernels/) and the GPU report (bench.gpu_report)
time, the FLOP and byte models, and the sm_90 codegen cases.

One module per op (newton_schulz, gram, linear_cross_entropy, relu2_mlp, attention). Each has a case factory,
`<op>_case(provider, <shape>, *, device, dtype, ...) -> Timed`: it builds the inputs and the callable one
provider times (eager = kernels.reference, compile = torch.compile of eager, triton and chunked = the registered
implementations, and the peers: Liger-Kernel, torch.optim.Muon, modded-nanogpt (bench/modded.py)), with its
FLOPs, bytes and the fields that describe the row, or raises Unavailable saying why that provider cannot run it
here. Callers decide what they allow (the benches do not time the Triton interpreter; the report's dry run
does, to prove the path). A module whose op has Triton kernels also lists every launch configuration as
`codegen_cases() -> list[CodegenCase]`, compiled ahead of time for sm_90 by `python -m bench.codegen`. The kernel
files hold only kernels, launchers and autograd.

A case is specialised the way Triton's JIT specialises a launch (`jit_case`): the signature comes from the
kernel's own argument list (JITFunction.arg_names), so it cannot drift from the kernel.
"""

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import torch

from kernels.device import native_bf16
from kernels.tiles import TRITON_DTYPE


class Unavailable(Exception):
    """The provider cannot run this case here (the message says why)."""


class Timed(NamedTuple):
    """One benchmark row's callable and what it is: fn() runs the work once; flops and bytes are one call's;
    fields describe the row (shape, dtype, provider notes)."""

    fn: Callable
    flops: float
    bytes: float
    fields: dict


def case_dtype(device) -> torch.dtype:
    """bf16 where the device multiplies bf16 natively (GPUs, AVX-512 bf16 CPUs), fp32 elsewhere: the dtype the
    model's --dtype=auto trains in there (torch's bf16 matmul is emulated, ~100-300x slower, on AVX2 CPUs)."""
    return torch.bfloat16 if native_bf16(device) else torch.float32


def compiled(fn, backend: str | None = None):
    """torch.compile(fn) with a fresh dynamo cache (each case compiles its own graph, not another shape's entry);
    backend "eager" (the report's dry run) traces without generating code."""
    torch._dynamo.reset()
    return torch.compile(fn, backend=backend) if backend else torch.compile(fn)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class CodegenCase:
    """One kernel configuration to compile ahead of time for sm_90 (bench/codegen.py).

    `signature` uses Triton's AOT syntax ({'x_ptr': '*bf16', 'M': 'i32', 'BLOCK': 'constexpr'}); `divisible`
    names the arguments the JIT marks 16-divisible at the real shape, so the report shows the code a launch
    gets. `flops` and `bytes` are the work of one launch at the 124M shape, for the roofline floor.
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


def jit_case(kernel: str, config: str, fn, args: dict, *, num_warps: int, num_stages: int, flops: float = 0.0,
             bytes: float = 0.0, expect_hgmma: bool = True, extra: dict | None = None) -> CodegenCase:
    """The CodegenCase of launching `fn` with `args`, specialised as Triton's JIT specialises that launch.

    `args` names every argument of `fn`:
    - a tl.constexpr parameter: its value;
    - a pointer: the torch.dtype of its tensor. Taken as 16-byte aligned (torch allocations are, and the
      launchers slice tensors at row multiples of 16 bytes), so it is marked 16-divisible;
    - an int (size, stride, index): 1 becomes constexpr 1; a multiple of 16 is marked 16-divisible; the type is
      i32, or i64 beyond its range;
    - a float: an fp32 scalar.
    """
    names = list(fn.arg_names)
    unknown, missing = set(args) - set(names), [n for n in names if n not in args]
    if unknown or missing:
        raise ValueError(f"{fn.__name__}: arguments {sorted(unknown)} are not parameters, {missing} are not given")
    # The tl.constexpr parameters, read from the annotations as Triton does (this works for the interpreter's
    # InterpretedFunction too, which has no `constexprs`).
    parameters = inspect.signature(fn.fn).parameters
    declared = {name for name, p in parameters.items() if "constexpr" in str(p.annotation)}
    signature, constexprs, divisible = {}, {}, []
    for name in names:
        value = args[name]
        if name in declared or (type(value) is int and value == 1):
            signature[name], constexprs[name] = "constexpr", value
        elif isinstance(value, torch.dtype):
            signature[name] = "*" + TRITON_DTYPE[value]
            divisible.append(name)
        elif type(value) is int:
            signature[name] = "i32" if -2**31 <= value < 2**31 else "i64"
            if value % 16 == 0:
                divisible.append(name)
        elif type(value) is float:
            signature[name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: argument {name} = {value!r} is not a dtype, int, float or constexpr")
    return CodegenCase(kernel=kernel, config=config, fn=fn, signature=signature, constexprs=constexprs,
                       divisible=tuple(divisible), num_warps=num_warps, num_stages=num_stages, flops=float(flops),
                       bytes=float(bytes), expect_hgmma=expect_hgmma, extra=extra or {})
