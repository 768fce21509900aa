"""ReLU² MLP (x (N, H) → relu(x w_fcᵀ)² → w_projᵀ → (N, H)) at the 124M shapes: forward, backward, full.

    pytest bench/kernels/bench_relu2_mlp.py --benchmark-json=out/relu2.json [--modded-nanogpt PATH]

The case is bench.cases.relu2_mlp.mlp_case. Providers: eager (kernels.reference, as the model calls it), compile
(torch.compile of the same function), triton (kernels.relu2_mlp; GPU only), liger (Liger's relu² between cuBLAS
GEMMs; GPU only, when installed), modded (modded-nanogpt's FusedLinearReLUSquareFunction; GPU only, with
--modded-nanogpt). Modes: forward (the training forward, with autograd recording), backward (retain_graph, grads
reset to None each call), full (forward + backward). bf16 where the device multiplies it natively, else fp32.
FLOPs: forward 4·N·H·F, backward 8·N·H·F (mlp_flops); bytes: the compulsory traffic of the Triton path
(mlp_bytes). On a GPU each row also records the peak memory one call allocates beyond its inputs
(bench.harness.peak_memory_bytes; the saved activation is the difference between implementations).
"""

import pytest

from bench.cases import case_dtype
from bench.cases.relu2_mlp import MODES, PROVIDERS, mlp_case
from bench.conftest import timed
from model.config import model_preset


def _micro_batch_tokens(preset: str, default: int) -> int:
    """Tokens of one micro-batch (batch_size × seq_len) of a training preset (speedrun.config.PRESETS)."""
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


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(CASES))
def test_relu2_mlp(benchmark, measure, device, modded_path, case, mode, provider):
    N, H, F = CASES[case]
    if device.type == "cpu" and case in CPU_SKIP:
        pytest.skip(f"{case}: {N} tokens take minutes per round on the CPU; a GPU case")
    t = timed(mlp_case, provider, N, H, F, mode=mode, device=device, dtype=case_dtype(device),
              modded_path=modded_path)
    t.fn()  # compile / autotune / first-launch work outside the timed rounds
    measure(t.fn, op="relu2_mlp", flops=t.flops, bytes=t.bytes, peak_memory=device.type == "cuda", case=case,
            provider=provider, **t.fields)
