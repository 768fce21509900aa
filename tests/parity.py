"""Tolerances and the comparison used by every kernel parity test.

Primary check (FlashAttention's): the kernel may be at most k times further from the float64 oracle than
the eager peer in the same dtype is, plus a noise floor. Secondary check: a fixed (atol, rtol) per dtype.
Both are NaN/inf-aware and report how many elements mismatch and where the first ones are.
"""

import torch

# (atol, rtol) per dtype; the sources are listed in shared/STYLE.md §3. Loosen one only with a comment.
TOLERANCES = {
    torch.float32: (1e-5, 5e-4),
    torch.float16: (1e-2, 0.0),
    torch.bfloat16: (5e-3, 5e-2),
    torch.float64: (1e-10, 1e-10),
}


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


def assert_parity(actual, peer, oracle, *, name="tensor", k=2.0, noise=None):
    """max|actual - oracle| <= k·max|peer - oracle| + noise, with every element finite.

    `noise` defaults to twice the rounding error of the oracle in actual's dtype.
    """
    a, p, o = actual.double(), peer.double(), oracle.double()
    assert torch.isfinite(a).all(), _report(a, o, ~torch.isfinite(a), name, "non-finite values")
    if noise is None:
        noise = 2 * (o.to(actual.dtype).double() - o).abs().max().item()
    err = (a - o).abs().max().item()
    peer_err = (p - o).abs().max().item()
    bound = k * peer_err + noise
    assert err <= bound, (f"{name}: max|kernel - oracle| = {err:.3g} > {k}·{peer_err:.3g} (peer) + {noise:.3g} "
                          f"(noise) = {bound:.3g}")
    return err, peer_err
