"""The suite must pass on both kinds of x86 CPU the project runs on: AVX-512 (with native bf16 on some) and
AVX2-only, where torch's bf16 matmul is emulated (~100-300x slower) and the vectorised math library rounds
differently. Whatever machine runs the suite, this re-runs the numerically sensitive tests with torch's CPU
kernels forced down to AVX2 (ATEN_CPU_CAPABILITY) and oneDNN limited to AVX2 (ONEDNN_MAX_CPU_ISA), so a
tolerance fitted to one machine's noise fails here first.
"""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def avx2_env() -> dict:
    """This process's environment with the CPU forced down to AVX2, minus its inductor cache directory (the child's
    conftest picks the AVX2 one: compiled code must not be shared between capabilities)."""
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    return {**env, **AVX2}

# Tests whose tolerances or speed depend on the CPU's arithmetic: kernel parity against float64, and the
# codegen machinery (it must not depend on the host at all).
SENSITIVE = ["tests/kernels/test_attention.py", "tests/bench/test_codegen.py"]


def test_forced_avx2_environment_really_is_avx2():
    probe = ("import torch; from kernels.device import native_bf16; "
             "print(torch.backends.cpu.get_cpu_capability(), native_bf16('cpu'))")
    out = subprocess.run([sys.executable, "-c", probe], env=avx2_env(), cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    assert out == ["AVX2", "False"], out


def test_sensitive_tests_pass_on_an_avx2_cpu():
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *SENSITIVE],
                          env=avx2_env(), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_compiled_loss_row_pass_right_after_the_other_capability_compiled_it(tmp_path):
    """The chunked loss compiles its row pass with inductor. A native process, one forced to AVX2 and a native one
    again, none naming an inductor cache (as train.py runs outside the suite), one temporary directory: the AVX2
    process must not load the AVX-512 process's graph (with torch 2.13 from one shared cache it did, and its row
    sums were off by ~0.8), nor the reverse (kernels.device.separate_inductor_cache)."""
    probe = (
        "import torch; from kernels import linear_cross_entropy_chunked as cce; torch.manual_seed(0); "
        "h, w, b = torch.randn(64, 32), 0.3 * torch.randn(5000, 32), 0.1 * torch.randn(5000); "
        "t = torch.randint(0, 5000, (64,)); "
        "kw = dict(bias=b, softcap=15.0, softcap_kind='algebraic', reduction='none'); "
        "got = cce.linear_cross_entropy(h, w, t, **kw); "
        "want = cce.linear_cross_entropy(h, w, t, rows_per_block=4, **kw); "
        "print(torch.backends.cpu.get_cpu_capability(), float((got - want).abs().max()), cce._compile_failure)")
    tmp = {"TMPDIR": str(tmp_path)}  # inductor's default cache and ours both live under tempfile.gettempdir()
    native = {k: v for k, v in os.environ.items() if k not in (*AVX2, "TORCHINDUCTOR_CACHE_DIR")}
    for env in ({**native, **tmp}, {**avx2_env(), **tmp}, {**native, **tmp}):
        out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=REPO, capture_output=True, text=True,
                             timeout=300, check=True).stdout.strip().split(maxsplit=2)
        assert float(out[1]) < 1e-5 and out[2] == "[]", out
