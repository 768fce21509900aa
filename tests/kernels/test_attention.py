"""kernels/attention.py: every backend against the float64 reference, the selection logic on simulated machines,
and the FlashAttention call path (window mapping, varlen flattening) through a stand-in module on the CPU.

CPU: sdpa and eager forward + backward, flex forward (torch has no CPU flex backward), over causal / window /
documents / both, odd lengths T in (1, 7, 37, 65), head dims 16 and 32, bf16 and fp32.
GPU (marked gpu, and skipped with the missing module named when FlashAttention is not installed): fa3, fa2,
fa4, flex and sdpa at T = 1023 and the 124M shape (H=6, D=128), forward and backward, plus determinism.
"""

import logging
import types

import pytest
import torch

from kernels import attention as A
from kernels import registry
from kernels.reference import attention as reference
from tests.parity import TOLERANCES, assert_close, assert_parity

# Eager flex on the CPU warns once that it materialises the scores; that is what the CPU path is meant to do.
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile:UserWarning")

MASKS = {
    "causal": {},
    "window": {"window": 5},
    "documents": {"documents": True},
    "window+documents": {"window": 3, "documents": True},
    "full": {"causal": False},  # not used by the model; exercises causal=False
    "window-noncausal": {"causal": False, "window": 4},
}
CPU_MASKS = ["causal", "window", "documents", "window+documents"]


def make_doc_ids(B, T, device="cpu", p=0.15):
    """Non-decreasing ids like the model's cumsum(tokens == eot): a few documents per row, some of length 1."""
    return torch.cumsum(torch.rand(B, T, device=device) < p, dim=1)


def make_inputs(B, T, H, D, dtype, mask, device="cpu"):
    q, k, v = (torch.randn(B, T, H, D, device=device).to(dtype) for _ in range(3))
    spec = MASKS[mask]
    kwargs = {"causal": spec.get("causal", True), "window": spec.get("window")}
    if spec.get("documents"):
        kwargs["doc_ids"] = make_doc_ids(B, T, device)
    return q, k, v, kwargs


# Unit roundoff of the fp32 accumulators every CPU/GPU backend uses (bf16/fp16 inputs included).
U32 = 2.0**-24


def accumulation_floor(q, k, v, grad_out, scale):
    """Worst-case fp32 accumulation error of each output, from the textbook bound on a length-n sum,
    |fl(Σ a_i) - Σ a_i| <= n·u·Σ|a_i| (u = 2⁻²⁴), applied to attention's sums on these inputs. It does not
    depend on the machine: backends that sum in another order (SDPA's blocked CPU kernel, a GPU kernel) may
    differ from the float64 oracle by up to this much even where the eager peer happens to be exact.

    out = P·V: a convex combination over at most T keys                      -> 2·T·u·max|v|
    dv  = Pᵀ·dO: likewise over at most T queries                             -> 2·T·u·max|dO|
    dq, dk: dS = P∘(dP − rowsum(dO∘O)) subtracts two length-D dot products, each within D·u·S of exact,
            S = max over (i, j) of Σ_d |dO_id|·|v_jd| (at T = 1 they cancel exactly in float64, so this is
            all that is left); dq = scale·dS·k then sums them with weights P that add to 1 (dk likewise
            with q)                                                           -> 2·(D + T)·u·S·scale·max|k or q|
    """
    T, D = q.shape[1], q.shape[-1]
    amax = lambda t: t.double().abs().max().item()  # noqa: E731
    floor = {"out": 2 * T * U32 * amax(v)}
    if grad_out is not None:
        S = torch.einsum("bthd,bshd->bhts", grad_out.double().abs(), v.double().abs()).max().item()
        floor.update(dv=2 * T * U32 * amax(grad_out), dq=2 * (D + T) * U32 * S * scale * amax(k),
                     dk=2 * (D + T) * U32 * S * scale * amax(q))
    return floor


def check(actual, peer, oracle, name, *, floor, k=2.0, table=True):
    """FA-style primary check (k times the eager peer's error, plus twice the rounding of the oracle into the
    output dtype and the accumulation floor), then the fixed per-dtype table of tests/parity.py."""
    assert actual.shape == oracle.shape and actual.dtype == peer.dtype, name
    o = oracle.double()
    rounding = 2 * (o.to(actual.dtype).double() - o).abs().max().item()
    assert_parity(actual, peer, oracle, name=name, k=k, noise=rounding + floor)
    if table:
        atol, rtol = TOLERANCES[actual.dtype]
        assert_close(actual, oracle, atol=atol, rtol=rtol, name=name)


def run_backend(fn, q, k, v, kwargs, grad_out=None, upcast=False):
    """fn on fresh leaves (float64 copies if upcast); returns [out, dq, dk, dv] (grads only with grad_out)."""
    leaves = [(t.double() if upcast else t).detach().clone().requires_grad_(grad_out is not None) for t in (q, k, v)]
    out = fn(*leaves, **kwargs)
    if grad_out is None:
        return [out]
    out.backward(grad_out.double() if upcast else grad_out)
    return [out] + [t.grad for t in leaves]


def compare_with_reference(backend_fn, q, k, v, kwargs, *, backward: bool, tag: str):
    grad_out = torch.randn_like(q) if backward else None
    got = run_backend(backend_fn, q, k, v, kwargs, grad_out)
    peer = run_backend(reference, q, k, v, kwargs, grad_out)
    oracle = run_backend(lambda *t, **kw: reference(*t, upcast=True, **kw), q, k, v, kwargs, grad_out, upcast=True)
    scale = kwargs.get("scale") or q.shape[-1] ** -0.5
    floor = accumulation_floor(q, k, v, grad_out, scale)
    check(got[0], peer[0], oracle[0], f"{tag} out", floor=floor["out"], k=2.0)
    # Gradients: only the peer-relative check, with k=3 as FA's backward tests. An elementwise table does not
    # hold for them in bf16: dS = P∘(dP - rowsum(dO∘O)) cancels, so a small entry (0.0055 in dk at T=37) can
    # be off by a bf16 ulp of the large terms (0.006) while the worst error is still within k·peer.
    for name, a, p, o in zip(("dq", "dk", "dv"), got[1:], peer[1:], oracle[1:]):
        check(a, p, o, f"{tag} {name}", floor=floor[name], k=3.0, table=False)
    return got


@pytest.fixture(autouse=True)
def fresh_caches():
    A.reset_caches()
    yield
    A.reset_caches()


# ---------------------------------------------------------------------------------------------------
# CPU parity: sdpa / eager forward + backward, flex forward
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("D", [16, 32])
@pytest.mark.parametrize("T", [1, 7, 37, 65])
@pytest.mark.parametrize("mask", CPU_MASKS)
@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_forward_and_backward_match_float64(backend, mask, T, D, dtype):
    q, k, v, kwargs = make_inputs(2, T, 3, D, dtype, mask)
    compare_with_reference(registry.get("attention", backend), q, k, v, kwargs, backward=True,
                           tag=f"{backend}/{mask}/T={T}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("D", [16, 32])
@pytest.mark.parametrize("T", [1, 7, 37, 65])
@pytest.mark.parametrize("mask", CPU_MASKS)
def test_flex_forward_matches_float64(mask, T, D, dtype):
    q, k, v, kwargs = make_inputs(2, T, 3, D, dtype, mask)
    compare_with_reference(registry.get("attention", "flex"), q, k, v, kwargs, backward=False,
                           tag=f"flex/{mask}/T={T}")


@pytest.mark.parametrize("backend", ["sdpa", "flex", "eager"])
@pytest.mark.parametrize("mask", ["full", "window-noncausal"])
def test_non_causal_and_explicit_scale(backend, mask):
    q, k, v, kwargs = make_inputs(2, 37, 2, 16, torch.float32, mask)
    kwargs["scale"] = 0.3
    compare_with_reference(registry.get("attention", backend), q, k, v, kwargs, backward=backend != "flex",
                           tag=f"{backend}/{mask}/scale")


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_edge_masks(backend):
    """window 1 (each token sees itself: out == v), a window longer than T (== causal), one document per token."""
    fn = registry.get("attention", backend)
    q, k, v, _ = make_inputs(2, 9, 2, 16, torch.float32, "causal")
    assert_close(fn(q, k, v, window=1), v, atol=1e-6, rtol=0, name="window=1")
    assert_close(fn(q, k, v, window=50), reference(q, k, v), atol=1e-6, rtol=1e-5, name="window>T")
    singletons = torch.arange(9).repeat(2, 1)
    assert_close(fn(q, k, v, doc_ids=singletons), v, atol=1e-6, rtol=0, name="one token per document")


def test_flex_refuses_training_on_cpu_but_evaluates():
    q, k, v, _ = make_inputs(1, 8, 1, 16, torch.float32, "causal")
    q.requires_grad_()
    with pytest.raises(RuntimeError, match="cannot train on the CPU.*sdpa"):
        registry.get("attention", "flex")(q, k, v)
    with torch.no_grad():  # evaluation of a model whose parameters require grad
        out = registry.get("attention", "flex")(q, k, v)
    assert_close(out, reference(q.detach(), k, v), atol=1e-5, rtol=1e-4, name="flex under no_grad")


def test_flex_block_masks_are_cached_per_shape_and_document_tensor():
    doc_ids = make_doc_ids(2, 33)
    static = A.flex_block_mask(33, window=4)
    assert A.flex_block_mask(33, window=4) is static
    assert A.flex_block_mask(33, window=5) is not static
    assert A.flex_block_mask(33, causal=False) is None  # nothing masked: flex runs unmasked
    docs = A.flex_block_mask(33, doc_ids=doc_ids)
    assert A.flex_block_mask(33, doc_ids=doc_ids) is docs  # the model's 12 layers build it once
    assert A.flex_block_mask(33, doc_ids=doc_ids.clone()) is not docs
    doc_ids[:, 20:] += 1  # modified in place: the cache must notice
    assert A.flex_block_mask(33, doc_ids=doc_ids) is not docs


# ---------------------------------------------------------------------------------------------------
# Varlen metadata and the FlashAttention call path, through a stand-in module on the CPU
# ---------------------------------------------------------------------------------------------------


def test_doc_cu_seqlens():
    cu, max_len = A.doc_cu_seqlens(torch.tensor([[0, 0, 1, 1, 1], [2, 2, 2, 3, 4]]))
    assert cu.tolist() == [0, 2, 5, 8, 9, 10] and max_len == 3 and cu.dtype == torch.int32
    cu, max_len = A.doc_cu_seqlens(torch.tensor([[0, 0], [0, 0]]))  # a document continuing into the next row
    assert cu.tolist() == [0, 2, 4] and max_len == 2  # ... is cut at the row boundary, as the mask says
    cu, max_len = A.doc_cu_seqlens(torch.tensor([[7]]))
    assert cu.tolist() == [0, 1] and max_len == 1
    with pytest.raises(ValueError, match="non-decreasing"):
        A.doc_cu_seqlens(torch.tensor([[0, 1, 0]]))


def test_doc_cu_seqlens_is_cached_per_tensor():
    doc_ids = make_doc_ids(2, 40)
    first = A.doc_cu_seqlens(doc_ids)
    assert A.doc_cu_seqlens(doc_ids) is first
    doc_ids[0, :] = 0
    assert A.doc_cu_seqlens(doc_ids) is not first


def test_document_masks_are_dropped_with_their_batch():
    """A past batch's dense (B, 1, T, T) mask must not stay cached once its doc_ids tensor is gone."""
    q, k, v, kwargs = make_inputs(2, 16, 2, 16, torch.float32, "documents")
    registry.get("attention", "sdpa")(q, k, v, **kwargs)
    A.doc_cu_seqlens(kwargs["doc_ids"])
    assert len(A._doc_cache) == 2
    del kwargs
    assert len(A._doc_cache) == 0


def test_varlen_flattening_is_a_view():
    qkv = torch.randn(2, 5, 3, 4, 8)  # a fused (B, T, 3, H, D) projection, sliced
    for t in (torch.randn(2, 5, 4, 8), qkv[:, :, 0]):
        flat = A._flatten_tokens(t)
        assert flat.shape == (10, 4, 8) and flat.data_ptr() == t.data_ptr() and flat._base is not None


def _fa_reference(q, k, v, *, softmax_scale, causal, window_size, unbounded):
    """FlashAttention's documented semantics on (B, T, H, D): query i sees keys in [i - left, i + right]
    (`unbounded` = no limit on that side); causal forces right = 0. Written from the FA docstrings."""
    left, right = window_size
    T = q.shape[1]
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    keep = torch.ones(T, T, dtype=torch.bool)
    if left != unbounded:
        keep &= j >= i - left
    if causal:
        keep &= j <= i
    elif right != unbounded:
        keep &= j <= i + right
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    scores = torch.einsum("bihd,bjhd->bhij", q.float(), k.float()) * scale
    p = scores.masked_fill(~keep, float("-inf")).softmax(-1)
    return torch.einsum("bhij,bjhd->bihd", p, v.float()).to(q.dtype)


def fake_flash_module(unbounded=-1, returns_lse=False):
    """A stand-in for flash_attn_interface / flash_attn / flash_attn.cute that records its calls."""
    calls = []

    def flash_attn_func(q, k, v, *, softmax_scale=None, causal=False, window_size=(unbounded, unbounded)):
        calls.append(("dense", window_size, causal, q))
        out = _fa_reference(q, k, v, softmax_scale=softmax_scale, causal=causal, window_size=window_size,
                            unbounded=unbounded)
        return (out, None) if returns_lse else out

    def flash_attn_varlen_func(q, k, v, *, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                               softmax_scale=None, causal=False, window_size=(unbounded, unbounded)):
        calls.append(("varlen", window_size, causal, q))
        assert q.ndim == 3 and cu_seqlens_q.dtype == torch.int32 and cu_seqlens_q is cu_seqlens_k
        bounds = cu_seqlens_q.tolist()
        assert max_seqlen_q == max_seqlen_k == max(b - a for a, b in zip(bounds, bounds[1:]))
        pieces = [_fa_reference(q[a:b][None], k[a:b][None], v[a:b][None], softmax_scale=softmax_scale,
                                causal=causal, window_size=window_size, unbounded=unbounded)[0]
                  for a, b in zip(bounds, bounds[1:])]
        return (torch.cat(pieces), None) if returns_lse else torch.cat(pieces)

    return types.SimpleNamespace(flash_attn_func=flash_attn_func, flash_attn_varlen_func=flash_attn_varlen_func,
                                 calls=calls)


@pytest.fixture
def fake_machine(monkeypatch):
    """simulate(modules={name: module}, capability=(9, 0)): which FlashAttention modules import, and the compute
    capability that every device (the CPU too, so that the call path can run here) reports."""

    def simulate(modules=None, capability=None):
        modules = modules or {}

        def fake_import(name, needs=()):
            if name in modules:
                return modules[name], None
            return None, f"`import {name}` failed (ModuleNotFoundError: No module named '{name}')"

        monkeypatch.setattr(A, "_import_module", fake_import)
        monkeypatch.setattr(A, "_cuda_capability", lambda device: capability)
        A.reset_caches()

    return simulate


@pytest.mark.parametrize("backend, module, unbounded", [("fa3", "flash_attn_interface", -1),
                                                        ("fa2", "flash_attn", -1),
                                                        ("fa4", "flash_attn.cute", None)])
@pytest.mark.parametrize("mask", sorted(MASKS))
def test_flash_call_path_matches_reference(fake_machine, backend, module, unbounded, mask):
    """The window_size mapping, varlen offsets, flattening views and output reshape, with FA's semantics."""
    fa = fake_flash_module(unbounded=unbounded, returns_lse=backend == "fa3")  # old FA3 builds return (out, lse)
    fake_machine({module: fa}, capability=(9, 0))
    q, k, v, kwargs = make_inputs(2, 37, 3, 16, torch.bfloat16, mask)
    out = registry.get("attention", backend)(q, k, v, **kwargs)
    assert_close(out, reference(q, k, v, **kwargs), atol=1e-2, rtol=1e-2, name=f"{backend}/{mask}")
    (kind, window_size, causal, q_seen), = fa.calls
    assert kind == ("varlen" if "doc_ids" in kwargs else "dense")
    w = kwargs["window"]
    assert window_size == (unbounded if w is None else w - 1, 0 if kwargs["causal"] else unbounded)
    assert causal == kwargs["causal"] and q_seen.data_ptr() == q.data_ptr()  # no copy of q on the way in


def test_auto_dispatches_to_the_chosen_backend(fake_machine):
    fa = fake_flash_module()
    fake_machine({"flash_attn_interface": fa, "flash_attn": fake_flash_module()}, capability=(9, 0))
    q, k, v, kwargs = make_inputs(2, 16, 2, 16, torch.bfloat16, "window+documents")
    out = registry.get("attention", "auto")(q, k, v, **kwargs)
    assert len(fa.calls) == 1 and fa.calls[0][0] == "varlen"  # fa3, with the documents and window respected
    assert_close(out, reference(q, k, v, **kwargs), atol=1e-2, rtol=1e-2, name="auto -> fa3")
    out32 = registry.get("attention", "auto")(q.float(), k.float(), v.float(), **kwargs)  # fp32: FA cannot
    assert len(fa.calls) == 1
    assert_close(out32, reference(q.float(), k.float(), v.float(), **kwargs), atol=1e-5, rtol=1e-4, name="auto fp32")


# ---------------------------------------------------------------------------------------------------
# Selection: what auto picks on every kind of machine, and errors for explicit requests
# ---------------------------------------------------------------------------------------------------

FA3, FA2 = "flash_attn_interface", "flash_attn"


@pytest.mark.parametrize("installed, capability, device, dtype, head_dim, expected", [
    ((FA3, FA2), (9, 0), "cuda", torch.bfloat16, 128, "fa3"),  # H100 with both
    ((FA3,), (9, 0), "cuda", torch.float16, 128, "fa3"),
    ((FA2,), (9, 0), "cuda", torch.bfloat16, 128, "fa2"),  # H100, only FA2
    ((FA3, FA2), (8, 0), "cuda", torch.bfloat16, 128, "fa2"),  # A100: FA3 is Hopper-only
    ((FA3,), (8, 6), "cuda", torch.bfloat16, 128, "sdpa"),
    ((FA2,), (7, 5), "cuda", torch.bfloat16, 128, "sdpa"),  # Turing: too old for FA2
    ((), (9, 0), "cuda", torch.bfloat16, 128, "sdpa"),  # H100, nothing installed (the lent GPU image)
    ((FA3, FA2), (9, 0), "cuda", torch.float32, 128, "sdpa"),  # fp32 is not for FlashAttention
    ((FA3, FA2), (9, 0), "cuda", torch.bfloat16, 512, "sdpa"),  # no kernel for that head dim
    ((FA3, FA2), (9, 0), "cuda", torch.bfloat16, 36, "fa2"),  # FA3 needs a multiple of 8, FA2 pads
    ((FA3, FA2), None, "cpu", torch.bfloat16, 128, "sdpa"),  # CPU
    ((), None, "cpu", torch.float32, None, "sdpa"),
], ids=["h100-both", "h100-fa3-fp16", "h100-fa2-only", "a100-both", "sm86-fa3-only", "sm75-fa2", "h100-none",
        "h100-fp32", "h100-hdim512", "h100-hdim36", "cpu-both-installed", "cpu-none"])
def test_auto_picks_the_best_available(fake_machine, installed, capability, device, dtype, head_dim, expected):
    fake_machine({name: fake_flash_module() for name in installed}, capability)
    assert A.select_backend("auto", device, dtype, head_dim) == expected


def test_explicit_missing_backend_is_an_error_naming_what_is_missing(fake_machine):
    fake_machine({}, capability=(9, 0))
    with pytest.raises(A.AttentionBackendUnavailable, match=r"'fa3' is not available.*flash_attn_interface.*auto"):
        A.select_backend("fa3", "cuda", torch.bfloat16)
    with pytest.raises(A.AttentionBackendUnavailable, match=r"'fa2' is not available.*pip install flash-attn"):
        A.select_backend("fa2", "cuda", torch.bfloat16)
    fake_machine({FA3: fake_flash_module()}, capability=(8, 0))
    with pytest.raises(A.AttentionBackendUnavailable, match=r"'fa3'.*sm_90.*sm_80"):
        A.select_backend("fa3", "cuda", torch.bfloat16)
    fake_machine({FA3: fake_flash_module()}, capability=None)
    with pytest.raises(A.AttentionBackendUnavailable, match=r"'fa3'.*CUDA device.*cpu"):
        A.select_backend("fa3", "cpu", torch.bfloat16)


def test_unsupported_inputs_are_errors(fake_machine):
    fake_machine({FA3: fake_flash_module(), FA2: fake_flash_module()}, capability=(9, 0))
    with pytest.raises(TypeError, match=r"'fa3' supports bfloat16 and float16.*float32"):
        A.select_backend("fa3", "cuda", torch.float32)
    with pytest.raises(ValueError, match=r"'fa2' supports head dims up to 256"):
        A.select_backend("fa2", "cuda", torch.bfloat16, 512)
    with pytest.raises(KeyError, match="unknown attention backend 'xformers'"):
        A.select_backend("xformers", "cpu", torch.bfloat16)
    q = torch.randn(1, 4, 2, 16)  # fp32 into FlashAttention at call time: refused, not cast
    with pytest.raises(TypeError, match="bfloat16 and float16"):
        registry.get("attention", "fa3")(q, q, q)


def test_the_real_cpu_machine():
    """This machine: no GPU and no FlashAttention; explicit FA calls fail on the first call, auto gives sdpa."""
    found = A.available_backends("cpu")
    assert set(found) == set(A.BACKENDS)
    assert found["eager"] is None and found["sdpa"] is None and found["flex"] is None
    q = torch.randn(1, 4, 2, 16, dtype=torch.bfloat16)
    for backend in ("fa3", "fa2", "fa4"):
        assert "CUDA device" in found[backend]
        with pytest.raises(A.AttentionBackendUnavailable, match=f"'{backend}' is not available"):
            registry.get("attention", backend)(q, q, q)
    assert A.select_backend("auto", "cpu", torch.bfloat16, 16) == "sdpa"


def test_auto_logs_its_choice_once_per_combination(caplog):
    q = torch.randn(1, 8, 2, 16)
    fn = registry.get("attention", "auto")
    with caplog.at_level(logging.INFO, logger="kernels.attention"):
        fn(q, q, q)
        fn(q, q, q, window=3)
        fn(q.bfloat16(), q.bfloat16(), q.bfloat16())
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert messages[0].startswith("attention auto: using sdpa for cpu float32 head_dim=16 (skipped: fa3 ")
    assert "bfloat16" in messages[1]


def test_bad_inputs_raise():
    q = torch.randn(1, 8, 2, 16)
    sdpa = registry.get("attention", "sdpa")
    with pytest.raises(ValueError, match=r"one shape \(B, T, H, D\)"):
        sdpa(q, q[:, :4], q)
    with pytest.raises(ValueError, match=r"\(B, T, H, D\)"):
        sdpa(q[0], q[0], q[0])
    with pytest.raises(TypeError, match="one dtype"):
        sdpa(q, q.half(), q)
    with pytest.raises(ValueError, match="positive int"):
        sdpa(q, q, q, window=0)
    with pytest.raises(ValueError, match=r"doc_ids must be a \(B, T\)"):
        sdpa(q, q, q, doc_ids=torch.zeros(8, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        sdpa(q, q, q, doc_ids=torch.zeros(1, 8))


def test_flops():
    assert A.attention_flops(1, 1024, 6, 128) == 4 * 6 * 1024**2 * 128 / 2
    assert A.attention_flops(2, 8, 1, 4, causal=False, backward=True) == 2.5 * 4 * 2 * 64 * 4


# ---------------------------------------------------------------------------------------------------
# GPU: FlashAttention, flex and sdpa against float64 (skipped with the reason when something is missing)
# ---------------------------------------------------------------------------------------------------

GPU_MODULE = {"fa3": "flash_attn_interface", "fa2": "flash_attn", "fa4": "flash_attn.cute"}


def require_backend(backend):
    module = GPU_MODULE.get(backend)
    if module is not None and A._import_module(module, ("flash_attn_func", "flash_attn_varlen_func"))[0] is None:
        pytest.skip(f"{module} not installed")
    why = A.backend_unavailable_reason(backend, "cuda")
    if why:
        pytest.skip(f"{backend}: {why}")


@pytest.mark.gpu
@pytest.mark.parametrize("mask", CPU_MASKS)
@pytest.mark.parametrize("shape", [(2, 1023, 3, 64), (2, 2048, 6, 128)], ids=["odd-T1023", "124M-T2048"])
@pytest.mark.parametrize("backend", ["fa3", "fa2", "fa4", "flex", "sdpa"])
def test_gpu_backend_matches_float64(backend, shape, mask):
    require_backend(backend)
    q, k, v, kwargs = make_inputs(*shape, torch.bfloat16, mask, device="cuda")
    if "window" in kwargs and kwargs["window"] is not None:
        kwargs["window"] = 384  # a realistic window, several key blocks wide
    compare_with_reference(registry.get("attention", backend), q, k, v, kwargs, backward=True,
                           tag=f"{backend}/{mask}")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["fa3", "fa2", "fa4"])
def test_gpu_flash_is_deterministic_forward(backend):
    require_backend(backend)
    q, k, v, kwargs = make_inputs(4, 2048, 6, 128, torch.bfloat16, "window+documents", device="cuda")
    fn = registry.get("attention", backend)
    first = fn(q, k, v, **kwargs)
    for _ in range(20):
        assert torch.equal(fn(q, k, v, **kwargs), first)
