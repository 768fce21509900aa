"""Linear cross-entropy (the LM head: hidden @ Wᵀ, tanh softcap, cross-entropy, both gradients).

    pytest bench/kernels/bench_linear_cross_entropy.py --benchmark-json=out/lce.json

Providers: eager (kernels.reference.linear_cross_entropy in bf16, as the model calls it), compile (torch.compile
of the same function), triton (kernels.linear_cross_entropy; GPU only), chunked
(kernels.linear_cross_entropy_chunked, the CPU's default; any device), liger (Liger-Kernel's fused linear
cross-entropy; GPU only, when installed). One mode, forward + backward: the Triton and Liger kernels finish the
gradients during forward, so a forward-only time would not compare like with like. Each row stores the time,
TFLOP/s of the 6·N·H·V matmul FLOPs, and the peak memory of one call above the inputs
(bench.harness.peak_memory_bytes: torch.cuda.max_memory_allocated on a GPU, the torch.profiler allocation trace
on the CPU).
"""

import functools

import pytest
import torch

from bench.cases.linear_cross_entropy import lce_bytes, lce_flops
from bench.conftest import optional, provider_fn, require_gpu
from kernels import linear_cross_entropy as lce
from model.config import model_preset

DTYPE = torch.bfloat16
IGNORED_FRACTION = 0.05  # a few ignore_index tokens, as padded batches have


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


def make_inputs(N, H, V, device, dtype=DTYPE, ignored_fraction=IGNORED_FRACTION):
    """hidden (N, H) and weight (V, H) leaves that need grad, at the model's scale, and targets with some ignored."""
    hidden = torch.randn(N, H, device=device).to(dtype).requires_grad_()
    weight = (torch.randn(V, H, device=device) / H**0.5).to(dtype).requires_grad_()
    targets = torch.randint(0, V, (N,), device=device)
    targets[torch.rand(N, device=device) < ignored_fraction] = -100
    return hidden, weight, targets


def setup(case: str, provider: str, device):
    """(inputs, fn) for one case and provider; fn runs forward + backward. Skips, with the reason, what
    cannot run here."""
    N, H, V, softcap = CASES[case]
    hidden, weight, targets = make_inputs(N, H, V, device)
    if provider == "liger":
        require_gpu("liger")
        liger = optional("liger_kernel.transformers.functional", "liger_fused_linear_cross_entropy", "liger")
        loss_fn = functools.partial(liger, softcap=softcap)
    else:
        loss_fn = functools.partial(provider_fn("linear_cross_entropy", provider), softcap=softcap)

    def step():
        loss = loss_fn(hidden, weight, targets)
        loss.backward()
        hidden.grad = weight.grad = None  # after the peak: each call allocates its gradients, as a training step
        return loss.detach()

    return (hidden, weight, targets), step


@pytest.mark.parametrize("provider", ["eager", "compile", "triton", "chunked", "liger"])
@pytest.mark.parametrize("case", list(CASES))
def test_linear_cross_entropy(benchmark, measure, device, case, provider):
    if device.type == "cpu" and case in BIG and provider in ("eager", "compile", "chunked"):
        pytest.skip(f"{provider}: the 124M case needs ~10 GB and minutes per round on the CPU; see the cpu case")
    (hidden, weight, targets), fn = setup(case, provider, device)
    N, H, V, softcap = CASES[case]
    fn()  # compile / autotune / first-launch work outside the timed rounds
    measure(fn, flops=lce_flops(N, H, V), bytes=lce_bytes(N, H, V, DTYPE.itemsize, lce.pick_chunk_rows(N, V, 128)),
            rounds=3, peak_memory=True, case=case, provider=provider, shape=[N, H, V],
            dtype=str(DTYPE).removeprefix("torch."), softcap=softcap, logits_mb=N * V * 4 / 2**20)
