"""The eager Newton-Schulz (kernels.reference.newton_schulz) as the optimizers use it: the coefficient sets
(quintic, Polar Express, cubic), their singular-value bands, and the bf16 matmul emulation for CPUs without
native bf16 (same values as a native bf16 GEMM up to summation order, and fast)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kernels import reference, registry
from kernels.device import native_bf16

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHAPES = {"square": (64, 64), "wide": (48, 128), "tall": (128, 48), "odd": (37, 53)}
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def with_spectrum(rows, cols, low=0.1):
    """A (rows, cols) matrix whose singular values are uniform in [low, 1]."""
    k = min(rows, cols)
    U, _ = torch.linalg.qr(torch.randn(rows, k))
    V, _ = torch.linalg.qr(torch.randn(cols, k))
    return U @ torch.diag(torch.empty(k).uniform_(low, 1.0)) @ V.T


def scalar_map(x: torch.Tensor, coefficients: str, steps: int) -> torch.Tensor:
    """What the iteration X ← aX + (bA + cA²)X, A = XXᵀ, does to each singular value x (fp64)."""
    for a, b, c in reference.ns_coefficients(coefficients, steps):
        x = a * x + b * x**3 + c * x**5
    return x


class MatmulDtypes(TorchDispatchMode):
    """Records the dtype of every matmul-family op dispatched inside the block."""

    OPS = {"mm", "bmm", "matmul", "addmm", "baddbmm"}

    def __init__(self):
        super().__init__()
        self.dtypes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.OPS:
            self.dtypes.append(args[0].dtype)
        return func(*args, **(kwargs or {}))


# --- coefficient sets ---------------------------------------------------------------------------------


def test_coefficient_sets_and_default_steps():
    assert reference.ns_coefficients("cubic") == [(2.0, -1.5, 0.5)] * 12
    assert reference.ns_coefficients("quintic") == [(3.4445, -4.7750, 2.0315)] * 5
    assert len(reference.ns_coefficients("polar_express")) == 5
    assert reference.ns_coefficients("cubic", 3) == [(2.0, -1.5, 0.5)] * 3
    assert reference.NS_NORM_SCALE["cubic"] == 1.0
    with pytest.raises(ValueError, match=r"unknown Newton-Schulz coefficients 'nope'; choose from \('quintic'"):
        reference.ns_coefficients("nope", 5)
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        reference.ns_coefficients("cubic", 0)


@pytest.mark.parametrize("coefficients", reference.NS_COEFFICIENT_SETS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_newton_schulz_maps_each_singular_value_by_the_scalar_polynomial(coefficients, shape):
    # In exact arithmetic NS keeps the singular vectors and applies the odd polynomial to the singular values
    # of G / (‖G‖_F · scale + eps): checked in fp64, this pins down the whole iteration, not just its band.
    G = torch.randn(*shape, dtype=torch.float64)
    out = registry.get("newton_schulz", "eager")(G, coefficients=coefficients, eps=1e-7, upcast=True)
    x = torch.linalg.svdvals(G) / (G.norm() * reference.NS_NORM_SCALE[coefficients] + 1e-7)
    steps = reference.NS_DEFAULT_STEPS[coefficients]
    expected = scalar_map(x, coefficients, steps).sort(descending=True).values
    torch.testing.assert_close(torch.linalg.svdvals(out), expected, rtol=0, atol=1e-9)


# The default-step scalar map's range over x in [1e-2, 1] (fp64): quintic [0.6818, 1.1344], Polar Express
# [0.8589, 1.1411], cubic (12 steps, convergent) [1, 1] within 1e-12. Inputs with singular values in [0.1, 1]
# of the largest land there. Measured outputs over 10 seeds × 4 shapes: quintic/Polar Express fp32 equal the
# fp64 range to 1e-4, bf16 widens it by up to 0.013 (quintic 0.669-1.147, Polar Express 0.852-1.146); cubic
# fp32 is 1 within 4e-7, bf16 0.9937-1.0050 (within a bf16 ulp of 1, 2^-7). Asserted: the fp64 range ± the slack.
BANDS = {"quintic": (0.6818, 1.1344), "polar_express": (0.8589, 1.1411), "cubic": (1.0, 1.0)}
SLACK = {("quintic", "fp32"): 0.005, ("quintic", "bf16"): 0.03, ("polar_express", "fp32"): 0.005,
         ("polar_express", "bf16"): 0.03, ("cubic", "fp32"): 1e-5, ("cubic", "bf16"): 0.015}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def test_band_constants_are_the_scalar_maps_range():
    x = torch.linspace(1e-2, 1, 100_000, dtype=torch.float64)
    for coefficients, (low, high) in BANDS.items():
        y = scalar_map(x / reference.NS_NORM_SCALE[coefficients], coefficients,
                       reference.NS_DEFAULT_STEPS[coefficients])
        assert y.min().item() == pytest.approx(low, abs=1e-4) and y.max().item() == pytest.approx(high, abs=1e-4)


@pytest.mark.parametrize("coefficients", sorted(BANDS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_newton_schulz_singular_values_in_band(coefficients, dtype, shape):
    X = registry.get("newton_schulz", "eager")(with_spectrum(*shape).to(DTYPES[dtype]), coefficients=coefficients)
    assert X.shape == shape and X.dtype == DTYPES[dtype]
    sv = torch.linalg.svdvals(X.double())
    low, high = BANDS[coefficients]
    slack = SLACK[coefficients, dtype]
    assert low - slack <= sv.min() and sv.max() <= high + slack, (sv.min().item(), sv.max().item())


def test_cubic_c_times_a_squared_is_the_references_c_a_times_a():
    # The speedrun scripts form c·A·A as (c·A)·A; for c = 0.5 (a power of two) that is c·(A·A) exactly in bf16.
    A = torch.randn(3, 40, 40).bfloat16()
    A = A @ A.mT
    assert torch.equal((0.5 * A) @ A, 0.5 * (A @ A))


def test_batched_newton_schulz_equals_one_by_one():
    G = torch.randn(3, 24, 40).bfloat16()
    ns = registry.get("newton_schulz", "eager")
    batched = ns(G)
    for i in range(3):
        torch.testing.assert_close(batched[i], ns(G[i]))


# --- bf16 matmul emulation ----------------------------------------------------------------------------


def _bf16_ulp(x: torch.Tensor) -> torch.Tensor:
    """The spacing of bf16 numbers at |x| (8 significant bits)."""
    exponent = torch.frexp(x.float().abs().clamp_min(torch.finfo(torch.float32).tiny))[1]
    return torch.ldexp(torch.ones_like(x, dtype=torch.float32), exponent - 8)


def check_emulated_matmul(shapes, seed=0):
    """Emulated vs torch's bf16 matmul on Newton-Schulz-like operands: (fraction bit for bit, worst excess).

    Both sum exact fp32 products in fp32, so they can differ only where a different summation order moves the
    fp32 sum across a bf16 rounding boundary: by at most one bf16 ulp of the result plus the fp32 summation
    bound K·2⁻²⁴·(|a||b|)ᵢⱼ. Returns the fraction of equal elements and the largest |difference| in units
    of that bound (<= 1 required).
    """
    g = torch.Generator().manual_seed(seed)
    equal = total = 0
    worst = 0.0
    for M, K, N in shapes:
        X = torch.randn(M, K, generator=g)
        X = (X / X.norm()).bfloat16()  # a normalized NS iterate
        for a, b in ((X, X.mT), ((X @ X.mT), (X @ X.mT)), ((X @ X.mT), X)):  # XXᵀ, A·A, B·X
            native, emulated = a @ b, reference.emulated_bf16_matmul(a, b)
            assert emulated.dtype == torch.bfloat16 and emulated.shape == native.shape
            bound = _bf16_ulp(native).maximum(_bf16_ulp(emulated)) + (a.float().abs() @ b.float().abs()) * a.size(
                -1) * 2.0**-24
            worst = max(worst, ((native.float() - emulated.float()).abs() / bound).max().item())
            equal += (native == emulated).sum().item()
            total += native.numel()
    return equal / total, worst


EMULATION_SHAPES = [(37, 53, 37), (128, 512, 128), (96, 384, 96)]


def test_emulated_bf16_matmul_equals_the_native_one():
    # Measured on an AVX-512 bf16 CPU (oneDNN bf16 GEMM) and under the AVX2 emulation (torch's own bf16 GEMM):
    # 99.99% of the elements equal bit for bit (random matmuls: 99.98% at K = 768-3072, all at K = 64), the rest
    # within one bf16 ulp plus the summation bound. Asserted: >= 99.9% equal, none beyond the bound.
    fraction, worst = check_emulated_matmul(EMULATION_SHAPES)
    assert fraction >= 0.999 and worst <= 1.0, (fraction, worst)


@pytest.mark.parametrize("coefficients", reference.NS_COEFFICIENT_SETS)
@pytest.mark.parametrize("shape", [(37, 53), (128, 256), (2, 160, 96)], ids=["odd", "wide", "batched-tall"])
def test_emulated_newton_schulz_is_as_accurate_as_native_bf16(coefficients, shape):
    # After 5-12 iterations the rare one-ulp matmul differences have propagated (a third to all of the
    # elements then differ), so the two are compared as peers against the fp64 oracle. Measured over 3 seeds
    # and 6 shapes: max|emulated - oracle| / max|native - oracle| = 0.83-1.16. Asserted: <= 2 (FA's k).
    G = torch.randn(*shape).bfloat16()
    oracle = reference.newton_schulz(G, coefficients=coefficients, upcast=True)
    native = reference.newton_schulz(G, coefficients=coefficients, emulate_bf16=False)
    emulated = reference.newton_schulz(G, coefficients=coefficients, emulate_bf16=True)
    assert emulated.dtype == torch.bfloat16 and emulated.shape == G.shape
    error = lambda x: (x.double() - oracle).abs().max().item()  # noqa: E731
    assert error(emulated) <= 2 * error(native), (error(emulated), error(native))


def test_emulation_is_chosen_by_the_cpu_and_only_for_bf16():
    G = torch.randn(32, 48)
    for dtype in (torch.bfloat16, torch.float32):
        with MatmulDtypes() as seen:
            reference.newton_schulz(G.to(dtype), coefficients="cubic", steps=2)
        emulated = dtype == torch.bfloat16 and not native_bf16("cpu")
        assert set(seen.dtypes) == {torch.float32 if emulated else dtype}, (dtype, seen.dtypes)
    with MatmulDtypes() as seen:
        reference.newton_schulz(G.bfloat16(), steps=1, emulate_bf16=True)
    assert set(seen.dtypes) == {torch.float32}
    with pytest.raises(ValueError, match="emulate_bf16 applies to bf16 inputs, got torch.float32"):
        reference.newton_schulz(G, emulate_bf16=True)


# The subprocess below runs this file's checks on a CPU without native bf16 (emulated: see AVX2_ENV): the
# automatic emulation must be chosen, agree with torch's bf16 GEMM as above, and run at fp32 speed.
_AVX2_CHECK = """
import json, time, torch
from kernels.device import native_bf16
from kernels.reference import newton_schulz
from tests.optim.test_newton_schulz import EMULATION_SHAPES, MatmulDtypes, check_emulated_matmul

torch.set_num_threads(1)
G = torch.randn(4, 128, 512)

def best_ms(fn, reps=3):
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)

with MatmulDtypes() as seen:
    newton_schulz(G.bfloat16(), coefficients="cubic")
fraction, worst = check_emulated_matmul(EMULATION_SHAPES[:2])
print(json.dumps({"native_bf16": native_bf16("cpu"), "matmul_dtypes": sorted({str(d) for d in seen.dtypes}),
                  "equal_fraction": fraction, "worst": worst,
                  "fp32_ms": best_ms(lambda: newton_schulz(G, coefficients="quintic")),
                  "bf16_ms": best_ms(lambda: newton_schulz(G.bfloat16(), coefficients="quintic"))}))
"""


def test_bf16_newton_schulz_without_native_bf16_is_emulated_and_fast():
    # Measured under AVX2_ENV on an AVX-512 machine (1 thread, load 8): quintic (4, 128, 512) in fp32 10.8 ms,
    # bf16 emulated 20.5 ms, bf16 through torch's bf16 GEMM 467 ms. On a real AVX2-only CPU torch's bf16 GEMM is
    # 100-300x slower than fp32. Asserted: no bf16 matmul runs (what makes it slow); the times are printed, not
    # asserted (a timing depends on the machine's load).
    env = dict(os.environ, **AVX2_ENV, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _AVX2_CHECK], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["native_bf16"] is False, result  # the environment did take bf16 away
    assert result["matmul_dtypes"] == ["torch.float32"], result
    assert result["equal_fraction"] >= 0.999 and result["worst"] <= 1.0, result
    print(f"Newton-Schulz (4, 128, 512), 1 thread: fp32 {result['fp32_ms']:.1f} ms, "
          f"bf16 emulated {result['bf16_ms']:.1f} ms")
