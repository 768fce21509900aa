"""Helpers shared by the kernel files: backend detection, input and buffer checks, tile configs, numerics switches,
and the Triton building blocks every matmul kernel uses (the K loop, the rounding store).

The launchers call the checks before touching Triton so that a bad tensor produces an error that names the
argument and the problem instead of a crash (or a silent wrong answer) inside a kernel.
"""

import os
import re
import tempfile
from dataclasses import dataclass

import numpy as np
import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake


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


separate_inductor_cache()  # at import, before this module's first torch.compiler use imports torch._dynamo


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



def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------------------------------------------
# Custom ops: the namespace, autocast at the entry points, and outputs that are not computed
# ---------------------------------------------------------------------------------------------------

# Every kernel is registered with torch.library under this namespace (torch.ops.speedrun.<op>): an opaque op
# that torch.compile keeps in its graph (no graph break, and Dynamo never traces the Triton launches, which it
# cannot do under the interpreter), with a fake implementation for shapes and an autograd formula.
OP_NAMESPACE = "speedrun"


def op_name(name: str) -> str:
    return f"{OP_NAMESPACE}::{name}"


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype torch.autocast gives matmuls on `device` right now; None outside autocast. (torch.compile traces
    both calls, so an entry point that asks this compiles to the right cast for the region it runs in.)"""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


def autocast_inputs(*tensors):
    """The tensors as autocast would hand them to a matmul: under autocast on their device, floating-point tensors
    other than float64 (autocast leaves those alone) cast to the autocast dtype; else unchanged. None passes.

    The entry points of the custom ops call this, so a model calls them under autocast without casting by hand:
    the dispatcher's autocast key falls through to an op with no autocast rule, with its inputs as they are.
    """
    first = next(t for t in tensors if t is not None)
    dtype = autocast_dtype(first.device)
    if dtype is None:
        return tensors
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t
                 for t in tensors)


def absent(like: torch.Tensor) -> torch.Tensor:
    """The stand-in for an output an op did not compute (a gradient no input needs): an empty tensor, since a
    custom op's schema has no optional returns."""
    return like.new_empty(0)


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


# ---------------------------------------------------------------------------------------------------
# Configs and numerics switches
# ---------------------------------------------------------------------------------------------------

# Triton's name for each torch dtype a kernel argument can have (pointer element types, AOT signatures).
TRITON_DTYPE = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int64: "i64",
                torch.int32: "i32"}

# Streaming multiprocessors of an H100 SXM. The config heuristics only need "enough programs to fill the GPU";
# a fixed number keeps their choice independent of the device (and possible on the CPU, in tests).
NUM_SMS_HINT = 132

# Shared memory one thread block may use on sm_90 (H100, H200).
SM90_SHARED_BYTES = 227 * 1024


@dataclass(frozen=True)
class Tile:
    """Tiles and launch settings of one matmul kernel: (block_m, block_n) outputs per program, reduced block_k
    at a time, `warps` warps, `stages` pipelined loads of the operand tiles."""

    block_m: int
    block_n: int
    block_k: int
    warps: int
    stages: int

    def __post_init__(self):
        for name in ("block_m", "block_n", "block_k"):
            size = getattr(self, name)
            if size < 16 or size & (size - 1):
                raise ValueError(f"Tile.{name} must be a power of two >= 16 (tl.dot's smallest tile), got {size}")
        if self.warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"Tile.warps must be 1, 2, 4, 8 or 16, got {self.warps}")
        if self.stages < 1:
            raise ValueError(f"Tile.stages must be >= 1, got {self.stages}")

    @property
    def name(self) -> str:
        return f"{self.block_m}x{self.block_n}x{self.block_k} w{self.warps} s{self.stages}"

    def meta(self) -> dict:
        """The kernels' tile constexprs."""
        return {"BLOCK_M": self.block_m, "BLOCK_N": self.block_n, "BLOCK_K": self.block_k}

    def launch(self) -> dict:
        return {"num_warps": self.warps, "num_stages": self.stages}

    def smem_bytes(self, itemsize: int) -> int:
        """Bytes of the pipelined A and B tiles, what dominates a matmul's shared memory (bench.codegen measures it)."""
        return self.stages * (self.block_m + self.block_n) * self.block_k * itemsize


def lookup_config(configs: dict, name: str, dtype: torch.dtype, op: str):
    """configs[(name, dtype)], or a ValueError listing the (name, dtype) pairs that exist."""
    try:
        return configs[(name, dtype)]
    except KeyError:
        have = ", ".join(f"{n} ({dtype_name(d)})" for n, d in configs)
        raise ValueError(f"no {op} config {name!r} for {dtype}; configs: {have}") from None


def precision_flags(dtype: torch.dtype, *, interpreter: bool | None = None) -> dict:
    """The numerics switches of the matmul kernels for inputs of `dtype` (interpreter: default is_interpreter()).

    UPCAST: convert loaded tiles to fp32 before tl.dot; under the interpreter bf16 arithmetic and bf16 tl.dot
    are wrong (bf16 is held as raw bits there). TF32X3: fp32 operands as three TF32 tensor-core products, about
    fp32 accuracy (the GPU fp32 path; torch's fp32 matmul does not use TF32 either). RNE_BF16: round to nearest
    even (round_to_bf16_grid) before a bf16 store, because the interpreter's fp32->bf16 cast truncates.
    """
    interp = is_interpreter() if interpreter is None else interpreter
    return {"UPCAST": interp, "TF32X3": dtype == torch.float32 and not interp,
            "RNE_BF16": dtype == torch.bfloat16 and interp}


# ---------------------------------------------------------------------------------------------------
# Triton building blocks
# ---------------------------------------------------------------------------------------------------


@triton.jit
def round_to_bf16_grid(x):
    """Round fp32 `x` to the nearest bf16 value, ties to even, keeping fp32 type (NaN and inf pass through).

    The interpreter's fp32->bf16 cast truncates while the GPU's cvt.rn rounds to nearest even; after this the
    cast is exact, so interpreted results carry the GPU's rounding.
    """
    bits = x.to(tl.int32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536  # -65536 = 0xFFFF0000: clear 16 low mantissa bits
    return tl.where(x != x, x, rounded.to(tl.float32, bitcast=True))


@triton.jit
def as_operand(x, DTYPE: tl.constexpr, UPCAST: tl.constexpr):
    """An fp32 tile as a tensor-core operand of DTYPE: cast (round to nearest even) on the GPU; under the
    interpreter (UPCAST) rounded to DTYPE's grid but kept fp32, since bf16 math is wrong there."""
    if DTYPE == tl.float32:
        y = x
    elif not UPCAST:
        y = x.to(DTYPE)
    elif DTYPE == tl.bfloat16:
        y = round_to_bf16_grid(x)
    else:
        y = x.to(DTYPE).to(tl.float32)
    return y


@triton.jit
def tile_matmul(acc, a_ptrs, b_ptrs, in_m, in_n, K, step_a, step_b, BLOCK_K: tl.constexpr,
                A_T: tl.constexpr, B_T: tl.constexpr, ROUND_A: tl.constexpr, UPCAST: tl.constexpr,
                TF32X3: tl.constexpr):
    """acc + A[rows, :K]·B[:K, cols] for one output tile, in fp32, BLOCK_K of the reduction at a time.

    a_ptrs points at the first chunk of A's rows, (BLOCK_M, BLOCK_K), or at its transpose (BLOCK_K, BLOCK_M)
    when A_T (A stored with its rows contiguous); b_ptrs at B's first (BLOCK_K, BLOCK_N) chunk, or its transpose
    when B_T. They advance by step_a / step_b elements a chunk. in_m / in_n mask the tile's rows / columns; the
    K edge is masked here (loads outside give 0). ROUND_A: A is fp32 and is rounded to B's dtype first (as
    eager autograd rounds a gradient before its matmul). UPCAST / TF32X3: see precision_flags().
    """
    rk = tl.arange(0, BLOCK_K)
    for k0 in range(0, K, BLOCK_K):
        in_k = (k0 + rk) < K
        if A_T:
            a = tl.load(a_ptrs, mask=in_k[:, None] & in_m[None, :], other=0.0)
        else:
            a = tl.load(a_ptrs, mask=in_m[:, None] & in_k[None, :], other=0.0)
        if B_T:
            b = tl.load(b_ptrs, mask=in_n[:, None] & in_k[None, :], other=0.0)
        else:
            b = tl.load(b_ptrs, mask=in_k[:, None] & in_n[None, :], other=0.0)
        if ROUND_A:
            a = as_operand(a, b_ptrs.dtype.element_ty, UPCAST)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        if A_T:
            a = tl.trans(a)
        if B_T:
            b = tl.trans(b)
        if TF32X3:
            acc = tl.dot(a, b, acc, input_precision="tf32x3")
        else:
            acc = tl.dot(a, b, acc)
        a_ptrs += step_a
        b_ptrs += step_b
    return acc


@triton.jit
def store_tile(ptrs, x, mask, RNE_BF16: tl.constexpr):
    """Store fp32 `x` at `ptrs` (masked) in the pointers' dtype, one rounding. RNE_BF16 (precision_flags): round to
    the bf16 grid first when that dtype is bf16."""
    if RNE_BF16:
        if ptrs.dtype.element_ty == tl.bfloat16:
            x = round_to_bf16_grid(x)
    tl.store(ptrs, x.to(ptrs.dtype.element_ty), mask=mask)
