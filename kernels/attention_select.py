"""Which attention backend can run where: availability probes, the reasons a backend cannot run, and "auto"'s choice.

kernels/attention.py holds the backends themselves; the trainer (for its log), the benches and the tests ask here
what can run on a device, for a dtype and a head dim. Nothing is imported or compiled until a probe runs.
"""

import importlib

import torch

from kernels.checks import dtype_name
from speedrun.cli import UserError

# Every backend name, in the order available_backends reports them; "auto" resolves to one of these.
BACKENDS = ("eager", "sdpa", "flex", "fa3", "fa2", "fa4")
# What "auto" tries, best first. sdpa runs everywhere, so auto always finds something.
AUTO_ORDER = ("fa3", "fa2", "sdpa")
FA_BACKENDS = ("fa3", "fa2", "fa4")
FA_DTYPES = (torch.bfloat16, torch.float16)
FA_MAX_HEAD_DIM = 256


class AttentionBackendUnavailable(UserError, RuntimeError):
    """An explicitly requested attention backend cannot run here (module missing, wrong device or GPU)."""


# ---------------------------------------------------------------------------------------------------
# Availability probes (the tests monkeypatch probe_import and cuda_capability to simulate machines)
# ---------------------------------------------------------------------------------------------------

# backend -> (module to import, functions it must have, what it is and how to get it)
FA_MODULES = {
    "fa3": ("flash_attn_interface", ("flash_attn_func", "flash_attn_varlen_func"),
            "FlashAttention-3, the hopper/ build of Dao-AILab/flash-attention, not on PyPI: "
            "`cd flash-attention/hopper && python setup.py install`"),
    "fa2": ("flash_attn", ("flash_attn_func", "flash_attn_varlen_func"),
            "FlashAttention-2: `pip install flash-attn --no-build-isolation`"),
    "fa4": ("flash_attn.cute", ("flash_attn_func", "flash_attn_varlen_func"),
            "FlashAttention-4 (CuTe DSL): `pip install flash-attn-4`"),
}

_import_cache: dict[str, tuple[object | None, str | None]] = {}


def probe_import(name: str, needs: tuple[str, ...] = ()) -> tuple[object | None, str | None]:
    """(module, None) when `name` imports and has every attribute in `needs`, else (None, why not). Cached."""
    if name not in _import_cache:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # ImportError, or e.g. an ABI mismatch raised from a C extension
            _import_cache[name] = (None, f"`import {name}` failed ({type(exc).__name__}: {exc})")
        else:
            # e.g. a `flash_attn` namespace holding only flash_attn.cute (FA4) has no flash_attn_func
            missing = [fn for fn in needs if not hasattr(module, fn)]
            _import_cache[name] = (None, f"module {name} has no {', '.join(missing)}") if missing else (module, None)
    return _import_cache[name]


def cuda_capability(device: torch.device) -> tuple[int, int] | None:
    """Compute capability of a CUDA device; None for any other device."""
    if device.type != "cuda":
        return None
    return tuple(torch.cuda.get_device_capability(device))


def flex_module():
    """(torch.nn.attention.flex_attention, None), or (None, why not)."""
    try:
        from torch.nn.attention import flex_attention
    except ImportError as exc:  # torch older than 2.5
        return None, f"needs torch.nn.attention.flex_attention, missing from torch {torch.__version__} ({exc})"
    return flex_attention, None


def _capability_reason(name: str, device: torch.device) -> str | None:
    cap = cuda_capability(device)
    if cap is None:
        return f"needs a CUDA device, the tensors are on {device.type}"
    if name == "fa3" and cap[0] != 9:
        return f"needs a Hopper GPU (sm_90), this one is sm_{cap[0]}{cap[1]}"
    if name == "fa2" and cap < (8, 0):
        return f"needs an Ampere or newer GPU (sm_80+), this one is sm_{cap[0]}{cap[1]}"
    if name == "fa4" and cap[0] < 9:
        return f"needs a Hopper or newer GPU (sm_90+), this one is sm_{cap[0]}{cap[1]}"
    return None


def backend_unavailable_reason(name: str, device: torch.device | str) -> str | None:
    """None when backend `name` can run on `device`; otherwise every reason it cannot, in one sentence."""
    device = torch.device(device)
    if name in ("eager", "sdpa"):
        return None
    if name == "flex":
        return flex_module()[1]
    if name not in FA_BACKENDS:
        raise KeyError(f"unknown attention backend {name!r}; choose from {', '.join(BACKENDS)} or auto")
    reasons = []
    module, needs, how = FA_MODULES[name]
    found, why = probe_import(module, needs)
    if found is None:
        reasons.append(f"needs the {module} module ({how}), which is not usable here: {why}")
    cap_reason = _capability_reason(name, device)
    if cap_reason:
        reasons.append(cap_reason)
    return "; ".join(reasons) or None


def available_backends(device: torch.device | str) -> dict[str, str | None]:
    """{backend: None if it can run on `device`, else the reason it cannot}, for every explicit backend.

    flex on the CPU is reported available: it runs forward (evaluation) there, and refuses inputs that
    require grad with grad enabled, on the call.
    """
    return {name: backend_unavailable_reason(name, device) for name in BACKENDS}


def dtype_unsupported_reason(name: str, dtype: torch.dtype) -> str | None:
    """None when backend `name` accepts inputs of `dtype`; else why not."""
    if name in FA_BACKENDS and dtype not in FA_DTYPES:
        return (f"supports bfloat16 and float16 inputs only, got {dtype_name(dtype)} "
                "(run the model under bf16 autocast, or use sdpa for fp32)")
    if not dtype.is_floating_point:
        return f"needs floating-point inputs, got {dtype}"
    return None


def head_dim_unsupported_reason(name: str, head_dim: int | None) -> str | None:
    """None when backend `name` has a kernel for `head_dim` (None: not checked); else why not."""
    if name not in FA_BACKENDS or head_dim is None:
        return None
    if head_dim > FA_MAX_HEAD_DIM:
        return f"supports head dims up to {FA_MAX_HEAD_DIM}, got {head_dim}"
    if name in ("fa3", "fa4") and head_dim % 8:
        return f"needs a head dim that is a multiple of 8, got {head_dim}"
    return None


def auto_choice(device: torch.device, dtype: torch.dtype, head_dim: int | None) -> tuple[str, list[str]]:
    """(the first backend of AUTO_ORDER that can run, why each better one was skipped)."""
    skipped = []
    for name in AUTO_ORDER:
        why = (backend_unavailable_reason(name, device) or dtype_unsupported_reason(name, dtype)
               or head_dim_unsupported_reason(name, head_dim))
        if why is None:
            return name, skipped
        skipped.append(f"{name} {why}")
    raise AssertionError("unreachable: sdpa runs on every device and float dtype")


def select_backend(requested: str, device: torch.device | str, dtype: torch.dtype,
                   head_dim: int | None = None) -> str:
    """The backend that runs for `requested` ("auto" or a name) on `device` with `dtype` inputs.

    "auto" returns the best backend that can run (fa3 > fa2 > sdpa). An explicit name is returned unchanged
    when it can run, and raises otherwise: AttentionBackendUnavailable for a missing module or an unsuitable
    device, TypeError for an unsupported dtype, ValueError for an unsupported head dim, KeyError for a typo.
    """
    device = torch.device(device)
    if requested == "auto":
        return auto_choice(device, dtype, head_dim)[0]
    if requested not in BACKENDS:
        raise KeyError(f"unknown attention backend {requested!r}; choose from {', '.join(BACKENDS)} or auto")
    why = backend_unavailable_reason(requested, device)
    if why:
        raise AttentionBackendUnavailable(
            f"attention backend {requested!r} is not available: it {why}. Install what is missing, or use "
            "--attention auto|sdpa (auto picks the best available backend and logs its choice)")
    why = dtype_unsupported_reason(requested, dtype)
    if why:
        raise TypeError(f"attention backend {requested!r} {why}")
    why = head_dim_unsupported_reason(requested, head_dim)
    if why:
        raise ValueError(f"attention backend {requested!r} {why}")
    return requested


def reset():
    """Forget the probed imports (tests that simulate other machines call this, through attention.reset_caches)."""
    _import_cache.clear()
