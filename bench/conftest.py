"""Fixtures shared by every benchmark: the timing harness, provider gating, the machine record.

Run:  pytest bench/ --benchmark-json=out/bench.json   (then: python -m bench.summary out/bench.json)

Each pytest-benchmark round is one timed call of the kernel (bench/harness.py says how), so pytest-benchmark's
statistics and its compare options describe the kernel:

    pytest bench/ --benchmark-save=before                                   # .benchmarks/<machine>/0001_before.json
    pytest bench/ --benchmark-compare=0001 --benchmark-compare-fail=median:5%   # fails on a 5% slower median
    pytest-benchmark compare 0001 0002 --group-by=group,param:case              # side by side

Time per case: --benchmark-max-time (seconds, default 1.0) and --benchmark-min-rounds (default 5).
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels are not timed on the CPU, but importing them must not need a driver.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from bench import harness, provenance  # noqa: E402
from bench.cases import Timed, Unavailable  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--modded-nanogpt", default=None, metavar="PATH",
                     help="a KellerJordan/modded-nanogpt checkout (or its triton_kernels.py): its kernels become the "
                          "benches' `modded` provider (bench/modded.py)")


def pytest_report_header(config):
    return f"machine: {harness.machine_line()}"


def pytest_configure(config):
    config._speedrun_machine_at_start = provenance.machine()


def pytest_collection_modifyitems(config, items):
    """On a GPU every bench's pytest-benchmark timer is the CUDA event clock (bench.harness.cuda_event_time)."""
    if not torch.cuda.is_available():
        return
    for item in items:
        if "benchmark" in getattr(item, "fixturenames", ()):
            marker = item.get_closest_marker("benchmark")
            kwargs = {**(marker.kwargs if marker else {}), "timer": harness.cuda_event_time}
            item.add_marker(pytest.mark.benchmark(**kwargs), append=False)  # the closest marker: ours


def pytest_benchmark_update_machine_info(config, machine_info):
    """The machine once per run: CPU model, SIMD level, native bf16, threads, 1-minute load at the start and at
    the end of the run, GPU, versions, commit, and how a round is timed."""
    start = getattr(config, "_speedrun_machine_at_start", None) or provenance.machine()
    machine_info["speedrun"] = {
        **start,
        "loadavg_1m_start": start["loadavg_1m"],
        "loadavg_1m_end": provenance.loadavg_1m(),
        **provenance.versions(),
        "commit": provenance.git_commit(),
        "timer": harness.Clock("cuda" if torch.cuda.is_available() else "cpu").describe(),
    }
    del machine_info["speedrun"]["loadavg_1m"]


VOLATILE = ("loadavg_1m_start", "loadavg_1m_end", "commit")  # differ between runs on one machine


@pytest.hookimpl(wrapper=True)
def pytest_benchmark_compare_machine_info(config, benchmarksession, machine_info, compared_benchmark):
    """pytest-benchmark warns when the compared run's machine_info differs from this one's: leave the load and the
    commit (recorded, but they differ between any two runs) out of that comparison, so the warning means another
    machine, thread count or software."""
    records = [machine_info.get("speedrun") or {}, (compared_benchmark.get("machine_info") or {}).get("speedrun") or {}]
    held = [{k: r.pop(k) for k in VOLATILE if k in r} for r in records]
    try:
        return (yield)
    finally:
        for record, values in zip(records, held):
            record.update(values)


@pytest.fixture
def device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def measure(benchmark, device, request):
    """measure(fn, op=..., flops=..., bytes=..., **info) -> figures; times fn with bench.harness.measure within
    --benchmark-max-time, at least --benchmark-min-rounds rounds."""
    budget_s = float(request.config.getoption("benchmark_max_time"))
    min_rounds = int(request.config.getoption("benchmark_min_rounds"))

    def run(fn, **kwargs):
        return harness.measure(benchmark, fn, device=device, budget_s=budget_s, min_rounds=min_rounds, **kwargs)

    return run


@pytest.fixture
def modded_path(request):
    """The modded-nanogpt checkout given with --modded-nanogpt (its triton_kernels.py are the `modded` peers)."""
    return request.config.getoption("modded_nanogpt")


def require_gpu(provider: str):
    """Skip, with the reason, a provider that is only meaningful on a CUDA GPU."""
    if not torch.cuda.is_available():
        pytest.skip(f"{provider}: needs a CUDA GPU (none on this machine; the interpreter is for parity, not timing)")


# Providers whose kernels are Triton (ours and the peers'): timed on a GPU only.
GPU_ONLY = {"triton", "liger", "modded"}


def timed(case, provider: str, *args, **kwargs) -> Timed:
    """case(provider, *args, **kwargs) (a bench.cases factory), or a skip with the reason it cannot run here."""
    if provider in GPU_ONLY:
        require_gpu(provider)
    try:
        return case(provider, *args, **kwargs)
    except Unavailable as e:
        pytest.skip(str(e))
