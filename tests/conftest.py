"""Test configuration: Triton's interpreter on CPU-only machines, seeds, and the gpu/slow markers."""

import os

import pytest
import torch

# Must happen before anything imports triton: without a GPU, Triton kernels run under the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# One inductor cache directory per CPU capability (tests/test_cpu_kinds.py runs the suite forced to AVX2 too),
# before any test compiles: the rule every process of the project follows (kernels.device applies it at import).
from kernels.device import separate_inductor_cache  # noqa: E402 (after TRITON_INTERPRET)

separate_inductor_cache()


def pytest_report_header(config):
    """The kind of machine the results come from: tolerances and speeds differ between AVX-512 and AVX2 CPUs."""
    import numpy
    import triton

    from bench.harness import machine_line

    lines = [f"machine: {machine_line()}",
             f"torch {torch.__version__}, triton {triton.__version__}, numpy {numpy.__version__}, "
             f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}"]
    from kernels.device import interpreter_unavailable_reason

    why = interpreter_unavailable_reason()
    if why and os.environ.get("TRITON_INTERPRET") == "1":
        lines.append(f"Triton kernels on the CPU are skipped: {why}")
    return lines


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A test that reaches a Triton launcher when the interpreter cannot run here is skipped with the reason."""
    from kernels.device import InterpreterUnavailable

    try:
        return (yield)
    except InterpreterUnavailable as e:
        pytest.skip(str(e))


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


@pytest.fixture(scope="session")
def text_shards(tmp_path_factory):
    """Shards tokenized (by data.prepare's text pipeline) from real English: a few standard-library sources."""
    import argparse
    import collections
    import dataclasses
    import inspect
    import json
    import logging
    import textwrap

    from data import prepare

    root = tmp_path_factory.mktemp("corpus")
    docs = root / "docs"
    docs.mkdir()
    for module in (argparse, collections, dataclasses, json, logging, textwrap):
        (docs / f"{module.__name__}.txt").write_text(inspect.getsource(module))
    out = root / "shards"
    prepare.main(["text", str(docs), "--out", str(out), "--name", "stdlib", "--val-fraction", "0.2",
                  "--workers", "1"])
    return out


@pytest.fixture(scope="session")
def sm90_reports():
    """sm_90 codegen reports of every kernel configuration (bench.codegen, compiled once in a subprocess
    without the interpreter). Each kernel's test asserts its own rows have no violations."""
    from bench import codegen

    return codegen.reports_in_subprocess()


@pytest.fixture
def assert_sm90_clean(sm90_reports):
    """check(prefix, cases): one kernel module's sm_90 reports exist for every case and show no violation
    (spills, shared memory over 227 KB, registers over 255, no HGMMA where expected); returns its rows."""

    def check(prefix: str, cases) -> list[dict]:
        mine = [r for r in sm90_reports if r["kernel"].startswith(prefix)]
        assert len(mine) == len(cases), f"{len(mine)} sm_90 reports for {len(cases)} {prefix}* cases"
        bad = {f"{r['kernel']} [{r['config']}]": r["violations"] for r in mine if r["violations"]}
        assert not bad, bad
        return mine

    return check
