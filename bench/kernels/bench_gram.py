"""gram (the statistics of Shampoo / SOAP preconditioners) over the track-3 hidden matrix shapes.

    pytest bench/kernels/bench_gram.py --benchmark-json=out/gram.json

Providers: eager (kernels.reference.gram: fp32 addmm / baddbmm, as an optimizer would call it), compile
(torch.compile of the same function), triton (kernels.gram; GPU only). Each case is the EMA update of one side's
statistic, out ← β·out + (1-β)·G·Gᵀ (or Gᵀ·G), G a bf16 gradient, out fp32; each row stores the useful
(symmetric) FLOPs, the naive 2·s²·K FLOPs and their ratio.
"""

import pytest
import torch

from bench.cases.gram import gram_bytes, gram_flops, track3_matrices
from bench.conftest import provider_fn

DTYPE = torch.bfloat16
BETA = 0.95


def _cases():
    cases = {}
    for name, (rows, cols) in track3_matrices().items():
        for side in ("left", "right"):
            cases[f"{name}_{rows}x{cols}_{side}"] = ((rows, cols), side)
    return cases


CASES = _cases()


def setup(case: str, provider: str, device):
    """(inputs, fn) for one case and provider; skips, with the reason, what cannot run here."""
    shape, side = CASES[case]
    G = torch.randn(shape, device=device).to(DTYPE)
    s = shape[0] if side == "left" else shape[1]
    stat = torch.zeros(s, s, device=device)
    fn = provider_fn("gram", provider)
    return (G, stat), lambda: fn(G, side=side, out=stat, alpha=1 - BETA, beta=BETA)


@pytest.mark.parametrize("provider", ["eager", "compile", "triton"])
@pytest.mark.parametrize("case", list(CASES))
def test_gram(benchmark, measure, device, case, provider):
    (G, _), fn = setup(case, provider, device)
    (rows, cols), side = CASES[case]
    useful = gram_flops(rows, cols, side)
    naive = gram_flops(rows, cols, side, symmetric=False)
    fn()  # compile / first-launch work outside the timed rounds
    measure(fn, flops=useful, bytes=gram_bytes(rows, cols, side, G.element_size(), accumulate=True),
            rounds=3 if device.type == "cpu" else 5, case=case, provider=provider, shape=[rows, cols], side=side,
            dtype=str(G.dtype).removeprefix("torch."), useful_flops=useful, naive_flops=naive,
            flop_ratio=naive / useful)
