"""Tolerances, comparisons and the one parity driver of the kernel tests.

Primary check (FlashAttention's): the kernel may be at most k times further from the float64 oracle than
the eager peer in the same dtype is, plus a noise floor. Secondary check: a fixed (atol, rtol) per dtype.
Both are NaN/inf-aware and report how many elements mismatch and where the first ones are.

check_parity runs the three paths — oracle (the eager reference in float64, upcast=True), peer (the same eager
code in the inputs' dtype) and kernel — forward and backward on fresh leaves with one shared grad_output, and
compares the output and every gradient. check_nonfinite holds a kernel to eager's NaN/inf positions. poisoned
gives NaN-filled output and workspace buffers, so an element a kernel fails to write fails the comparison.
"""

import dataclasses

import pytest
import torch

# (atol, rtol) per dtype: Liger-Kernel's fused linear cross-entropy test (fp32, bf16), Triton's tutorials (fp16);
# float64 for float64 paths. Loosen one only with a comment.
TOLERANCES = {
    torch.float32: (1e-5, 5e-4),
    torch.float16: (1e-2, 0.0),
    torch.bfloat16: (5e-3, 5e-2),
    torch.float64: (1e-10, 1e-10),
}


# For tests that feed NaN/inf in: the interpreter's numpy warns on the NaN arithmetic they are there to check.
NAN_WARNINGS = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _report(actual, expected, bad, name, limit_text, k=5):
    idx = bad.nonzero()[:k].tolist()
    firsts = ", ".join(f"{tuple(i)}: {actual[tuple(i)].item():.6g} vs {expected[tuple(i)].item():.6g}" for i in idx)
    return (f"{name}: {int(bad.sum())}/{bad.numel()} elements mismatch ({limit_text}); "
            f"max |diff| {(actual - expected).abs().nan_to_num(float('inf')).max().item():.3g}; first: {firsts}")


def assert_close(actual, expected, *, atol, rtol, name="tensor"):
    """allclose that treats any NaN/inf in `actual` (e.g. an unwritten poisoned element) as a mismatch."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.double(), expected.double()
    bad = ~torch.isfinite(a) | ((a - e).abs() > atol + rtol * e.abs())
    bad |= ~torch.isfinite(e) & (a != e)
    assert not bad.any(), _report(a, e, bad, name, f"atol={atol}, rtol={rtol}")


def rounding_noise(oracle: torch.Tensor, dtype: torch.dtype) -> float:
    """Twice the largest error of rounding the oracle to `dtype`: the default noise floor of assert_parity."""
    o = oracle.double()
    return 2 * (o.to(dtype).double() - o).abs().max().item()


def assert_parity(actual, peer, oracle, *, name="tensor", k=2.0, noise=None):
    """max|actual - oracle| <= k·max|peer - oracle| + noise, with every element finite.

    `noise` defaults to rounding_noise(oracle, actual.dtype).
    """
    a, p, o = actual.double(), peer.double(), oracle.double()
    assert torch.isfinite(a).all(), _report(a, o, ~torch.isfinite(a), name, "non-finite values")
    if noise is None:
        noise = rounding_noise(o, actual.dtype)
    err = (a - o).abs().max().item()
    peer_err = (p - o).abs().max().item()
    bound = k * peer_err + noise
    assert err <= bound, (f"{name}: max|kernel - oracle| = {err:.3g} > {k}·{peer_err:.3g} (peer) + {noise:.3g} "
                          f"(noise) = {bound:.3g}")
    return err, peer_err


def poisoned(x, *, dtype=None, device=None):
    """NaN buffers for `out=` / workspace arguments: a new NaN tensor shaped like `x` (a tensor, or a shape with
    dtype and device), or, for a workspace dataclass, every tensor field filled with NaN in place (returned)."""
    if dataclasses.is_dataclass(x):
        for f in dataclasses.fields(x):
            value = getattr(x, f.name)
            if isinstance(value, torch.Tensor):
                value.fill_(float("nan"))
        return x
    if isinstance(x, torch.Tensor):
        return torch.full_like(x, float("nan"))
    return torch.full(tuple(x), float("nan"), dtype=dtype, device=device)


def run(fn, inputs, grad_output=None, *, upcast=False, **kwargs) -> list:
    """[out, *grads] of fn(*inputs, **kwargs) on fresh leaves (every floating-point input is detached and cloned;
    float64 copies, and upcast=True passed to fn, when `upcast`). With grad_output (cast to the output's dtype)
    the backward runs and the gradient of every floating-point input follows the output, in input order."""
    backward = grad_output is not None
    leaves = [(t.double() if upcast else t).detach().clone().requires_grad_(backward)
              if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs]
    out = fn(*leaves, **kwargs, **({"upcast": True} if upcast else {}))
    if not backward:
        return [out.detach()]
    out.backward(grad_output.to(out.dtype))
    return [out.detach()] + [t.grad for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]


def _per_name(value, name, default):
    return value.get(name, default) if isinstance(value, dict) else (default if value is None else value)


def check_parity(kernel, reference, inputs, *, names, grad_output=None, kwargs=None, k=2.0, noise=None, table=(),
                 where=""):
    """The kernel against the float64 oracle, held to k·(peer error) + noise, for the output and (with
    grad_output) every gradient: `kernel(*inputs, **kwargs)`, `reference(*inputs, **kwargs)` (the peer) and
    `reference(..., upcast=True)` on float64 copies (the oracle), each on fresh leaves, one grad_output for all.

    names: one per compared tensor (the output, then the gradient of each floating-point input). k, noise: a
    number, or a dict by name (missing: k 2, noise assert_parity's default); a callable noise gets the oracle
    tensor. table: names also held to the fixed TOLERANCES table against the oracle. Returns the (kernel, peer,
    oracle) lists of [out, *grads].
    """
    kwargs = kwargs or {}
    got = run(kernel, inputs, grad_output, **kwargs)
    peer = run(reference, inputs, grad_output, **kwargs)
    oracle = run(reference, inputs, grad_output, upcast=True, **kwargs)
    assert len(names) == len(got) == len(peer), f"{len(names)} names for {len(got)} tensors"
    for name, a, p, o in zip(names, got, peer, oracle):
        label = f"{name} {where}".strip()
        assert a.dtype == p.dtype, f"{label}: dtype {a.dtype} != eager's {p.dtype}"
        assert a.shape == o.shape, f"{label}: shape {tuple(a.shape)} != eager's {tuple(o.shape)}"
        floor = _per_name(noise, name, None)
        assert_parity(a, p, o, name=label, k=_per_name(k, name, 2.0), noise=floor(o) if callable(floor) else floor)
        if name in table:
            atol, rtol = TOLERANCES[a.dtype]
            assert_close(a, o, atol=atol, rtol=rtol, name=label)
    return got, peer, oracle


def assert_same_nonfinite(actual, expected, *, name="tensor"):
    """NaN, +inf and -inf at exactly the same positions in both tensors."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    for kind, test in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        bad = test(actual) != test(expected)
        assert not bad.any(), _report(actual.double(), expected.double(), bad, name, f"{kind} positions differ")


def check_nonfinite(kernel, reference, inputs, *, names, grad_output=None, kwargs=None):
    """The kernel propagates NaN/inf exactly where eager does: the kernel and the eager reference run forward and
    backward as in check_parity, and every compared tensor has its NaN, +inf and -inf at the same positions.

    The eager side is the oracle (float64 on the same values), not the bf16 peer: the CPU's bf16 GEMM (oneDNN)
    smears a NaN into the neighbouring row of its output (measured: a NaN in row 3 of A made rows 2 and 3 of
    A @ B NaN), a property of that GEMM and not of the op. On these inputs nothing overflows in the dtype, so
    the float64 positions are the dtype's. Asserts the inputs make some non-finite value (else the test is void);
    returns the (kernel, oracle) lists of [out, *grads].
    """
    kwargs = kwargs or {}
    got = run(kernel, inputs, grad_output, **kwargs)
    oracle = run(reference, inputs, grad_output, upcast=True, **kwargs)
    assert len(names) == len(got), f"{len(names)} names for {len(got)} tensors"
    assert not all(torch.isfinite(o).all() for o in oracle), "the inputs make no non-finite value: the test is void"
    for name, a, o in zip(names, got, oracle):
        assert_same_nonfinite(a, o, name=name)
    return got, oracle


def check_second_backward(loss_fn, leaf: torch.Tensor):
    """loss_fn(leaf) backpropagated twice through one graph (retain_graph=True) gives leaf the same gradient both
    times: a backward that scaled saved tensors in place would double the second."""
    loss = loss_fn(leaf)
    loss.backward(torch.tensor(2.0), retain_graph=True)
    first = leaf.grad.clone()
    leaf.grad = None
    loss.backward(torch.tensor(2.0))
    assert torch.equal(leaf.grad, first)
