"""optim.kronecker: the statistics G·Gᵀ / Gᵀ·G of same-shape matrices (the gram op), the eigendecomposition with its
fp64 retry, and the stacked state of Shampoo and SOAP (its slices are each matrix's own state, restacked after a
load)."""

import pytest
import torch

from kernels import registry
from optim.kronecker import KroneckerConfig, add_to_diagonal, eigh, gram_function, gram_impls
from optim.shampoo import Shampoo, ShampooConfig
from optim.soap import SOAP, SOAPConfig
from speedrun.cli import ConfigError


def generator() -> torch.Generator:
    return torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))


@pytest.mark.parametrize("impl", gram_impls())
def test_the_statistics_go_through_each_gram_implementation(impl):
    """Shampoo's factors and SOAP's (their EMA fused into the call) from the gram op's implementation `impl`
    (the Triton kernel under the interpreter on the CPU) against the float64 products."""
    g = generator()
    shapes = [(24, 40), (24, 40), (40, 24)]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(2)]
    for optimizer in (Shampoo, SOAP):
        params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
        opt = optimizer(params, lr=0.01, gram_impl=impl)
        beta = 0.95 if optimizer is Shampoo else 0.9
        left = [torch.zeros(s[0], s[0], dtype=torch.float64) for s in shapes]
        right = [torch.zeros(s[1], s[1], dtype=torch.float64) for s in shapes]
        for step_grads in grads:
            for i, (p, grad) in enumerate(zip(params, step_grads)):
                p.grad = grad.clone()
                grad = grad.double()
                left[i] = beta * left[i] + (1 - beta) * grad @ grad.T
                right[i] = beta * right[i] + (1 - beta) * grad.T @ grad
            opt.step()
        for i, p in enumerate(params):
            torch.testing.assert_close(opt.state[p]["left"].double(), left[i], rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(opt.state[p]["right"].double(), right[i], rtol=1e-5, atol=1e-4)


def test_float64_matrices_keep_float64_statistics():
    params = [torch.nn.Parameter(torch.randn(6, 4, dtype=torch.float64))]
    opt = Shampoo(params, lr=0.01)
    x = torch.randn(1, 6, 4, dtype=torch.float64)
    assert opt.statistic(x, side="left").dtype == torch.float64
    torch.testing.assert_close(opt.statistic(x, side="right"), x.mT @ x, rtol=1e-14, atol=1e-14)


def test_the_gram_implementations_are_the_registry_s():
    assert set(gram_impls()) == set(registry.names("gram")) >= {"eager"}
    for name in gram_impls():
        assert gram_function(name) is registry.get("gram", name)


@pytest.mark.parametrize("config", [ShampooConfig, SOAPConfig])
def test_gram_impl_auto_resolves_per_device(config):
    cfg = config()
    assert cfg.gram_impl == "auto" and cfg.implementations() == {"gram": "auto"}
    assert cfg.resolve_auto("cpu", native_bf16=False).gram_impl == "eager"
    assert cfg.resolve_auto("cuda", native_bf16=True).gram_impl == "triton"
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
    assert opt.state[params[0]]["step"] == 1 and "step" not in opt.state[params[1]]
    for p in params:
        p.grad = torch.randn(4, 3)
    opt.step()
    assert [opt.state[p]["step"] for p in params] == [2, 1]
