"""optim.kronecker: the statistics G·Gᵀ / Gᵀ·G of same-shape matrices (the gram op), the eigendecomposition with its
fp64 retry, and the stacked state of Shampoo and SOAP (its slices are each matrix's own state, restacked after a
load)."""

import pytest
import torch

from kernels import registry
from optim.kronecker import KroneckerConfig, add_to_diagonal, eigh, gram, gram_function, gram_impls
from optim.shampoo import Shampoo, ShampooConfig
from optim.soap import SOAPConfig
from speedrun.cli import ConfigError


def generator() -> torch.Generator:
    return torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("batched", [False, True])
def test_gram_is_the_product_and_its_ema(side, batched):
    g = generator()
    x = torch.randn((3, 20, 12) if batched else (20, 12), generator=g)
    x64 = x.double()
    product = x64 @ x64.mT if side == "left" else x64.mT @ x64
    torch.testing.assert_close(gram(x, side=side).double(), product, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(gram(x, side=side, alpha=0.25).double(), 0.25 * product, rtol=1e-6, atol=1e-5)
    size = product.shape[-1]
    out = torch.randn(product.shape, generator=g)
    expected = 0.9 * out.double() + 0.1 * product
    returned = gram(x, side=side, out=out, alpha=0.1, beta=0.9)
    assert returned is out and out.shape[-2:] == (size, size)
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-5)
    bf16 = gram(x.bfloat16(), side=side)  # bf16 operands: fp32 products and sums
    assert bf16.dtype == torch.float32
    assert gram(x64, side=side).dtype == torch.float64  # float64 weights keep float64 statistics


def test_gram_checks_its_arguments():
    with pytest.raises(ValueError, match="side must be"):
        gram(torch.ones(2, 2), side="middle")
    with pytest.raises(ValueError, match="beta != 0 adds beta·out: pass out="):
        gram(torch.ones(2, 2), beta=0.5)
    with pytest.raises(ValueError, match=r"\(m, n\) or \(B, m, n\)"):
        gram(torch.ones(2))


def test_the_gram_implementations():
    assert gram_function("eager") is gram
    assert "eager" in gram_impls()
    for name in registry.names("gram"):  # the kernels' implementations, where registered
        assert gram_function(name) is registry.get("gram", name)


@pytest.mark.parametrize("config", [ShampooConfig, SOAPConfig])
def test_gram_impl_auto_resolves_per_device(config):
    cfg = config()
    assert cfg.gram_impl == "auto" and cfg.implementations() == {"gram": "auto"}
    assert cfg.resolve_auto("cpu", native_bf16=False).gram_impl == "eager"
    cuda = "triton" if "triton" in gram_impls() else "eager"
    assert cfg.resolve_auto("cuda", native_bf16=True).gram_impl == cuda
    assert config(gram_impl="eager").resolve_auto("cuda", native_bf16=True).gram_impl == "eager"  # explicit wins
    with pytest.raises(ConfigError, match=r"--optim.gram_impl='cublas'; choose from .*eager.*auto"):
        config(gram_impl="cublas")
    with pytest.raises(ConfigError, match=r"--optim.eigh_dtype='fp16'; choose from fp32, fp64"):
        config(eigh_dtype="fp16")


def test_kronecker_config_is_shared():
    assert issubclass(ShampooConfig, KroneckerConfig) and issubclass(SOAPConfig, KroneckerConfig)


def test_eigh_decomposes_and_retries_in_float64(monkeypatch):
    g = generator()
    a = torch.randn(4, 10, 10, generator=g)
    a = a @ a.mT
    values, vectors = eigh(a)
    assert values.dtype == vectors.dtype == torch.float32
    torch.testing.assert_close((vectors * values.unsqueeze(-2)) @ vectors.mT, a, rtol=1e-4, atol=1e-4)
    real = torch.linalg.eigh
    calls = []

    def fails_in_fp32(x):
        calls.append(x.dtype)
        if x.dtype == torch.float32:
            raise torch.linalg.LinAlgError("fp32 failed")
        return real(x)

    monkeypatch.setattr(torch.linalg, "eigh", fails_in_fp32)
    values, vectors = eigh(a)
    assert calls == [torch.float32, torch.float64] and values.dtype == torch.float32
    torch.testing.assert_close((vectors * values.unsqueeze(-2)) @ vectors.mT, a, rtol=1e-4, atol=1e-4)

    def always_fails(x):
        calls.append(x.dtype)
        raise torch.linalg.LinAlgError("failed")

    monkeypatch.setattr(torch.linalg, "eigh", always_fails)
    calls.clear()
    with pytest.raises(torch.linalg.LinAlgError):
        eigh(a)
    assert calls == [torch.float32, torch.float64]
    calls.clear()
    with pytest.raises(torch.linalg.LinAlgError):
        eigh(a, torch.float64)  # no second try in the same dtype
    assert calls == [torch.float64]


def test_add_to_diagonal():
    a = torch.randn(3, 4, 4)
    b = add_to_diagonal(a, 0.5)
    torch.testing.assert_close(b, a + 0.5 * torch.eye(4), rtol=0, atol=0)
    assert not torch.equal(a, b)  # a new tensor


def test_a_batch_s_state_is_each_matrix_s_own_and_is_restacked_after_a_load():
    g = generator()
    params = [torch.nn.Parameter(torch.randn(6, 5, generator=g)) for _ in range(3)]
    params.append(torch.nn.Parameter(torch.randn(5, 6, generator=g)))
    opt = Shampoo(params, lr=0.01, precondition_frequency=1)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    left = [opt.state[p]["left"] for p in params[:3]]
    stack = left[0]._base
    assert stack is not None and stack.shape == (3, 6, 6) and all(t._base is stack for t in left)
    state = opt.state_dict()
    fresh = Shampoo(params, lr=0.01, precondition_frequency=1)
    fresh.load_state_dict(state)
    old = [opt.state[p]["left"].clone() for p in params]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    before = [fresh.state[p]["left"].clone() for p in params]
    fresh.step()
    after = [fresh.state[p]["left"] for p in params[:3]]
    assert all(t._base is after[0]._base for t in after) and after[0]._base is not stack  # its own stack
    assert all(torch.equal(opt.state[p]["left"], o) for p, o in zip(params, old))  # the loaded-from state untouched
    for b, p in zip(before, params):
        torch.testing.assert_close(fresh.state[p]["left"], 0.95 * b + 0.05 * p.grad @ p.grad.T, rtol=1e-5, atol=1e-5)


def test_matrices_with_different_step_counts_are_separate_batches():
    params = [torch.nn.Parameter(torch.randn(4, 3)) for _ in range(2)]
    opt = Shampoo(params, lr=0.01)
    params[0].grad = torch.randn(4, 3)
    opt.step()  # the second matrix has no gradient: skipped
    assert int(opt.state[params[0]]["step"]) == 1 and "step" not in opt.state[params[1]]
    for p in params:
        p.grad = torch.randn(4, 3)
    opt.step()
    assert [int(opt.state[p]["step"]) for p in params] == [2, 1]
