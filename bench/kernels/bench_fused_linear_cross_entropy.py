"""Fused linear cross-entropy (the LM head: hidden @ Wᵀ, tanh softcap, cross-entropy, both gradients).

    pytest bench/kernels/bench_fused_linear_cross_entropy.py --benchmark-json=out/flce.json

Providers: eager (kernels.reference.linear_cross_entropy in bf16, as the model calls it), compile (torch.compile
of the same function), triton (kernels.fused_linear_cross_entropy; GPU only), liger (Liger-Kernel's fused linear
cross-entropy; GPU only, when installed). One mode, forward + backward: the Triton and Liger kernels finish the
gradients during forward, so a forward-only time would not compare like with like. Each row stores the time,
TFLOP/s of the 6·N·H·V matmul FLOPs, and the peak memory of one call (GPU: torch.cuda.max_memory_allocated
above the inputs; CPU: `peak_memory_bytes`, the torch.profiler allocation trace, see below).
"""

import pytest
import torch

from bench.cases.fused_linear_cross_entropy import flce_bytes, flce_flops
from bench.conftest import require_gpu
from kernels import fused_linear_cross_entropy as flce
from kernels import registry
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


def peak_memory_bytes(fn, device, *, method: str = "profiler") -> tuple[object, int]:
    """(fn(), peak bytes allocated while fn ran, above what was live before). fn must be repeatable: it runs
    once first (warm-up: first-call caches, compilation) and is measured on the second call.

    CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats. CPU, where torch keeps no allocator
    statistics, two methods:

    - "profiler": torch.profiler(profile_memory=True) records every allocation and free through c10's CPU
      allocator with its size and time; the peak of the running sum is the high-water mark of live tensor
      bytes. Exact for plain torch code (eager, torch.compile). NOT for tensors handed to Triton-interpreted
      kernels: there it logged frees of buffers that were still alive (weakrefs showed) and dropped others, in
      both directions (torch 2.13, triton 3.9), so use "rss" for the interpreted path.
    - "rss": the process's peak resident set (Linux VmHWM, reset by writing 5 to /proc/self/clear_refs) minus
      the resident set before the call, after gc and malloc_trim. glibc's mmap threshold is pinned at 64 KiB
      (mallopt) so every tensor above that is its own mapping, returned at free, instead of heap memory the
      allocator may keep or reuse out of sight (this stays set for the process). Counts everything: the
      interpreter's numpy temporaries too. Agreed with "profiler" on eager code (4.00 vs 3.88 MiB; 196.50 vs
      196.46 MiB) and with the by-hand buffer count on the fused path.
    """
    device = torch.device(device)
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        return out, torch.cuda.max_memory_allocated() - base
    if method == "rss":
        return _rss_peak(fn)
    if method != "profiler":
        raise ValueError(f"method must be 'profiler' or 'rss', got {method!r}")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for _, nbytes in sorted(events, key=lambda e: e[0]):  # stable: same-time events keep their recorded order
        live += nbytes
        peak = max(peak, live)
    return out, peak


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def _proc_status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"/proc/self/status has no {key}")


def _rss_peak(fn):
    import ctypes
    import gc

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
        gc.collect()
        libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident set
    except OSError as e:
        pytest.skip(f"rss peak memory needs Linux glibc and a writable /proc/self/clear_refs: {e}")
    base = _proc_status_bytes("VmRSS")
    out = fn()
    return out, _proc_status_bytes("VmHWM") - base


def make_inputs(N, H, V, device, dtype=DTYPE, ignored_fraction=IGNORED_FRACTION):
    """hidden (N, H) and weight (V, H) leaves that need grad, at the model's scale, and targets with some ignored."""
    hidden = torch.randn(N, H, device=device).to(dtype).requires_grad_()
    weight = (torch.randn(V, H, device=device) / H**0.5).to(dtype).requires_grad_()
    targets = torch.randint(0, V, (N,), device=device)
    targets[torch.rand(N, device=device) < ignored_fraction] = -100
    return hidden, weight, targets


def _liger():
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except ImportError:
        return None
    return liger_fused_linear_cross_entropy


def setup(case: str, provider: str, device):
    """(inputs, fn) for one case and provider; fn runs forward + backward. Skips, with the reason, what
    cannot run here."""
    N, H, V, softcap = CASES[case]
    hidden, weight, targets = make_inputs(N, H, V, device)
    eager = registry.get("linear_cross_entropy", "eager")
    if provider == "eager":
        loss_fn = eager
    elif provider == "compile":
        loss_fn = torch.compile(eager)
    elif provider == "triton":
        require_gpu("triton")

        def loss_fn(h, w, t, softcap):
            return flce.fused_linear_cross_entropy(h, w, t, softcap=softcap, validate_targets=False)
    elif provider == "liger":
        require_gpu("liger")
        liger = _liger()
        if liger is None:
            pytest.skip("liger: liger-kernel is not installed (the GPU image has none; see shared/PLATFORM.md)")

        def loss_fn(h, w, t, softcap):
            return liger(h, w, t, softcap=softcap)
    else:
        raise ValueError(f"unknown provider {provider!r}")

    def step():
        loss = loss_fn(hidden, weight, targets, softcap=softcap)
        loss.backward()
        hidden.grad = weight.grad = None  # after the peak: each call allocates its gradients, as a training step
        return loss.detach()

    return (hidden, weight, targets), step


@pytest.mark.parametrize("provider", ["eager", "compile", "triton", "liger"])
@pytest.mark.parametrize("case", list(CASES))
def test_fused_linear_cross_entropy(benchmark, measure, device, case, provider):
    if device.type == "cpu" and case in BIG and provider in ("eager", "compile"):
        pytest.skip(f"{provider}: the 124M case needs ~10 GB and minutes per round on the CPU; see the cpu case")
    (hidden, weight, targets), fn = setup(case, provider, device)
    N, H, V, softcap = CASES[case]
    fn()  # compile / autotune / first-launch work outside the timed rounds
    measure(fn, flops=flce_flops(N, H, V),
            bytes=flce_bytes(N, H, V, DTYPE.itemsize, flce.pick_chunk_rows(N, V, 128)),
            rounds=3 if device.type == "cpu" else 10,
            case=case, provider=provider, shape=[N, H, V], dtype=str(DTYPE).removeprefix("torch."),
            softcap=softcap, logits_mb=N * V * 4 / 2**20)
    _, peak = peak_memory_bytes(fn, device)
    benchmark.extra_info["peak_mem_mb"] = peak / 2**20
    benchmark.extra_info["peak_mem_method"] = "cuda.max_memory_allocated" if device.type == "cuda" else "profiler"
