"""modded-nanogpt's Triton kernels as peers of ours, loaded at run time from a checkout the user gives.

    pytest bench/ --modded-nanogpt /path/to/modded-nanogpt            # the benches' `modded` provider
    python -m bench.gpu_report --out out/r --modded-nanogpt /path/...  # the report's microbenchmarks

KellerJordan/modded-nanogpt keeps its kernels in one file, triton_kernels.py (read at commit f411b3d; pass the
checkout folder or the file). It is executed from the user's checkout, never copied here. The peers:

  XXT, XTX        A·Aᵀ / Aᵀ·A of a (batch of) matrices, one triangle of tiles computed and mirrored (@byronxu99):
                  the Gram products of their Newton-Schulz; ours is kernels.newton_schulz.ns_syrk.
  ba_plus_cAA     b·A + c·A·A of a symmetric A, same scheme: ours is ns_syrk with `add`.
  FusedLinearReLUSquareFunction
                  relu(x·W1ᵀ)²·W2 with the square fused into the matmul epilogue and only relu(.)² saved
                  (@andrewbriand, @jrauvola): ours is kernels.relu2_mlp. W2 is (hidden, model): w_projᵀ.
  FusedSoftcappedCrossEntropy
                  an fp8 (torch._scaled_mm) LM head, then a CUDA C++ kernel for A·sigmoid((z + B)/C) capped
                  logits, the loss and the logits' gradient in one pass; vocabulary fixed at 50304. It is not the
                  same function as ours (tanh or algebraic cap, bf16 matmuls): a speed peer, not a parity one.

What runs where (the reasons the benches and tests give when they skip):
- The file compiles its CUDA C++ cross-entropy kernel when it is imported (torch.cuda._compile_kernel,
  compute_capability "90", include dir /usr/local/cuda/include). Without CUDA that statement raises; everything
  the file defines before it (the Triton kernels above and their launchers) is still defined, so load() keeps the
  partly run module and reports FusedSoftcappedCrossEntropy as unavailable with the error.
- Under Triton's interpreter (TRITON_INTERPRET=1, CPU tensors) XXT, XTX and ba_plus_cAA run in fp32 and fp16
  (bf16 operands give garbage: the interpreter's bf16 arithmetic is wrong). FusedLinearReLUSquareFunction does
  not run there: its launcher asks torch.cuda.get_device_properties("cuda") for the SM count, and its kernel
  is bf16-only (dtype = tl.bfloat16 inside, its epilogue computes in bf16). FusedSoftcappedCrossEntropy needs
  an sm_90 GPU (fp8 matmuls, the compiled CUDA kernel).
"""

import importlib.util
import os
import sys
from dataclasses import dataclass, field

MODULE_NAME = "modded_nanogpt_triton_kernels"
FILE = "triton_kernels.py"
PEERS = ("XXT", "XTX", "ba_plus_cAA", "FusedLinearReLUSquareFunction", "FusedSoftcappedCrossEntropy")
CE_VOCAB = 50304  # FusedSoftcappedCrossEntropy's compiled-in vocabulary (CE_KERNEL_VOCAB_SIZE)

# Why a peer cannot run on a CPU under the interpreter, for skip reasons and the report.
CPU_REASONS = {
    "FusedLinearReLUSquareFunction": "modded-nanogpt's FusedLinearReLUSquare needs a CUDA GPU: its launcher reads "
                                     "torch.cuda.get_device_properties('cuda') and its kernel computes in bf16 only, "
                                     "which Triton's interpreter gets wrong",
    "FusedSoftcappedCrossEntropy": "modded-nanogpt's FusedSoftcappedCrossEntropy needs an sm_90 GPU: a CUDA C++ "
                                   "kernel compiled at import (torch.cuda._compile_kernel) and fp8 torch._scaled_mm",
}


class ModdedUnavailable(Exception):
    """A modded-nanogpt peer cannot run here (the message says why)."""


@dataclass
class Modded:
    """The loaded file: its namespace, and the error that stopped its import part way (None if it finished)."""

    file: str
    namespace: dict = field(repr=False)
    import_error: str | None = None

    def get(self, name: str):
        """The peer `name`, or ModdedUnavailable naming why it is missing."""
        if name in self.namespace:
            return self.namespace[name]
        why = f"{self.file} stopped importing before defining {name}"
        if self.import_error:
            why += f" ({self.import_error})"
        if name in CPU_REASONS:
            why = f"{CPU_REASONS[name]}; {why}"
        raise ModdedUnavailable(why)


def find_file(path) -> str:
    """triton_kernels.py of a checkout (the folder) or the file itself; ModdedUnavailable if there is none."""
    path = os.fspath(path)
    file = os.path.join(path, FILE) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise ModdedUnavailable(f"{path}: no {FILE} there (git clone https://github.com/KellerJordan/modded-nanogpt)")
    return file


_LOADED: dict[str, Modded] = {}


def load(path) -> Modded:
    """Execute the checkout's triton_kernels.py once per process (as module modded_nanogpt_triton_kernels) and
    return what it defined; a statement that raises ends the import there and is recorded (see the docstring)."""
    file = os.path.abspath(find_file(path))
    if file in _LOADED:
        return _LOADED[file]
    spec = importlib.util.spec_from_file_location(MODULE_NAME, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module  # Triton's JIT and torch.library look the module up by name
    error = None
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the CUDA-only tail of the file; what came before stays usable
        error = f"{type(e).__name__}: {e}"
    missing = [n for n in ("XXT", "XTX", "ba_plus_cAA") if not hasattr(module, n)]
    if missing:
        del sys.modules[MODULE_NAME]
        raise ModdedUnavailable(f"{file} is not modded-nanogpt's triton_kernels.py: no {', '.join(missing)}"
                                + (f" (import stopped: {error})" if error else ""))
    _LOADED[file] = Modded(file=file, namespace=vars(module), import_error=error)
    return _LOADED[file]


def kernels_at(path) -> Modded:
    """load(path), or ModdedUnavailable when no checkout was given."""
    if not path:
        raise ModdedUnavailable("no modded-nanogpt checkout given (--modded-nanogpt PATH)")
    return load(path)


def peer(path, name: str, device):
    """The peer `name` from the checkout at `path`, ready to run on `device`; ModdedUnavailable (with the reason)
    when no checkout was given, it does not load, or the peer cannot run on that device."""
    import torch

    if torch.device(device).type != "cuda" and name in CPU_REASONS:
        raise ModdedUnavailable(CPU_REASONS[name])
    return kernels_at(path).get(name)


# ---------------------------------------------------------------------------------------------------
# The Newton-Schulz iteration on their kernels
# ---------------------------------------------------------------------------------------------------


def newton_schulz(kernels: Modded, G, *, steps: int, coefficients: str, eps: float = 1e-7):
    """Our Newton-Schulz (kernels.reference.newton_schulz's normalisation and coefficients) with every product on
    modded-nanogpt's kernels, as their optimizer runs them: a wide X uses A = XXᵀ (XXT), B = b·A + c·A·A
    (ba_plus_cAA) and X ← a·X + B·X (torch.baddbmm); a tall one keeps its orientation, A = XᵀX (XTX) and
    X ← a·X + X·B."""
    import torch

    from kernels.reference import NS_NORM_SCALE, ns_coefficients

    XXT, XTX, ba_plus_cAA = kernels.get("XXT"), kernels.get("XTX"), kernels.get("ba_plus_cAA")
    X = G if G.ndim == 3 else G.unsqueeze(0)
    tall = X.size(-2) > X.size(-1)
    norm = torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True, dtype=torch.float32)
    X = (X.float() / (norm * NS_NORM_SCALE[coefficients] + eps)).to(G.dtype).contiguous()
    m = X.size(-1) if tall else X.size(-2)
    A = X.new_empty(X.size(0), m, m)
    B, C = torch.empty_like(A), torch.empty_like(X)
    for a, b, c in ns_coefficients(coefficients, steps):
        (XTX if tall else XXT)(X, out=A)
        ba_plus_cAA(A, alpha=c, beta=b, out=B)
        if tall:
            torch.baddbmm(X, X, B, beta=a, out=C)
        else:
            torch.baddbmm(X, B, X, beta=a, out=C)
        X, C = C, X
    return X if G.ndim == 3 else X[0]
