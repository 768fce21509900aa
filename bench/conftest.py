"""Fixtures shared by every benchmark: the timing harness and provider gating.

Run:  pytest bench/ --benchmark-json=out/bench.json   (then: python -m bench.summary out/bench.json)
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels are not timed on the CPU, but importing them must not need a driver.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from bench import harness  # noqa: E402


def pytest_report_header(config):
    return f"machine: {harness.machine_line()}"


@pytest.fixture
def device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def measure(benchmark, device):
    """measure(fn, flops=..., bytes=..., **info) -> figures; times fn with bench.harness.measure."""

    def run(fn, **kwargs):
        return harness.measure(benchmark, fn, device=device, **kwargs)

    return run


def require_gpu(provider: str):
    """Skip, with the reason, a provider that is only meaningful on a CUDA GPU."""
    if not torch.cuda.is_available():
        pytest.skip(f"{provider}: needs a CUDA GPU (none on this machine; the interpreter is for parity, not timing)")
