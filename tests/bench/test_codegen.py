"""bench.codegen: the report's invariants, on a matmul compiled here for sm_90 (no GPU needed).

Each kernel's own test file checks its codegen_cases() through the `sm90_reports` fixture; this file
tests the machinery. Tests run under TRITON_INTERPRET=1, so the matmul is defined with it switched off.
"""

import dataclasses
import os
import textwrap

import pytest

from bench import codegen
from kernels._common import CodegenCase


@pytest.fixture(scope="module")
def matmul_kernel(tmp_path_factory):
    # Triton compiles only kernels defined in a .py file: write one, import it.
    import importlib.util

    path = tmp_path_factory.mktemp("k") / "tiny_matmul.py"
    path.write_text(textwrap.dedent('''
        import triton
        import triton.language as tl

        @triton.jit
        def matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K, stride_am, stride_bk, stride_cm,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
            rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
            rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
            rk = tl.arange(0, BLOCK_K)
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for k in range(0, tl.cdiv(K, BLOCK_K)):
                kk = k * BLOCK_K + rk
                a = tl.load(a_ptr + rm[:, None] * stride_am + kk[None, :], mask=kk[None, :] < K, other=0.0)
                b = tl.load(b_ptr + kk[:, None] * stride_bk + rn[None, :], mask=kk[:, None] < K, other=0.0)
                acc = tl.dot(a, b, acc)
            tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :], acc.to(tl.bfloat16))
    '''))
    spec = importlib.util.spec_from_file_location("tiny_matmul", path)
    module = importlib.util.module_from_spec(spec)
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "0"  # @triton.jit reads it at decoration time
    try:
        spec.loader.exec_module(module)
    finally:
        if previous is not None:
            os.environ["TRITON_INTERPRET"] = previous
    return module.matmul_kernel


def _case(fn, **kw):
    sig = {"a_ptr": "*bf16", "b_ptr": "*bf16", "c_ptr": "*bf16", "M": "i32", "N": "i32", "K": "i32",
           "stride_am": "i32", "stride_bk": "i32", "stride_cm": "i32", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr",
           "BLOCK_K": "constexpr"}
    base = dict(kernel="matmul", config="128x128x64", fn=fn, signature=sig,
                constexprs={"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64},
                divisible=("a_ptr", "b_ptr", "c_ptr", "M", "N", "K", "stride_am", "stride_bk", "stride_cm"),
                num_warps=8, num_stages=3, flops=2 * 4096**3, bytes=3 * 2 * 4096**2)
    base.update(kw)
    return CodegenCase(**base)


def test_bf16_matmul_lowers_to_hgmma_without_spills(matmul_kernel):
    report = codegen.compile_sm90(_case(matmul_kernel))
    assert report.violations() == [], report
    assert report.hgmma > 0 and report.registers <= 255 and 0 < report.shared_bytes <= codegen.H100_MAX_SHARED_BYTES
    assert report.floor_us == pytest.approx(2 * 4096**3 / codegen.H100_PEAK_BF16_FLOPS * 1e6)
    assert "matmul" in codegen.format_table([report])


def test_violations_are_reported():
    ok = codegen.CodegenReport("k", "c", 4, 3, registers=100, spill_bytes=0, shared_bytes=1024, hgmma=2, stl=0,
                               flops=0, bytes=0, floor_us=0)
    assert ok.violations() == []
    bad = dataclasses.replace(ok, spill_bytes=64, stl=3, shared_bytes=300 * 1024, hgmma=0)
    problems = " ".join(bad.violations())
    assert "spills" in problems and "shared memory" in problems and "HGMMA" in problems
    assert dataclasses.replace(ok, hgmma=0).violations(expect_hgmma=False) == []
