"""Attention backends (kernels/attention.py) at the 124M shapes, forward and backward.

    pytest bench/kernels/bench_attention.py --benchmark-json=out/attention.json

Cases: B·T = 65,536 tokens (the gpt2-124m preset's 32 × 2048 per GPU) at T = 1024, 2048 and 4096 with the model's
H=6, D=128, causal (GPU only); the same at T=2048 with document masking (documents of 64..2048 tokens from a fixed
seed; FlashAttention runs it as varlen); and the CPU preset's shape (4 × 256, H=4, D=32), which runs everywhere.
bf16 where the device multiplies it natively, else fp32 (bench.cases.case_dtype). Providers: every registered
backend (eager, sdpa, flex, fa3, fa2, fa4) and auto; a provider that cannot run here is skipped with the reason
from kernels.attention. Modes: fwd, and bwd (the backward of one retained forward graph). The case is
bench.cases.attention.attention_case.

FLOPs: causal 4·B·H·T²·D/2 forward, 2.5× that backward (FlashAttention's and Triton's count); with documents,
Σ over documents of 4·H·L²·D/2, i.e. only the work the mask leaves.
"""

import pytest

from bench.cases import Unavailable, case_dtype
from bench.cases.attention import PROVIDERS, attention_case
from bench.conftest import require_gpu
from speedrun.config import PRESETS


def _cases():
    """name -> (B, T, H, D, documents); dimensions read from the presets."""
    big, cpu = PRESETS["gpt2-124m"](), PRESETS["cpu"]()
    tokens = big.batch_size * big.seq_len  # tokens per GPU per step
    H, D = big.model.n_head, big.model.head_dim
    cases = {f"124m_T{T}": (tokens // T, T, H, D, False) for T in (1024, 2048, 4096)}
    cases["124m_T2048_docs"] = (tokens // 2048, 2048, H, D, True)
    cases["cpu_T256"] = (cpu.batch_size, cpu.seq_len, cpu.model.n_head, cpu.model.head_dim, False)
    return cases


CASES = _cases()


@pytest.mark.parametrize("mode", ["fwd", "bwd"])
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", list(CASES))
def test_attention(benchmark, measure, device, case, provider, mode):
    B, T, H, D, documents = CASES[case]
    if not case.startswith("cpu"):
        require_gpu(f"{provider} at {case}")
    try:
        t = attention_case(provider, B, T, H, D, device=device, dtype=case_dtype(device), backward=mode == "bwd",
                           mask="docs" if documents else "causal")
    except Unavailable as exc:
        pytest.skip(str(exc))
    fields = {k: v for k, v in t.fields.items() if k != "window"}  # never set here
    t.fn()  # compile / first-launch / mask-building work outside the timed rounds
    measure(t.fn, op="attention", flops=t.flops, case=case, provider=provider, mode=mode, causal=True, **fields)
