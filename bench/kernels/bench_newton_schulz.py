"""Newton-Schulz orthogonalisation (Muon's inner loop) over the 124M weight shapes.

    pytest bench/kernels/bench_newton_schulz.py --benchmark-json=out/ns.json

Providers: eager (kernels.reference, bf16 in and out, as the optimizer calls it), compile (torch.compile of
the same function), triton (kernels.newton_schulz; GPU only), torch_muon (torch.optim.Muon's private
orthogonaliser, 2-D only, quintic coefficients). Each row stores the useful (symmetric) FLOPs, the naive
3-matmul FLOPs and their ratio: the symmetric scheme's speedup ceiling over the naive iteration.
"""

import pytest
import torch

from bench.cases.newton_schulz import ns_bytes, ns_flops
from bench.conftest import optional, provider_fn
from kernels.reference import QUINTIC
from model.config import model_preset

STEPS = 5
COEFFICIENTS = "quintic"
DTYPE = torch.bfloat16


def _cases():
    big, cpu = model_preset("gpt2-124m"), model_preset("cpu")
    d, f, layers = big.n_embd, big.mlp_ratio * big.n_embd, big.n_layer
    return {
        "attn_768x768": (d, d),  # c_q, c_k, c_v, c_proj of one layer
        "mlp_fc_3072x768": (f, d),  # c_fc weight (tall: runs on its transpose)
        "mlp_proj_768x3072": (d, f),  # c_proj weight
        f"attn_x{layers}_{layers}x768x768": (layers, d, d),  # one layer-stacked batch in one launch
        "cpu_128x512": (cpu.n_embd, cpu.mlp_ratio * cpu.n_embd),  # the CPU preset's MLP weight
    }


CASES = _cases()
BIG = {name for name in CASES if not name.startswith("cpu")}


def setup(case: str, provider: str, device):
    """(inputs, fn) for one case and provider; skips, with the reason, what cannot run here."""
    shape = CASES[case]
    G = torch.randn(shape, device=device).to(DTYPE)
    if provider == "torch_muon":
        if G.ndim != 2:
            pytest.skip("torch_muon: torch.optim.Muon orthogonalises 2-D matrices only (no batch)")
        zeropower = optional("torch.optim._muon", "_zeropower_via_newtonschulz", "torch_muon")
        return G, lambda: zeropower(G, QUINTIC, STEPS, 1e-7)
    fn = provider_fn("newton_schulz", provider)
    return G, lambda: fn(G, steps=STEPS, coefficients=COEFFICIENTS)


@pytest.mark.parametrize("provider", ["eager", "compile", "triton", "torch_muon"])
@pytest.mark.parametrize("case", list(CASES))
def test_newton_schulz(benchmark, measure, device, case, provider):
    G, fn = setup(case, provider, device)
    *lead, rows, cols = G.shape
    batch = lead[0] if lead else 1
    useful = ns_flops(rows, cols, STEPS, symmetric=True, batch=batch)
    naive = ns_flops(rows, cols, STEPS, symmetric=False, batch=batch)
    fn()  # compile / first-launch work outside the timed rounds
    measure(fn, flops=useful, bytes=ns_bytes(rows, cols, STEPS, G.element_size(), batch=batch), op="newton_schulz",
            case=case, provider=provider, shape=list(G.shape), dtype=str(G.dtype).removeprefix("torch."),
            steps=STEPS, coefficients=COEFFICIENTS, useful_flops=useful, naive_flops=naive,
            flop_ratio=naive / useful)
