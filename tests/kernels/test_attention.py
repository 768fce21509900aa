"""Attention backends: CPU fallbacks against a float64 reference (forward and backward), the varlen
boundaries FlashAttention gets, and what `auto` picks in every availability case. FA2/FA3 parity is
gpu-marked and skipped, with the reason, where the packages or the GPU are missing."""

import logging

import pytest
import torch

from kernels import attention as A
from kernels import registry
from kernels.reference import attention as reference
from tests.parity import assert_parity

pytestmark = pytest.mark.filterwarnings("ignore:.*flex_attention.*:UserWarning")

MASKS = {"causal": {}, "window": {"window": 5}, "documents": {"doc": True}, "window+documents": {"window": 3,
                                                                                              "doc": True}}


def inputs(B, T, H, D, dtype, mask, requires_grad=False):
    q, k, v = (torch.randn(B, T, H, D, dtype=dtype, requires_grad=requires_grad) for _ in range(3))
    kwargs = {"window": MASKS[mask].get("window")}
    if MASKS[mask].get("doc"):
        kwargs["doc_ids"] = torch.cumsum(torch.rand(B, T) < 0.15, dim=1)  # a few documents per row
    return q, k, v, kwargs


@pytest.mark.parametrize("backend", ["sdpa", "flex", "eager"])
@pytest.mark.parametrize("mask", sorted(MASKS))
@pytest.mark.parametrize("T", [1, 7, 37, 65])
def test_forward_matches_float64(backend, mask, T):
    q, k, v, kw = inputs(2, T, 3, 16, torch.float32, mask)
    out = registry.get("attention", backend)(q, k, v, **kw)
    assert out.shape == q.shape
    oracle = reference(q, k, v, upcast=True, **kw)
    assert_parity(out, reference(q, k, v, **kw), oracle, name=f"{backend} out", noise=1e-6)


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("mask", sorted(MASKS))
@pytest.mark.parametrize("dtype, D, T", [(torch.float32, 16, 37), (torch.bfloat16, 32, 65),
                                         (torch.float32, 32, 1)])
def test_forward_and_backward_match_float64(backend, mask, dtype, D, T):
    q, k, v, kw = inputs(2, T, 2, D, dtype, mask, requires_grad=True)
    grad_out = torch.randn(2, T, 2, D, dtype=dtype)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = registry.get("attention", backend)(*leaves, **kw)
    out.backward(grad_out)
    peer_leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    peer = reference(*peer_leaves, **kw)
    peer.backward(grad_out)
    oracle_leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    oracle = reference(*oracle_leaves, upcast=True, **kw)
    oracle.backward(grad_out.double())
    noise = 1e-6 if dtype == torch.float32 else None
    assert_parity(out, peer, oracle, name=f"{backend} out", noise=noise)
    for name, a, p, o in zip("qkv", leaves, peer_leaves, oracle_leaves):
        assert_parity(a.grad, p.grad, o.grad, name=f"{backend} d{name}", k=3.0, noise=noise)


def test_flex_refuses_training_on_cpu():
    q, k, v, kw = inputs(1, 8, 1, 16, torch.float32, "causal", requires_grad=True)
    with pytest.raises(RuntimeError, match="no backward on the CPU.*sdpa"):
        A.flex(q, k, v)
    assert A.flex(q.detach(), k.detach(), v.detach()).shape == q.shape  # evaluation is fine


def test_varlen_boundaries_from_document_ids():
    doc_ids = torch.tensor([[0, 0, 1, 1, 1], [2, 2, 2, 3, 3]])
    cu, max_len = A._cu_seqlens(doc_ids)
    assert cu.tolist() == [0, 2, 5, 8, 10] and max_len == 3 and cu.dtype == torch.int32
    # the same document id continuing into the next row is still a new sequence
    cu, _ = A._cu_seqlens(torch.tensor([[0, 0], [0, 0]]))
    assert cu.tolist() == [0, 2, 4]


@pytest.fixture
def fake_machine(monkeypatch):
    """Simulate installed packages and a GPU capability without either."""

    def install(modules=(), capability=None):
        monkeypatch.setattr(A, "_import", lambda name: object() if name in modules else None)
        monkeypatch.setattr(A, "_capability", lambda device: capability if device.type == "cuda" else None)

    return install


@pytest.mark.parametrize("modules, capability, device, dtype, expected", [
    (("flash_attn_interface", "flash_attn"), (9, 0), "cuda", torch.bfloat16, "fa3"),
    (("flash_attn",), (9, 0), "cuda", torch.bfloat16, "fa2"),
    (("flash_attn_interface", "flash_attn"), (8, 0), "cuda", torch.bfloat16, "fa2"),
    (("flash_attn_interface",), (8, 6), "cuda", torch.float16, "sdpa"),
    ((), (9, 0), "cuda", torch.bfloat16, "sdpa"),
    (("flash_attn_interface", "flash_attn"), (9, 0), "cuda", torch.float32, "sdpa"),
    (("flash_attn_interface", "flash_attn"), None, "cpu", torch.bfloat16, "sdpa"),
], ids=["h100-fa3", "h100-fa2-only", "a100", "sm86-fa3-only", "h100-nothing", "fp32", "cpu"])
def test_auto_picks_the_best_available(fake_machine, modules, capability, device, dtype, expected):
    fake_machine(modules, capability)
    assert A.select_backend("auto", torch.device(device), dtype) == expected


def test_explicit_missing_backend_names_what_is_missing(fake_machine):
    fake_machine((), (9, 0))
    with pytest.raises(RuntimeError, match="'fa3' is not available.*flash_attn_interface.*not installed"):
        A.select_backend("fa3", torch.device("cuda"))
    with pytest.raises(RuntimeError, match="'fa2' is not available.*needs a CUDA GPU"):
        A.select_backend("fa2", torch.device("cpu"))
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        A.fa3(*inputs(1, 4, 1, 16, torch.bfloat16, "causal")[:3])
    fake_machine(("flash_attn_interface",), (8, 0))
    with pytest.raises(RuntimeError, match="needs an sm_90 GPU.*sm_80"):
        A.select_backend("fa3", torch.device("cuda"))
    with pytest.raises(KeyError, match="unknown attention backend"):
        A.select_backend("xformers", torch.device("cpu"))


def test_auto_logs_its_choice_once(caplog):
    q, k, v, _ = inputs(1, 8, 1, 16, torch.float32, "causal")
    A._LOGGED.clear()
    with caplog.at_level(logging.INFO, logger="kernels.attention"):
        A.auto(q, k, v)
        A.auto(q, k, v)
    assert [r.getMessage() for r in caplog.records] == ["attention auto: using sdpa for cpu torch.float32 tensors"]


def test_bad_inputs_raise():
    q = torch.randn(1, 8, 2, 16)
    with pytest.raises(ValueError, match=r"\(B, T, H, D\)"):
        A.sdpa(q, q[:, :4], q)
    with pytest.raises(TypeError, match="one dtype"):
        A.sdpa(q, q.half(), q)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["fa3", "fa2"])
@pytest.mark.parametrize("mask", sorted(MASKS))
def test_flash_attention_matches_float64(backend, mask):
    reason = A.unavailable_reason(backend, torch.device("cuda"), torch.bfloat16, 128)
    if reason:
        pytest.skip(reason)
    q, k, v, kw = inputs(2, 1023, 6, 128, torch.bfloat16, mask, requires_grad=True)
    q, k, v = (t.detach().cuda().requires_grad_() for t in (q, k, v))
    kw = {key: (val.cuda() if torch.is_tensor(val) else val) for key, val in kw.items()}
    grad_out = torch.randn_like(q)
    out = registry.get("attention", backend)(q, k, v, **kw)
    out.backward(grad_out)
    grads = [t.grad for t in (q, k, v)]
    peer_leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    peer = reference(*peer_leaves, **kw)
    peer.backward(grad_out)
    oracle_leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    oracle = reference(*oracle_leaves, upcast=True, **kw)
    oracle.backward(grad_out.double())
    assert_parity(out, peer, oracle, name=f"{backend} out")
    for name, g, p, o in zip("qkv", grads, peer_leaves, oracle_leaves):
        assert_parity(g, p.grad, o.grad, name=f"{backend} d{name}", k=3.0)
    again = registry.get("attention", backend)(q, k, v, **kw)
    assert torch.equal(again, out)  # deterministic forward
