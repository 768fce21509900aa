"""Fixtures shared by every benchmark: the timing harness and provider gating.

Run:  pytest bench/ --benchmark-json=out/bench.json   (then: python -m bench.summary out/bench.json)
"""

import importlib
import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels are not timed on the CPU, but importing them must not need a driver.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from bench import harness  # noqa: E402
from kernels import registry  # noqa: E402


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


# Registered implementations in plain PyTorch: they run on any device.
ANY_DEVICE = {"chunked"}


def provider_fn(op: str, provider: str):
    """The function a provider times for registry op `op`: "eager" (kernels.reference, the tests' peer),
    "compile" (torch.compile of eager), or a registered implementation: "triton" (GPU only), "chunked" (any)."""
    eager = registry.get(op, "eager")
    if provider == "eager":
        return eager
    if provider == "compile":
        return torch.compile(eager)
    if provider not in ANY_DEVICE:
        require_gpu(provider)
    return registry.get(op, provider)


def optional(module: str, name: str, provider: str):
    """`module.name` for an external provider, or a skip naming what is missing."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        pytest.skip(f"{provider}: {module}.{name} is not available here ({e})")
