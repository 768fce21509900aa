"""bench.codegen: the report's invariants, on a matmul compiled here for sm_90 (no GPU needed).

Each kernel's own test file checks its codegen_cases() through the `sm90_reports` fixture; this file
tests the machinery. Tests run under TRITON_INTERPRET=1, which Triton reads when a kernel is defined and
when it is compiled, so the matmul is compiled in a clean subprocess without it (as `sm90_reports` does).
"""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import pytest

from bench import codegen

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MATMUL = textwrap.dedent('''
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
''')

# Runs in the subprocess: compile a bf16 128x128x64 tile of the matmul above for sm_90 through
# bench.codegen.compile_sm90, with the divisibility hints the JIT would infer at a 4096³ problem.
DRIVER = textwrap.dedent('''
    import dataclasses, json, sys
    import torch
    sys.path.insert(0, sys.argv[1])
    from bench import codegen
    from bench.cases import jit_case
    from tiny_matmul import matmul_kernel

    # The sizes and strides of a 4096³ problem: every one a multiple of 16, so all marked 16-divisible.
    args = dict(a_ptr=torch.bfloat16, b_ptr=torch.bfloat16, c_ptr=torch.bfloat16, M=4096, N=4096, K=4096,
                stride_am=4096, stride_bk=4096, stride_cm=4096, BLOCK_M=128, BLOCK_N=128, BLOCK_K=64)
    case = jit_case("matmul", "128x128x64", matmul_kernel, args, num_warps=8, num_stages=3, flops=2 * 4096**3,
                    bytes=3 * 2 * 4096**2)
    print(json.dumps(dataclasses.asdict(codegen.compile_sm90(case))))
''')


@pytest.fixture(scope="module")
def matmul_report(tmp_path_factory):
    """The CodegenReport of a bf16 matmul tile, compiled for sm_90 in a subprocess without the interpreter."""
    folder = tmp_path_factory.mktemp("k")
    (folder / "tiny_matmul.py").write_text(MATMUL)  # Triton compiles only kernels defined in a .py file
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(folder), REPO])
    proc = subprocess.run([sys.executable, "-c", DRIVER, REPO], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return codegen.CodegenReport(**json.loads(proc.stdout.strip().splitlines()[-1]))


def test_bf16_matmul_lowers_to_hgmma_without_spills(matmul_report):
    report = matmul_report
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


def test_jit_case_specialises_like_the_jit():
    """bench.cases.jit_case derives the signature from the kernel's own arguments by the JIT's rules; checked
    here against Triton's launch specialisation (native_specialize_impl) for every kind of value."""
    import torch

    from bench.cases import jit_case
    from kernels.jit.newton_schulz import ns_update_kernel

    try:
        from triton._C.libtriton import native_specialize_impl
        from triton.backends.compiler import BaseBackend
    except ImportError as e:
        pytest.skip(f"this Triton has no native_specialize_impl to compare with: {e}")

    x = torch.empty(4, 16, dtype=torch.bfloat16)  # a 16-byte aligned allocation
    values = dict(x_ptr=x, b_ptr=x, out_ptr=x, M=768, N=393, stride_xb=2**31 + 16, stride_xm=1, stride_bb=0,
                  stride_bm=48, stride_ob=7, stride_om=-16, stride_on=1, alpha=0.5)
    meta = dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=32, UPCAST=False, TF32X3=True, RNE_BF16=False)
    args = {k: (v.dtype if isinstance(v, torch.Tensor) else v) for k, v in values.items()}
    case = jit_case("k", "c", ns_update_kernel, {**args, **meta}, num_warps=4, num_stages=3)
    for name, value in values.items():
        kind, key = native_specialize_impl(BaseBackend, value, False, True, True)
        if kind == "constexpr":
            assert case.signature[name] == "constexpr" and case.constexprs[name] == key, name
        else:
            assert case.signature[name] == kind, (name, case.signature[name], kind)
            assert (name in case.divisible) == (key == "D"), (name, key)
    assert all(case.signature[k] == "constexpr" and case.constexprs[k] == v for k, v in meta.items())

    with pytest.raises(ValueError, match=r"\['nope'\] are not parameters, \['alpha'\] are not given"):
        jit_case("k", "c", ns_update_kernel, {**{k: v for k, v in args.items() if k != "alpha"}, **meta, "nope": 1},
                 num_warps=4, num_stages=3)
