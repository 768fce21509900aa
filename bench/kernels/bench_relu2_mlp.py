"""ReLU² MLP (x (N, H) → relu(x w_fcᵀ)² → w_projᵀ → (N, H)) at the 124M shapes: forward, backward, full.

    pytest bench/kernels/bench_relu2_mlp.py --benchmark-json=out/relu2.json

Providers: eager (kernels.reference.relu2_mlp in bf16, as the model calls it), compile (torch.compile of
the same function), triton (kernels.relu2_mlp; GPU only: the interpreter is for parity, not timing).
Modes: forward (the training forward, with autograd recording), backward (retain_graph, grads reset to
None each call), full (forward + backward). FLOPs: forward 4·N·H·F, backward 8·N·H·F (mlp_flops); bytes:
the compulsory traffic of the Triton path (mlp_bytes). On a GPU each row also records the peak memory one
call allocates beyond its inputs (bench.harness.peak_memory_bytes; the saved activation is the difference
between implementations).
"""

import pytest
import torch

from bench.cases.relu2_mlp import mlp_bytes, mlp_flops
from bench.conftest import provider_fn
from model.config import model_preset

DTYPE = torch.bfloat16
MODES = ["forward", "backward", "full"]


def _micro_batch_tokens(preset: str, default: int) -> int:
    """Tokens of one micro-batch (batch_size × seq_len) of a training preset in configs.py."""
    try:
        from speedrun.config import PRESETS

        cfg = PRESETS[preset]()
        return cfg.batch_size * cfg.seq_len
    except (ImportError, KeyError):
        return default


def _cases():
    big, cpu = model_preset("gpt2-124m"), model_preset("cpu")
    d, f = big.n_embd, big.mlp_ratio * big.n_embd
    tokens = _micro_batch_tokens("gpt2-124m", 32 * 2048)
    return {
        "124m_8k": (8192, d, f),  # 4 sequences of 2048: the shape of bench.codegen's floor
        f"124m_{tokens // 1024}k": (tokens, d, f),  # one training micro-batch of the gpt2-124m preset (GPU only)
        "cpu_1k": (_micro_batch_tokens("cpu", 1024), cpu.n_embd, cpu.mlp_ratio * cpu.n_embd),  # the CPU track
    }


CASES = _cases()
CPU_SKIP = {name for name, (n, _, _) in CASES.items() if n > 8192}  # minutes per round on 2 shared cores


def setup(case: str, provider: str, mode: str, device):
    """(inputs, fn) for one case, provider and mode; skips, with the reason, what cannot run here."""
    N, H, F = CASES[case]
    if device.type == "cpu" and case in CPU_SKIP:
        pytest.skip(f"{case}: {N} tokens take minutes per round on the CPU; a GPU case")
    fn = provider_fn("relu2_mlp", provider)

    x = torch.randn(N, H, device=device).to(DTYPE).requires_grad_()
    w_fc = (torch.randn(F, H, device=device) / H**0.5).to(DTYPE).requires_grad_()
    w_proj = (torch.randn(H, F, device=device) / F**0.5).to(DTYPE).requires_grad_()
    dy = torch.randn(N, H, device=device).to(DTYPE)
    leaves = (x, w_fc, w_proj)

    def clear_grads():
        for t in leaves:
            t.grad = None

    if mode == "forward":
        return leaves, lambda: fn(x, w_fc, w_proj)
    if mode == "backward":
        y = fn(x, w_fc, w_proj)

        def backward():
            clear_grads()
            y.backward(dy, retain_graph=True)

        return leaves, backward
    if mode == "full":
        def full():
            clear_grads()
            fn(x, w_fc, w_proj).backward(dy)

        return leaves, full
    raise ValueError(f"unknown mode {mode!r}")


@pytest.mark.parametrize("provider", ["eager", "compile", "triton"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(CASES))
def test_relu2_mlp(benchmark, measure, device, case, mode, provider):
    if provider == "compile":
        # A fresh compile per case, without donated buffers: a graph compiled for a retain_graph=False
        # backward (the full mode) may reuse its saved buffers, and then refuses the backward mode's
        # retain_graph=True calls ("compiled with non-empty donated buffers").
        torch._dynamo.reset()
        with torch._functorch.config.patch(donated_buffer=False):
            _run(benchmark, measure, device, case, mode, provider)
    else:
        _run(benchmark, measure, device, case, mode, provider)


def _run(benchmark, measure, device, case, mode, provider):
    leaves, fn = setup(case, provider, mode, device)
    N, H, F = CASES[case]
    fn()  # compile / autotune / first-launch work outside the timed rounds
    rounds = 3 if device.type == "cpu" and N * H * F > 10**9 else 5
    measure(fn, flops=mlp_flops(N, H, F, mode), bytes=mlp_bytes(N, H, F, mode, DTYPE.itemsize), rounds=rounds,
            peak_memory=device.type == "cuda", case=case, provider=provider, mode=mode,
            shape={"N": N, "H": H, "F": F}, dtype=str(DTYPE).removeprefix("torch."))
