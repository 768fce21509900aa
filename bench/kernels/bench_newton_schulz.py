"""Newton-Schulz orthogonalisation (Muon's inner loop) over the 124M weight shapes.

    pytest bench/kernels/bench_newton_schulz.py --benchmark-json=out/ns.json [--modded-nanogpt PATH]

The case is bench.cases.newton_schulz.ns_case. Providers: eager (kernels.reference, as the optimizer calls it),
compile (torch.compile of the same function), triton (kernels.newton_schulz; GPU only), torch_muon
(torch.optim.Muon's orthogonaliser, one 2-D call per matrix), modded (our iteration on modded-nanogpt's XXT/XTX
and ba_plus_cAA kernels; GPU only, with --modded-nanogpt). bf16 where the device multiplies it natively, else
fp32 (bench.cases.case_dtype). Each row stores the useful (symmetric) FLOPs, the naive 3-matmul FLOPs and their
ratio: the symmetric scheme's speedup ceiling over the naive iteration.
"""

import pytest

from bench.cases import case_dtype
from bench.cases.newton_schulz import PROVIDERS, ns_case
from bench.conftest import timed
from model.config import model_preset

STEPS = 5
COEFFICIENTS = "quintic"


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


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", list(CASES))
def test_newton_schulz(benchmark, measure, device, modded_path, case, provider):
    t = timed(ns_case, provider, CASES[case], steps=STEPS, coefficients=COEFFICIENTS, device=device,
              dtype=case_dtype(device), modded_path=modded_path)
    t.fn()  # compile / first-launch work outside the timed rounds
    measure(t.fn, op="newton_schulz", flops=t.flops, bytes=t.bytes, case=case, provider=provider, **t.fields)
