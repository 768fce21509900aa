"""Launch configurations of the Triton matmul kernels: the Tile of one kernel, config lookup by (family, dtype),
the numerics switches a launch passes as constexprs, and the sm_90 facts the config choices are sized for."""

from dataclasses import dataclass

import torch

from kernels.checks import dtype_name
from kernels.device import is_interpreter

# Triton's name for each torch dtype a kernel argument can have (pointer element types, AOT signatures).
TRITON_DTYPE = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int64: "i64",
                torch.int32: "i32"}

# Streaming multiprocessors of an H100 SXM. The config heuristics only need "enough programs to fill the GPU";
# a fixed number keeps their choice independent of the device (and possible on the CPU, in tests).
NUM_SMS_HINT = 132

# Shared memory one thread block may use on sm_90 (H100, H200).
SM90_SHARED_BYTES = 227 * 1024

# CUDA caps grid axis 1 (the batch axis of the batched kernels) at 65535 programs.
MAX_GRID_AXIS1 = 65535


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
    even (kernels.jit.matmul.round_to_bf16_grid) before a bf16 store, because the interpreter's fp32->bf16 cast
    truncates.
    """
    interp = is_interpreter() if interpreter is None else interpreter
    return {"UPCAST": interp, "TF32X3": dtype == torch.float32 and not interp,
            "RNE_BF16": dtype == torch.bfloat16 and interp}
