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

Autocast: under torch.autocast, sdpa, flex, FlashAttention and auto cast q, k, v to the autocast dtype at their
entry (a model passes its projections as they come, e.g. fp32 q, k after an fp32 RMSNorm and a bf16 v); eager
computes in fp32 whatever it gets and returns q's dtype.

Every backend implements the masks of kernels.reference.attention_keep (sdpa and flex call it): causal keeps
j <= i; window w keeps i - w < j (the query and the w-1 keys before it; FlashAttention window_size=(w-1, 0));
doc_ids (B, T), non-decreasing along T (the model's cumsum of <|endoftext|> flags), keeps keys of the same
document.

An explicit request for a backend that cannot run here (module missing, wrong GPU, CPU tensors) raises
AttentionBackendUnavailable naming what is missing, on the first call; an unsupported input (fp32 into
FlashAttention, a head dim it has no kernel for) raises TypeError/ValueError. Nothing falls back silently:
only "auto" chooses, and it logs its choice once per (device, dtype, head dim). Those decisions live in
kernels.attention_select (available_backends(device), select_backend(requested, device, dtype), ...), which
the trainer (for its log), the benches and the tests ask; select_backend is importable from here too.

Copies: FlashAttention reads (B, T, H, D) as is; document masking flattens (B, T) into one token axis as a view
for the varlen kernels. sdpa and flex want (B, H, T, D): they get transposed views and return a transposed view,
so the model's reshape(B, T, H·D) copies the output once (as for eager).

torch.compile: eager, sdpa and flex are torch code. FlashAttention 2/3/4 run as the custom op
torch.ops.speedrun.flash_attention (with torch.ops.speedrun.flash_attention_backward), which Dynamo keeps whole
in its graph whatever the installed FlashAttention does inside; see _flash_attention for its backward (one more
attention forward) and autocast. Masks built on the host stay outside the graph (torch.compiler.disable): the
dense sdpa mask of a window or documents, and the varlen offsets of documents (host syncs).

Nothing from FlashAttention is imported, and nothing is compiled or launched, at import time.
"""

import logging
import weakref
from collections import OrderedDict
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from kernels import attention_select as selection
from kernels import registry
from kernels.attention_select import BACKENDS, AttentionBackendUnavailable, select_backend
from kernels.custom_ops import autocast_inputs, op_name
from kernels.reference import attention as reference_attention
from kernels.reference import attention_keep, attention_mask

logger = logging.getLogger(__name__)

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
    that knows the document boundaries could compute the same thing on the host instead, without the syncs.
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
    """kernels.reference.attention_mask for SDPA: (1 or B, 1, T, T), True where attention is allowed; cached."""
    if doc_ids is None:
        return _static_masks.get_or_build((T, causal, window, str(device)),
                                          lambda: attention_mask(T, causal=causal, window=window, device=device))
    return _doc_cache.get(doc_ids, ("sdpa", causal, window),
                          lambda: attention_mask(T, causal=causal, window=window, doc_ids=doc_ids, device=device))


def attention_sdpa(q, k, v, *, causal: bool = True, window: int | None = None, doc_ids: torch.Tensor | None = None,
                   scale: float | None = None) -> torch.Tensor:
    """F.scaled_dot_product_attention on (B, T, H, D); returns a (B, T, H, D) view of SDPA's (B, H, T, D) output."""
    q, k, v = autocast_inputs(q, k, v)
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
    create_block_mask = selection.flex_module()[0].create_block_mask
    device = torch.device(device)
    compile_mask = device.type == "cuda"  # builds the mask without materialising B·T·T booleans at once

    def mask_mod(b, h, q_idx, kv_idx):
        return attention_keep(b, q_idx, kv_idx, causal=causal, window=window, doc_ids=doc_ids)

    if doc_ids is None:
        return _static_block_masks.get_or_build(
            (T, causal, window, str(device)),
            lambda: create_block_mask(mask_mod, None, None, T, T, device=device, _compile=compile_mask))
    return _doc_cache.get(
        doc_ids, ("flex", causal, window),
        lambda: create_block_mask(mask_mod, doc_ids.shape[0], None, T, T, device=device, _compile=compile_mask))


def attention_flex(q, k, v, *, causal: bool = True, window: int | None = None, doc_ids: torch.Tensor | None = None,
                   scale: float | None = None) -> torch.Tensor:
    """flex_attention with a cached BlockMask; torch.compile'd on CUDA, eager and forward-only on the CPU."""
    global _compiled_flex
    flex, why = selection.flex_module()
    if flex is None:
        raise AttentionBackendUnavailable(f"attention backend 'flex' {why}; use --attention auto|sdpa")
    q, k, v = autocast_inputs(q, k, v)
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
        module, needs, _ = selection.FA_MODULES[name]
        _fa_checked[key] = selection.probe_import(module, needs)[0]
    return _fa_checked[key]


# FlashAttention's window_size value for "no limit" in each backend's API.
_UNBOUNDED = {"fa2": -1, "fa3": -1, "fa4": None}


def _flash_call(name: str, q, k, v, cu_seqlens, max_seqlen: int, causal: bool, window: int | None, scale):
    """One call of backend `name`'s FlashAttention function on (B, T, H, D) q, k, v (varlen when cu_seqlens is
    given); raises if the backend cannot run on q (checked once per backend, device, dtype, head dim)."""
    fa = _require(name, q)
    window_size = _fa_window(causal, window, unbounded=_UNBOUNDED[name])
    if cu_seqlens is None:
        return _first(fa.flash_attn_func(q, k, v, softmax_scale=scale, causal=causal, window_size=window_size))
    out = fa.flash_attn_varlen_func(
        _flatten_tokens(q), _flatten_tokens(k), _flatten_tokens(v),  # (B·T, H, D) views
        cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens, max_seqlen_q=max_seqlen, max_seqlen_k=max_seqlen,
        softmax_scale=scale, causal=causal, window_size=window_size)
    return _first(out).view(q.shape)  # (B, T, H, D)


@torch.library.custom_op(op_name("flash_attention"), mutates_args=())
def _flash_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: Optional[torch.Tensor],
                        max_seqlen: int, backend: str, causal: bool, window: Optional[int],
                        scale: Optional[float]) -> torch.Tensor:
    """FlashAttention's output (B, T, H, D), contiguous; the backend's own autograd is not recorded (the backward op
    recomputes it)."""
    with torch.no_grad():
        return _flash_call(backend, q, k, v, cu_seqlens, max_seqlen, causal, window, scale).contiguous()


@_flash_attention_op.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, backend, causal, window, scale):
    return q.new_empty(q.shape)


@torch.library.custom_op(op_name("flash_attention_backward"), mutates_args=())
def _flash_attention_backward_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 cu_seqlens: Optional[torch.Tensor], max_seqlen: int, backend: str, causal: bool,
                                 window: Optional[int],
                                 scale: Optional[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv): the backend's forward again, with its autograd, then its backward kernel on dout."""
    # A custom op's body runs below autograd (its dispatch key is excluded there): put autograd back for this
    # nested forward and backward through the backend's own autograd.Function (torch.func.vjp would not do:
    # FlashAttention's Functions use the old forward(ctx, ...) form, which functorch transforms refuse).
    autograd_on = torch._C._SetExcludeDispatchKeyGuard(torch._C.DispatchKey.AutogradFunctionality, False)
    with autograd_on, torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        out = _flash_call(backend, *leaves, cu_seqlens, max_seqlen, causal, window, scale)
        grads = torch.autograd.grad(out, leaves, dout)
    return tuple(g.contiguous() for g in grads)


@_flash_attention_backward_op.register_fake
def _(dout, q, k, v, cu_seqlens, max_seqlen, backend, causal, window, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _flash_setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens, *settings = inputs
    ctx.save_for_backward(q, k, v, cu_seqlens)
    ctx.settings = settings  # max_seqlen, backend, causal, window, scale


def _flash_backward(ctx, dout):
    q, k, v, cu_seqlens = ctx.saved_tensors
    dq, dk, dv = torch.ops.speedrun.flash_attention_backward(dout.contiguous(), q, k, v, cu_seqlens, *ctx.settings)
    return dq, dk, dv, None, None, None, None, None, None  # q, k, v; cu_seqlens and the settings: no gradient


_flash_attention_op.register_autograd(_flash_backward, setup_context=_flash_setup_context)


def _flash_attention(name: str, q, k, v, *, causal, window, doc_ids, scale):
    """Backend `name` as the custom op torch.ops.speedrun.flash_attention (torch.compile keeps it whole in its
    graph, whatever the FlashAttention build does inside). Under torch.autocast q, k, v are cast to the autocast
    dtype here. Its backward runs the backend's forward once more and then its backward kernel, on the saved
    q, k, v: one extra attention forward per training step (~1/3.5 more attention FLOPs; not yet measured on a
    GPU: bench/kernels/bench_attention.py on one would measure it), for a compile-safe wrapper that uses only
    the public flash_attn_func / flash_attn_varlen_func of every FlashAttention version, and saves q, k, v
    only (not out and the log-sum-exp). Document masking computes the varlen offsets first (doc_cu_seqlens:
    host syncs, outside the graph)."""
    q, k, v = autocast_inputs(q, k, v)
    _check_inputs(q, k, v, window, doc_ids)
    cu_seqlens, max_seqlen = (None, 0) if doc_ids is None else doc_cu_seqlens(doc_ids)
    return torch.ops.speedrun.flash_attention(q, k, v, cu_seqlens, max_seqlen, name, causal, window, scale)


def attention_fa3(q, k, v, *, causal: bool = True, window: int | None = None, doc_ids: torch.Tensor | None = None,
                  scale: float | None = None) -> torch.Tensor:
    """FlashAttention-3 (sm_90): flash_attn_func, or flash_attn_varlen_func with document masking."""
    return _flash_attention("fa3", q, k, v, causal=causal, window=window, doc_ids=doc_ids, scale=scale)


def attention_fa2(q, k, v, *, causal: bool = True, window: int | None = None, doc_ids: torch.Tensor | None = None,
                  scale: float | None = None) -> torch.Tensor:
    """FlashAttention-2 (sm_80+): flash_attn_func, or flash_attn_varlen_func with document masking."""
    return _flash_attention("fa2", q, k, v, causal=causal, window=window, doc_ids=doc_ids, scale=scale)


def attention_fa4(q, k, v, *, causal: bool = True, window: int | None = None, doc_ids: torch.Tensor | None = None,
                  scale: float | None = None) -> torch.Tensor:
    """FlashAttention-4 (flash_attn.cute, sm_90+); its window_size says "no limit" with None, not -1."""
    return _flash_attention("fa4", q, k, v, causal=causal, window=window, doc_ids=doc_ids, scale=scale)


# ---------------------------------------------------------------------------------------------------
# auto
# ---------------------------------------------------------------------------------------------------

IMPLS: dict[str, Callable] = {}  # backend name -> function; filled by _register()
_auto_cache: dict[tuple, str] = {}


def attention_auto(q, k, v, *, causal: bool = True, window: int | None = None, doc_ids: torch.Tensor | None = None,
                   scale: float | None = None) -> torch.Tensor:
    """The best backend available for q's device, dtype and head dim (fa3 > fa2 > sdpa); chosen once per
    combination, and logged then with the reasons the better ones were skipped."""
    q, k, v = autocast_inputs(q, k, v)  # the dtype the backend will see decides
    key = (q.device, q.dtype, q.shape[-1])
    name = _auto_cache.get(key)
    if name is None:
        name, skipped = selection.auto_choice(q.device, q.dtype, q.shape[-1])
        _auto_cache[key] = name
        logger.info("attention auto: using %s for %s %s head_dim=%d%s", name, q.device,
                    str(q.dtype).removeprefix("torch."), q.shape[-1],
                    f" (skipped: {'; '.join(skipped)})" if skipped else "")
    return IMPLS[name](q, k, v, causal=causal, window=window, doc_ids=doc_ids, scale=scale)


def reset_caches():
    """Forget probed imports, checks, auto choices and masks (tests that simulate other machines call this)."""
    selection.reset()
    _fa_checked.clear()
    _auto_cache.clear()
    _doc_cache.clear()
    _static_masks.clear()
    _static_block_masks.clear()


def _register():
    IMPLS.update(eager=reference_attention, sdpa=attention_sdpa, flex=attention_flex, fa3=attention_fa3,
                 fa2=attention_fa2, fa4=attention_fa4)
    for name in BACKENDS[1:]:  # "eager" is registered by kernels.reference
        registry.register("attention", name, IMPLS[name])
    registry.register("attention", "auto", attention_auto)


_register()
