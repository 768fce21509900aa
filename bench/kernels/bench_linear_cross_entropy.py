"""Fused linear cross-entropy (the LM head: hidden @ Wᵀ, softcap, cross-entropy, both gradients).

    pytest bench/kernels/bench_linear_cross_entropy.py --benchmark-json=out/lce.json [--modded-nanogpt PATH]

The case is bench.cases.linear_cross_entropy.lce_case. Providers: eager (kernels.reference, as the model
calls it), compile (torch.compile of the same function), triton (kernels.linear_cross_entropy; GPU only),
chunked (kernels.linear_cross_entropy_chunked, the CPU's default; any device), liger (Liger-Kernel's fused linear
cross-entropy; GPU only, when installed), modded (modded-nanogpt's FusedSoftcappedCrossEntropy, an fp8 head with
its own cap: a speed peer; sm_90, with --modded-nanogpt). One mode, forward + backward. bf16 where the device
multiplies it natively, else fp32 (bench.cases.case_dtype). Each row stores the time, TFLOP/s of the 6·N·H·V
matmul FLOPs, and the peak memory of one call above the inputs (bench.harness.peak_memory_bytes:
torch.cuda.max_memory_allocated on a GPU, the torch.profiler allocation trace on the CPU).
"""

import pytest

from bench.cases import case_dtype
from bench.cases.linear_cross_entropy import PROVIDERS, lce_case
from bench.conftest import timed
from model.config import model_preset


def _cases():
    big, cpu = model_preset("gpt2-124m"), model_preset("cpu")
    return {
        # The speedrun LM head: 8192 tokens (e.g. 8 sequences of 1024) × d 768 → vocab 50304, softcap 15.
        "124m_8192x768x50304": (8192, big.n_embd, big.vocab_size, big.logit_softcap),
        # One CPU-track step: 1024 tokens × d 128 → 50304 (the step the CPU preset spends most time in).
        "cpu_1024x128x50304": (1024, cpu.n_embd, cpu.vocab_size, cpu.logit_softcap),
    }


CASES = _cases()
BIG = {name for name in CASES if not name.startswith("cpu")}


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", list(CASES))
def test_linear_cross_entropy(benchmark, measure, device, modded_path, case, provider):
    if device.type == "cpu" and case in BIG and provider in ("eager", "compile", "chunked"):
        pytest.skip(f"{provider}: the 124M case needs ~10 GB and minutes per round on the CPU; see the cpu case")
    N, H, V, softcap = CASES[case]
    t = timed(lce_case, provider, N, H, V, device=device, dtype=case_dtype(device), softcap=softcap,
              modded_path=modded_path)
    t.fn()  # compile / autotune / first-launch work outside the timed rounds
    measure(t.fn, op="linear_cross_entropy", flops=t.flops, bytes=t.bytes, peak_memory=True, case=case,
            provider=provider, **t.fields)
