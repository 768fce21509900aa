"""modded-nanogpt's kernels as peers (bench/modded.py): loading a checkout's triton_kernels.py, and parity of ours
against theirs where theirs runs.

Their file is never part of this repository. These tests write it at test time from a local git mirror of
KellerJordan/modded-nanogpt at commit f411b3d into a temporary folder (tests/bench/modded_checkout.py), and skip,
saying so, where the mirror is absent (CI machines). Under Triton's interpreter (CPU tensors):

- XXT, XTX and ba_plus_cAA run, in fp32 (fp16 too, but our Newton-Schulz kernels take bf16 and fp32 only, and the
  interpreter's bf16 arithmetic is wrong): compared with ours (kernels.newton_schulz.ns_syrk) and, for the whole
  iteration, our Newton-Schulz against the same iteration on their kernels, each within 2x the other's error
  from a float64 oracle plus rounding noise (tests/parity.py).
- FusedLinearReLUSquareFunction does not run: its launcher reads torch.cuda.get_device_properties("cuda") and its
  kernel is bf16-only. FusedSoftcappedCrossEntropy does not run: the file compiles its CUDA C++ kernel at import
  (torch.cuda._compile_kernel, sm_90) and it multiplies in fp8. The first is compared with ours on a GPU
  (`gpu` marker); the second computes another function (fp8 head, sigmoid cap) and is a speed peer only.
"""

import pytest
import torch

from bench import modded
from kernels import newton_schulz as ns
from kernels.reference import newton_schulz as reference_ns
from tests.bench import modded_checkout
from tests.parity import assert_parity


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A folder holding modded-nanogpt's triton_kernels.py (tests/bench/modded_checkout.py), or a skip."""
    folder = modded_checkout.materialise(tmp_path_factory.mktemp("modded"))
    if folder is None:
        pytest.skip(modded_checkout.MISSING)
    return folder


@pytest.fixture(scope="module")
def theirs(checkout):
    return modded.load(checkout)


def test_a_missing_checkout_says_where_to_get_one(tmp_path):
    with pytest.raises(modded.ModdedUnavailable, match="no triton_kernels.py there"):
        modded.load(tmp_path)
    with pytest.raises(modded.ModdedUnavailable, match="no modded-nanogpt checkout given"):
        modded.kernels_at(None)
    (tmp_path / "triton_kernels.py").write_text("x = 1\n")
    with pytest.raises(modded.ModdedUnavailable, match="is not modded-nanogpt's triton_kernels.py"):
        modded.load(tmp_path / "triton_kernels.py")


def test_load_keeps_the_triton_kernels(theirs):
    for name in ("XXT", "XTX", "ba_plus_cAA", "FusedLinearReLUSquareFunction"):
        assert callable(theirs.get(name)), name


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the file's CUDA kernel compiles")
def test_what_cannot_run_here_says_why(theirs, checkout):
    assert "FusedSoftcappedCrossEntropy" not in theirs.namespace and theirs.import_error
    with pytest.raises(modded.ModdedUnavailable, match="_compile_kernel"):
        theirs.get("FusedSoftcappedCrossEntropy")
    with pytest.raises(modded.ModdedUnavailable, match="get_device_properties"):
        modded.peer(checkout, "FusedLinearReLUSquareFunction", "cpu")
    from bench.cases import Unavailable
    from bench.cases.linear_cross_entropy import lce_case
    from bench.cases.relu2_mlp import mlp_case

    with pytest.raises(Unavailable, match="sm_90"):
        lce_case("modded", 8, 16, modded.CE_VOCAB, device="cpu", dtype=torch.float32, softcap=15.0,
                  modded_path=checkout)
    with pytest.raises(Unavailable, match="bf16 only"):
        mlp_case("modded", 8, 16, 32, mode="forward", device="cpu", dtype=torch.float32, modded_path=checkout)


# Odd shapes: not multiples of their 64/128 tiles, smaller than a tile, a single row; 2-D and batched.
SHAPES = [(40, 72), (1, 33, 130), (3, 17, 200), (1, 64)]


def _oracle_gram(P):
    return P.double() @ P.double().mT


@pytest.mark.parametrize("shape", SHAPES)
def test_xxt_parity(theirs, shape):
    P = torch.randn(shape)
    M = shape[-2]
    their = theirs.get("XXT")(P, out=torch.empty(*shape[:-2], M, M))
    ours = ns.ns_syrk(P, out=torch.full((*shape[:-2], M, M), float("nan")))  # NaN: an unwritten element fails
    assert_parity(ours, their, _oracle_gram(P), name="XXt")


@pytest.mark.parametrize("shape", SHAPES)
def test_xtx_parity(theirs, shape):
    P = torch.randn(shape)
    K = shape[-1]
    their = theirs.get("XTX")(P, out=torch.empty(*shape[:-2], K, K))
    Pt = torch.empty(P.mT.shape).copy_(P.mT)  # row-major with unit last stride, also when M == 1
    ours = ns.ns_syrk(Pt, out=torch.full((*shape[:-2], K, K), float("nan")))
    assert_parity(ours, their, P.double().mT @ P.double(), name="XtX")


@pytest.mark.parametrize("shape", [(40, 40), (2, 33, 33), (1, 130, 130)])
def test_ba_plus_caa_parity(theirs, shape):
    X = torch.randn(*shape[:-1], 2 * shape[-1]) / shape[-1]
    A = ns.ns_syrk(X, out=torch.empty(shape))  # symmetric, as in the iteration
    b, c = -4.775, 2.0315
    their = theirs.get("ba_plus_cAA")(A, alpha=c, beta=b, out=torch.empty(shape))
    ours = ns.ns_syrk(A, out=torch.full(shape, float("nan")), alpha=c, beta=b, add=A)
    oracle = b * A.double() + c * A.double() @ A.double()
    assert_parity(ours, their, oracle, name="bA + cAA")


@pytest.mark.parametrize("shape", [(48, 80), (2, 80, 48), (3, 33, 65)])
@pytest.mark.parametrize("coefficients", ["quintic", "polar_express"])
def test_newton_schulz_parity(theirs, shape, coefficients):
    """Our whole iteration against the same iteration on their kernels (wide: XXT, tall: XTX)."""
    G = torch.randn(shape)
    their = modded.newton_schulz(theirs, G, steps=3, coefficients=coefficients)
    ours = ns.newton_schulz_launch(G, steps=3, coefficients=coefficients)
    oracle = reference_ns(G, steps=3, coefficients=coefficients, upcast=True)
    assert their.shape == ours.shape == G.shape
    assert_parity(ours, their, oracle, name="newton_schulz")
    assert_parity(their, ours, oracle, name="newton_schulz (theirs)")


def test_the_bench_case_runs_their_iteration(checkout):
    from bench.cases.newton_schulz import ns_case

    t = ns_case("modded", (2, 24, 40), steps=2, coefficients="quintic", device="cpu", dtype=torch.float32,
                modded_path=checkout)
    out = t.fn()
    assert out.shape == (2, 24, 40) and torch.isfinite(out).all() and t.flops > 0
    assert "modded-nanogpt" in t.fields["note"]


@pytest.mark.gpu
def test_fused_linear_relu_square_parity_on_a_gpu(theirs):
    """FusedLinearReLUSquareFunction (bf16, CUDA) against our relu2_mlp, forward and every gradient."""
    from kernels import relu2_mlp as ours_mlp
    from kernels.reference import relu2_mlp as reference_mlp

    N, H, F = 256, 128, 512
    torch.manual_seed(0)
    x = torch.randn(N, H, device="cuda", dtype=torch.bfloat16)
    w_fc = (torch.randn(F, H, device="cuda") / H**0.5).bfloat16()
    w_proj = (torch.randn(H, F, device="cuda") / F**0.5).bfloat16()
    dy = torch.randn(N, H, device="cuda", dtype=torch.bfloat16)

    def run(fn, upcast_to=None, transpose_proj=False):
        leaves = [t.detach().clone().to(upcast_to or t.dtype).requires_grad_() for t in (x, w_fc, w_proj)]
        proj = leaves[2].T.contiguous().detach().requires_grad_() if transpose_proj else leaves[2]
        y = fn(leaves[0], leaves[1], proj)
        y.backward(dy.to(y.dtype))
        return [y, leaves[0].grad, leaves[1].grad, proj.grad.T if transpose_proj else proj.grad]

    oracle = run(reference_mlp, upcast_to=torch.float64)
    their = run(theirs.get("FusedLinearReLUSquareFunction").apply, transpose_proj=True)
    ours = run(ours_mlp.relu2_mlp)
    for name, o, t, u in zip(("y", "dx", "dw_fc", "dw_proj"), oracle, their, ours):
        assert_parity(u, t, o, name=name)
