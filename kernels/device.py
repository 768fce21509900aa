"""What the machine can do: the probes that the optimizers, the configuration, the benchmarks and the tests ask.

    is_interpreter()                   Triton runs kernels on the CPU through its interpreter (TRITON_INTERPRET=1)
    interpreter_unavailable_reason()   why the interpreter cannot run kernels with the installed packages, or None
    InterpreterUnavailable             raised by a launcher when that is so (the tests skip on it)
    native_bf16(device)                bf16 matmuls run natively (fast) on `device`
    cpu_capability()                   the SIMD level torch's CPU kernels run at ('AVX512', 'AVX2', ...)
    separate_inductor_cache()          one inductor cache directory per CPU capability (applied at import)

Importing this module applies separate_inductor_cache(); nothing else happens at import (Triton and numpy are
imported only when interpreter_unavailable_reason() runs).
"""

import os
import re
import tempfile

import torch


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
    import numpy as np
    import triton

    if _version(triton.__version__) < (3, 9) and _version(np.__version__) >= (2, 4):
        return (f"Triton {triton.__version__}'s interpreter fails with numpy {np.__version__} (\"only 0-dimensional "
                "arrays can be converted to Python scalars\"); to run Triton kernels on the CPU install "
                "'numpy<2.4' or 'triton>=3.9'")
    return None


def cpu_capability() -> str:
    """The SIMD level torch's CPU kernels run at: 'AVX512', 'AVX2', ... (ATEN_CPU_CAPABILITY can lower it)."""
    return torch.backends.cpu.get_cpu_capability()


def separate_inductor_cache() -> None:
    """Give inductor's on-disk cache a directory per CPU capability, <tmp>/torchinductor_uid<uid>_<capability>,
    unless TORCHINDUCTOR_CACHE_DIR is set. Called when this module is imported (by anything of the project that
    touches a kernel), before anything imports torch._dynamo.

    Inductor's default cache (/tmp/torchinductor_<user>, shared by every process) does not separate what a process
    forced to AVX2 (ATEN_CPU_CAPABILITY=avx2, how the project emulates an AVX2-only machine) compiles from what the
    machine's own AVX-512 compiles: measured with torch 2.13, a graph cached by one capability and loaded by the
    other was wrong (the chunked loss's row sums off by ~0.8, a compiled rms_norm by ~3-7; its FX graph cache key
    leaves the vector ISA out), and the other way round glibc aborted at exit ("malloc(): unaligned tcache chunk
    detected"). Subprocesses inherit the setting; one forced to another capability must drop it first. (Importing
    torch._dynamo sets inductor's default, so later calls change nothing.)"""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(
        tempfile.gettempdir(), f"torchinductor_uid{os.getuid()}_{cpu_capability().lower()}"))


separate_inductor_cache()  # at import, before the project's first torch.compiler use imports torch._dynamo


def native_bf16(device) -> bool:
    """True when `device` runs bf16 matmuls natively (fast): CUDA GPUs with bf16, and CPUs where oneDNN has a
    bf16 path (AVX-512 bf16 / AMX). On other CPUs (AVX2 only) torch's bf16 matmul is emulated and runs about
    100-300x slower than fp32, so every "auto" precision choice falls back to fp32 there."""
    return _native_bf16(torch.device(device).type)


# A constant of the process (the hardware does not change under it): torch.compile takes the answer at trace time
# instead of tracing the probe, which returns a bool and would break a fullgraph trace (the eager Newton-Schulz
# asks it inside the optimizer's compiled update).
@torch.compiler.assume_constant_result
def _native_bf16(device_type: str) -> bool:
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False
