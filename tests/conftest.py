"""Test configuration: Triton's interpreter on CPU-only machines, seeds, and the gpu/slow markers."""

import os

import pytest
import torch

# Must happen before anything imports triton: without a GPU, Triton kernels run under the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    has_gpu = torch.cuda.is_available()
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="gpu: needs a CUDA GPU (none on this machine)"))
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(pytest.mark.skip(reason="slow: opt-in with --runslow"))


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


@pytest.fixture
def device():
    """CUDA when present; else CPU (Triton kernels then run under the interpreter)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
