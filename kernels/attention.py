"""Causal self-attention backends on the model's layout: q, k, v (B, T, H, D) -> (B, T, H, D).

Registered under op "attention" (kernels.registry), next to "eager" (kernels/reference.py, the oracle):

| backend | runs on                        | dtypes        | causal | window        | documents          | backward  |
|---------|--------------------------------|---------------|--------|---------------|--------------------|-----------|
| eager   | anywhere (the reference)       | any float     | yes    | dense mask    | dense mask         | yes       |
| sdpa    | anywhere                       | any float     | yes    | dense mask    | dense mask         | yes       |
| flex    | anywhere (compiled on CUDA)    | any float     | yes    | block mask    | block mask         | CUDA only |
| fa3     | CUDA sm_90, flash_attn_interface | bf16, fp16  | yes    | window_size   | varlen cu_seqlens  | yes       |
| fa2     | CUDA sm_80+, flash_attn        | bf16, fp16    | yes    | window_size   | varlen cu_seqlens  | yes       |
| fa4     | CUDA sm_90+, flash_attn.cute   | bf16, fp16    | yes    | window_size   | varlen cu_seqlens  | yes       |
| auto    | fa3 on sm_90 if it imports, else fa2 on CUDA if it imports, else sdpa (fa4: explicit only, unverified) |

sdpa: plain causal uses is_causal (SDPA's fused kernels on CUDA); a window or document mask becomes a dense
boolean (1 or B, 1, T, T) mask, which on CUDA rules out SDPA's flash kernel. flex: forward only on the CPU
(torch has no CPU backward), so inputs that require grad are refused there with grad enabled. FlashAttention:
head dim <= 256 (a multiple of 8 for fa3/fa4); fp32 is refused, never cast silently.

Every backend implements kernels.reference.attention_mask: causal keeps j <= i; window w keeps i - w < j (the
query and the w-1 keys before it; FlashAttention window_size=(w-1, 0)); doc_ids (B, T), non-decreasing along T
(the model's cumsum of <|endoftext|> flags), keeps keys of the same document.

An explicit request for a backend that cannot run here (module missing, wrong GPU, CPU tensors) raises
AttentionBackendUnavailable naming what is missing, on the first call; an unsupported input (fp32 into
FlashAttention, a head dim it has no kernel for) raises TypeError/ValueError. Nothing falls back silently:
only "auto" chooses, and it logs its choice once per (device, dtype, head dim). available_backends(device) and
select_backend(requested, device, dtype) expose the same decisions to the trainer (for its log) and the tests.

Copies: FlashAttention reads (B, T, H, D) as is; document masking flattens (B, T) into one token axis as a view
for the varlen kernels. sdpa and flex want (B, H, T, D): they get transposed views and return a transposed view,
so the model's reshape(B, T, H·D) copies the output once (as for eager).

Nothing from FlashAttention is imported, and nothing is compiled or launched, at import time.
"""

import importlib
import logging
import weakref
from collections import OrderedDict
from typing import Callable

import torch
import torch.nn.functional as F

from kernels import registry

logger = logging.getLogger(__name__)

# Every backend name, in the order available_backends reports them; "auto" resolves to one of these.
BACKENDS = ("eager", "sdpa", "flex", "fa3", "fa2", "fa4")
# What "auto" tries, best first. sdpa runs everywhere, so auto always finds something.
AUTO_ORDER = ("fa3", "fa2", "sdpa")
FA_BACKENDS = ("fa3", "fa2", "fa4")
FA_DTYPES = (torch.bfloat16, torch.float16)
FA_MAX_HEAD_DIM = 256


class AttentionBackendUnavailable(RuntimeError):
    """An explicitly requested attention backend cannot run here (module missing, wrong device or GPU)."""


# ---------------------------------------------------------------------------------------------------
# Availability probes (the tests monkeypatch _import_module and _cuda_capability to simulate machines)
# ---------------------------------------------------------------------------------------------------

# backend -> (module to import, functions it must have, what it is and how to get it)
_FA_MODULES = {
    "fa3": ("flash_attn_interface", ("flash_attn_func", "flash_attn_varlen_func"),
            "FlashAttention-3, the hopper/ build of Dao-AILab/flash-attention, not on PyPI: "
            "`cd flash-attention/hopper && python setup.py install`"),
    "fa2": ("flash_attn", ("flash_attn_func", "flash_attn_varlen_func"),
            "FlashAttention-2: `pip install flash-attn --no-build-isolation`"),
    "fa4": ("flash_attn.cute", ("flash_attn_func", "flash_attn_varlen_func"),
            "FlashAttention-4 (CuTe DSL): `pip install flash-attn-4`"),
}

_import_cache: dict[str, tuple[object | None, str | None]] = {}


def _import_module(name: str, needs: tuple[str, ...] = ()) -> tuple[object | None, str | None]:
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


def _cuda_capability(device: torch.device) -> tuple[int, int] | None:
    """Compute capability of a CUDA device; None for any other device."""
    if device.type != "cuda":
        return None
    return tuple(torch.cuda.get_device_capability(device))


def _flex_module():
    """(torch.nn.attention.flex_attention, None), or (None, why not)."""
    try:
        from torch.nn.attention import flex_attention
    except ImportError as exc:  # torch older than 2.5
        return None, f"needs torch.nn.attention.flex_attention, missing from torch {torch.__version__} ({exc})"
    return flex_attention, None


def _capability_reason(name: str, device: torch.device) -> str | None:
    cap = _cuda_capability(device)
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
        return _flex_module()[1]
    if name not in FA_BACKENDS:
        raise KeyError(f"unknown attention backend {name!r}; choose from {', '.join(BACKENDS)} or auto")
    reasons = []
    module, needs, how = _FA_MODULES[name]
    found, why = _import_module(module, needs)
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
        return (f"supports bfloat16 and float16 inputs only, got {str(dtype).removeprefix('torch.')} "
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


def _auto_choice(device: torch.device, dtype: torch.dtype, head_dim: int | None) -> tuple[str, list[str]]:
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
        return _auto_choice(device, dtype, head_dim)[0]
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


# ---------------------------------------------------------------------------------------------------
# Input checks, masks and varlen metadata shared by the backends
# ---------------------------------------------------------------------------------------------------


def _check_inputs(q, k, v, window, doc_ids):
    for t, name in ((q, "q"), (k, "k"), (v, "v")):
        if not isinstance(t, torch.Tensor) or t.ndim != 4:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"attention expects {name} of shape (B, T, H, D), got {got}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"q, k, v must have one shape (B, T, H, D), got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"window must be None or a positive int (keys within `window` positions), got {window!r}")
    if doc_ids is not None:
        B, T = q.shape[:2]
        if not isinstance(doc_ids, torch.Tensor) or tuple(doc_ids.shape) != (B, T):
            got = tuple(doc_ids.shape) if isinstance(doc_ids, torch.Tensor) else doc_ids
            raise ValueError(f"doc_ids must be a (B, T) = {(B, T)} tensor, got {got}")
        if doc_ids.dtype.is_floating_point or doc_ids.dtype.is_complex or doc_ids.dtype == torch.bool:
            raise TypeError(f"doc_ids must be an integer tensor, got {doc_ids.dtype}")
        if doc_ids.device != q.device:
            raise ValueError(f"doc_ids is on {doc_ids.device}, q on {q.device}")


def _keep(q_idx, kv_idx, *, causal: bool, window: int | None):
    """True where query position q_idx may see key position kv_idx (index tensors that broadcast)."""
    keep = (q_idx >= 0) & (kv_idx >= 0)  # all True, in the broadcast shape
    if causal:
        keep = keep & (kv_idx <= q_idx)
    if window is not None:
        keep = keep & (q_idx - kv_idx < window)
    return keep


class _PerTensorCache:
    """Values derived from a tensor (masks, varlen offsets), kept while that tensor object lives unmodified.

    The model passes one doc_ids tensor to every layer of a forward pass, so a mask is built once per pass,
    not once per layer. Entries are keyed on the tensor's identity and checked against its version counter.
    An entry goes when its tensor is freed (a dense (B, 1, T, T) mask of a past batch must not linger on the
    GPU), and at most `size` are kept (least recently used evicted).
    """

    def __init__(self, size: int = 8):
        self.size = size
        self._entries: OrderedDict = OrderedDict()

    def get(self, t: torch.Tensor, key, compute: Callable):
        slot = (id(t), key)
        entry = self._entries.get(slot)
        if entry is not None and entry[0]() is t and entry[1] == t._version:
            self._entries.move_to_end(slot)
            return entry[2]
        value = compute()
        entries = self._entries

        def forget(ref, slot=slot):
            if slot in entries and entries[slot][0] is ref:
                del entries[slot]

        entries[slot] = (weakref.ref(t, forget), t._version, value)
        entries.move_to_end(slot)
        while len(entries) > self.size:
            entries.popitem(last=False)
        return value

    def __len__(self):
        return len(self._entries)

    def clear(self):
        self._entries.clear()


class _LRU(OrderedDict):
    """A small dict of static (shape-keyed) masks; the oldest entry goes when it is full."""

    def __init__(self, size: int = 8):
        super().__init__()
        self.size = size

    def get_or_build(self, key, build: Callable):
        if key not in self:
            self[key] = build()
            while len(self) > self.size:
                self.popitem(last=False)
        self.move_to_end(key)
        return self[key]


_doc_cache = _PerTensorCache()
_static_masks = _LRU()
_static_block_masks = _LRU()


@torch.compiler.disable
def doc_cu_seqlens(doc_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Varlen metadata for FlashAttention from (B, T) document ids: (cu_seqlens int32 (S+1,), max_seqlen).

    The B·T tokens, flattened row-major, split into S segments: a new one starts at every row start and
    wherever the id changes. cu_seqlens[s] is the first token of segment s and cu_seqlens[S] = B·T. doc_ids
    must be non-decreasing along T (a cumsum of <|endoftext|> flags is). Costs two host syncs (segment count,
    max length); cached per doc_ids tensor, so a forward pass pays them once, not once per layer. A loader
    that knows the boundaries can compute the same thing on the host instead (see the report of issue 7).
    """
    return _doc_cache.get(doc_ids, "varlen", lambda: _doc_cu_seqlens(doc_ids))


def _doc_cu_seqlens(doc_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    B, T = doc_ids.shape
    step = doc_ids[:, 1:] - doc_ids[:, :-1]  # (B, T-1)
    start = torch.ones(B, T, dtype=torch.bool, device=doc_ids.device)
    start[:, 1:] = step != 0
    starts = start.reshape(-1).nonzero().squeeze(1)  # (S,)  host sync: S depends on the data
    cu_seqlens = torch.cat([starts, starts.new_tensor([B * T])]).to(torch.int32)  # (S+1,)
    max_len, decreasing = torch.stack([cu_seqlens.diff().max().long(), (step < 0).any().long()]).tolist()
    if decreasing:
        raise ValueError("doc_ids must be non-decreasing along T (e.g. a cumsum of <|endoftext|> flags): a document "
                         "id that comes back later cannot be expressed as contiguous varlen segments")
    return cu_seqlens, int(max_len)


def _flatten_tokens(t: torch.Tensor) -> torch.Tensor:
    """(B, T, H, D) -> (B·T, H, D) for the varlen kernels; a view for every layout the model produces
    (contiguous, or a slice of a fused (B, T, 3, H, D) projection)."""
    B, T, H, D = t.shape
    return t.reshape(B * T, H, D)


def _fa_window(causal: bool, window: int | None, *, unbounded=-1) -> tuple:
    """FlashAttention's window_size=(left, right): query i sees keys i-left..i+right; `unbounded` = no limit."""
    left = unbounded if window is None else window - 1
    right = 0 if causal else unbounded
    return left, right


def _first(out):
    """Some FlashAttention versions return (out, softmax_lse); keep out."""
    return out[0] if isinstance(out, (tuple, list)) else out


# ---------------------------------------------------------------------------------------------------
# sdpa
# ---------------------------------------------------------------------------------------------------


@torch.compiler.disable
def _dense_mask(T: int, causal: bool, window: int | None, doc_ids: torch.Tensor | None, device) -> torch.Tensor:
    """Boolean (1 or B, 1, T, T) mask for SDPA, True where attention is allowed; cached."""

    def static():
        i = torch.arange(T, device=device)
        return _keep(i[:, None], i[None, :], causal=causal, window=window)[None, None]  # (1, 1, T, T)

    mask = _static_masks.get_or_build((T, causal, window, str(device)), static)
    if doc_ids is None:
        return mask

    def with_docs():
        return mask & (doc_ids[:, None, :, None] == doc_ids[:, None, None, :])  # (B, 1, T, T)

    return _doc_cache.get(doc_ids, ("sdpa", causal, window), with_docs)


def attention_sdpa(q, k, v, *, causal: bool = True, window: int | None = None, doc_ids: torch.Tensor | None = None,
                   scale: float | None = None) -> torch.Tensor:
    """F.scaled_dot_product_attention on (B, T, H, D); returns a (B, T, H, D) view of SDPA's (B, H, T, D) output."""
    _check_inputs(q, k, v, window, doc_ids)
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D) views; SDPA copies only if its kernel must
    if window is None and doc_ids is None:
        out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=causal, scale=scale)
    else:
        mask = _dense_mask(q.shape[1], causal, window, doc_ids, q.device)  # (1 or B, 1, T, T)
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale)
    return out.transpose(1, 2)  # (B, T, H, D)


# ---------------------------------------------------------------------------------------------------
# flex
# ---------------------------------------------------------------------------------------------------

_compiled_flex = None


@torch.compiler.disable
def flex_block_mask(T: int, *, causal: bool = True, window: int | None = None, doc_ids: torch.Tensor | None = None,
                    device="cpu"):
    """The BlockMask flex_attention uses for these masks; None when nothing is masked. Cached per
    (T, causal, window, device), and per doc_ids tensor (identity and version) with document masking."""
    if not causal and window is None and doc_ids is None:
        return None
    create_block_mask = _flex_module()[0].create_block_mask
    device = torch.device(device)
    compile_mask = device.type == "cuda"  # builds the mask without materialising B·T·T booleans at once

    if doc_ids is None:
        def static():
            def mask_mod(b, h, q_idx, kv_idx):
                return _keep(q_idx, kv_idx, causal=causal, window=window)

            return create_block_mask(mask_mod, None, None, T, T, device=device, _compile=compile_mask)

        return _static_block_masks.get_or_build((T, causal, window, str(device)), static)

    def with_docs():
        def mask_mod(b, h, q_idx, kv_idx):
            return (doc_ids[b, q_idx] == doc_ids[b, kv_idx]) & _keep(q_idx, kv_idx, causal=causal, window=window)

        return create_block_mask(mask_mod, doc_ids.shape[0], None, T, T, device=device, _compile=compile_mask)

    return _doc_cache.get(doc_ids, ("flex", causal, window), with_docs)


def attention_flex(q, k, v, *, causal: bool = True, window: int | None = None, doc_ids: torch.Tensor | None = None,
                   scale: float | None = None) -> torch.Tensor:
    """flex_attention with a cached BlockMask; torch.compile'd on CUDA, eager and forward-only on the CPU."""
    global _compiled_flex
    flex, why = _flex_module()
    if flex is None:
        raise AttentionBackendUnavailable(f"attention backend 'flex' {why}; use --attention auto|sdpa")
    _check_inputs(q, k, v, window, doc_ids)
    if q.device.type == "cpu" and any(t.requires_grad for t in (q, k, v)):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "attention backend 'flex' cannot train on the CPU: torch has no CPU backward for flex_attention. "
                "It evaluates under torch.no_grad(); for CPU training use --attention sdpa (or auto)")
        q, k, v = q.detach(), k.detach(), v.detach()  # torch refuses requires_grad inputs on CPU even under no_grad
    block_mask = flex_block_mask(q.shape[1], causal=causal, window=window, doc_ids=doc_ids, device=q.device)
    fn = flex.flex_attention
    if q.device.type == "cuda":  # eager flex materialises the scores; the compiled one is the fused kernel
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex.flex_attention, dynamic=False)
        fn = _compiled_flex
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D) views
    out = fn(qh, kh, vh, block_mask=block_mask, scale=scale)  # (B, H, T, D)
    return out.transpose(1, 2)  # (B, T, H, D)


# ---------------------------------------------------------------------------------------------------
# FlashAttention 2 / 3 / 4
# ---------------------------------------------------------------------------------------------------

_fa_checked: dict[tuple, object] = {}


def _require(name: str, q: torch.Tensor):
    """The FlashAttention module for backend `name` after checking that it can run on q (else a clear error);
    checked once per (backend, device, dtype, head dim)."""
    key = (name, q.device, q.dtype, q.shape[-1])
    if key not in _fa_checked:
        select_backend(name, q.device, q.dtype, q.shape[-1])
        module, needs, _ = _FA_MODULES[name]
        _fa_checked[key] = _import_module(module, needs)[0]
    return _fa_checked[key]


def _flash_attention(name: str, q, k, v, *, causal, window, doc_ids, scale, unbounded):
    _check_inputs(q, k, v, window, doc_ids)
    fa = _require(name, q)
    window_size = _fa_window(causal, window, unbounded=unbounded)
    if doc_ids is None:
        return _first(fa.flash_attn_func(q, k, v, softmax_scale=scale, causal=causal, window_size=window_size))
    cu_seqlens, max_seqlen = doc_cu_seqlens(doc_ids)
    out = fa.flash_attn_varlen_func(
        _flatten_tokens(q), _flatten_tokens(k), _flatten_tokens(v),  # (B·T, H, D) views
        cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens, max_seqlen_q=max_seqlen, max_seqlen_k=max_seqlen,
        softmax_scale=scale, causal=causal, window_size=window_size)
    return _first(out).view(q.shape)  # (B, T, H, D)


def attention_fa3(q, k, v, *, causal: bool = True, window: int | None = None, doc_ids: torch.Tensor | None = None,
                  scale: float | None = None) -> torch.Tensor:
    """FlashAttention-3 (sm_90): flash_attn_func, or flash_attn_varlen_func with document masking."""
    return _flash_attention("fa3", q, k, v, causal=causal, window=window, doc_ids=doc_ids, scale=scale, unbounded=-1)


def attention_fa2(q, k, v, *, causal: bool = True, window: int | None = None, doc_ids: torch.Tensor | None = None,
                  scale: float | None = None) -> torch.Tensor:
    """FlashAttention-2 (sm_80+): flash_attn_func, or flash_attn_varlen_func with document masking."""
    return _flash_attention("fa2", q, k, v, causal=causal, window=window, doc_ids=doc_ids, scale=scale, unbounded=-1)


def attention_fa4(q, k, v, *, causal: bool = True, window: int | None = None, doc_ids: torch.Tensor | None = None,
                  scale: float | None = None) -> torch.Tensor:
    """FlashAttention-4 (flash_attn.cute, sm_90+); its window_size says "no limit" with None, not -1."""
    return _flash_attention("fa4", q, k, v, causal=causal, window=window, doc_ids=doc_ids, scale=scale,
                            unbounded=None)


# ---------------------------------------------------------------------------------------------------
# auto
# ---------------------------------------------------------------------------------------------------

IMPLS: dict[str, Callable] = {}  # backend name -> function; filled by _register()
_auto_cache: dict[tuple, str] = {}


def attention_auto(q, k, v, *, causal: bool = True, window: int | None = None, doc_ids: torch.Tensor | None = None,
                   scale: float | None = None) -> torch.Tensor:
    """The best backend available for q's device, dtype and head dim (fa3 > fa2 > sdpa); chosen once per
    combination, and logged then with the reasons the better ones were skipped."""
    key = (q.device, q.dtype, q.shape[-1])
    name = _auto_cache.get(key)
    if name is None:
        name, skipped = _auto_choice(q.device, q.dtype, q.shape[-1])
        _auto_cache[key] = name
        logger.info("attention auto: using %s for %s %s head_dim=%d%s", name, q.device,
                    str(q.dtype).removeprefix("torch."), q.shape[-1],
                    f" (skipped: {'; '.join(skipped)})" if skipped else "")
    return IMPLS[name](q, k, v, causal=causal, window=window, doc_ids=doc_ids, scale=scale)


def reset_caches():
    """Forget probed imports, checks, auto choices and masks (tests that simulate other machines call this)."""
    _import_cache.clear()
    _fa_checked.clear()
    _auto_cache.clear()
    _doc_cache.clear()
    _static_masks.clear()
    _static_block_masks.clear()


def _register():
    from kernels.reference import attention as eager

    IMPLS.update(eager=eager, sdpa=attention_sdpa, flex=attention_flex, fa3=attention_fa3, fa2=attention_fa2,
                 fa4=attention_fa4)
    for name in BACKENDS[1:]:  # "eager" is registered by kernels.reference
        registry.register("attention", name, IMPLS[name])
    registry.register("attention", "auto", attention_auto)


_register()
