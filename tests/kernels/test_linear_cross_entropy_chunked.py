"""kernels.linear_cross_entropy_chunked (linear_cross_entropy's "chunked" implementation): parity (loss and every
gradient; tanh, algebraic and no softcap, head bias, z-loss, mean / sum / none) with the row pass compiled and run
eagerly in blocks of every height (ragged last blocks), ignored rows, NaN/inf as in eager, one compiled row pass for
every shape, the eager fallback without a C++ compiler, the custom op (opcheck, fullgraph trace, compiled == eager),
input checks, the CPU's "auto" choice.

Parity through tests.parity.check_parity, as the Triton loss's tests: oracle kernels.reference.linear_cross_entropy
in float64, peer the same eager code in the input dtype, one random grad_output for all three paths. PyTorch and
inductor's C++, so no interpreter is involved; shapes stay small anyway.
"""

import warnings

import pytest
import torch

from kernels import linear_cross_entropy_chunked as cce
from kernels import registry
from tests.kernels.test_linear_cross_entropy import (
    IGNORE,
    NAMES,
    NAMES_BIAS,
    eager_fn,
    fp32_noise,
    make_bias,
    make_inputs,
)
from tests.parity import NAN_WARNINGS, assert_close, check_nonfinite, check_parity, check_second_backward, run


def kernel_fn(h, w, t, b=None, **kw):
    return cce.linear_cross_entropy(h, w, t, bias=b, **kw)


def parity(hidden, weight, targets, bias=None, *, rows_per_block=None, reduction="mean", **kw):
    """Chunked vs the float64 oracle within k·(peer error) + noise, and the fixed per-dtype table."""
    kw = dict(kw, reduction=reduction, ignore_index=IGNORE)
    g = torch.rand(() if reduction != "none" else targets.shape) + 0.5  # one random grad_output for all paths

    def kernel(*args, **kwargs):
        return kernel_fn(*args, **kwargs, rows_per_block=rows_per_block)

    names = NAMES if bias is None else NAMES_BIAS
    inputs = [hidden, weight, targets] + ([] if bias is None else [bias])
    where = f"{tuple(hidden.shape)}x{weight.shape[0]} {hidden.dtype} {kw} bias={bias is not None} rows={rows_per_block}"
    # The fixed table holds every tensor except with 16-bit inputs and reduction "none": per-row losses and their
    # per-row-scaled gradients carry the 16-bit logits' rounding unaveraged (the peer's too); k holds those.
    table = () if reduction == "none" and hidden.dtype != torch.float32 else names
    out, _, _ = check_parity(kernel, eager_fn, inputs, names=names, grad_output=g, kwargs=kw,
                             k=3.0 if kw.get("softcap") else 2.0,
                             noise=fp32_noise if hidden.dtype == torch.float32 else None, table=table, where=where)
    for r in (targets == IGNORE).nonzero().flatten().tolist():
        assert torch.equal(out[1][r], torch.zeros_like(out[1][r])), f"ignored row {r} has a nonzero grad_hidden"
    return out


# (N, H, V) as the Triton loss's tests: one token, 7 and 37 tokens, prime vocabularies.
SHAPES = [(1, 24, 97), (7, 40, 131), (37, 24, 131)]


# Softcaps on both sides of UNSHIFTED_SOFTCAP (50): the row max is subtracted without one and above it.
@pytest.mark.parametrize("rows_per_block", [None, 1, 5], ids=["compiled", "rows1", "rows5"])
@pytest.mark.parametrize("softcap, kind", [(None, "tanh"), (30.0, "tanh"), (15.0, "algebraic"), (60.0, "algebraic")],
                         ids=["nocap", "tanh", "algebraic", "algebraic60"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_parity_fp32(shape, softcap, kind, rows_per_block):
    N, H, V = shape
    inputs = make_inputs(N, H, V, torch.float32, "cpu", ignore_rows=(2, N - 1) if N > 2 else (), weight_scale=8.0)
    parity(*inputs, make_bias(V, torch.float32, "cpu"), softcap=softcap, softcap_kind=kind,
           rows_per_block=rows_per_block)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_z_loss_bias_and_reductions(dtype, reduction):
    """z-loss and the head bias under every reduction; "none" is differentiable here (per-row grad_output)."""
    inputs = make_inputs(37, 40, 131, dtype, "cpu", ignore_rows=(0, 5, 6), weight_scale=4.0)
    parity(*inputs, make_bias(131, dtype, "cpu"), softcap=15.0, softcap_kind="algebraic", z_loss=1e-2,
           reduction=reduction, rows_per_block=8)


def test_track3_head_bf16():
    """Track 3's head in bf16 (the logits GEMM in bf16, G rounded to bf16 for the backward GEMMs, as eager)."""
    inputs = make_inputs(37, 40, 131, torch.bfloat16, "cpu", ignore_rows=(3,), weight_scale=8.0)
    parity(*inputs, make_bias(131, torch.bfloat16, "cpu"), softcap=15.0, softcap_kind="algebraic", reduction="sum",
           rows_per_block=4)


def test_algebraic_softcap_far_from_zero_and_saturated():
    """Logits up to ~±2e5 (z² + s² rounds to z² in fp32): value and derivative within the peer's error."""
    hidden, weight, targets = make_inputs(7, 24, 97, torch.float32, "cpu", weight_scale=1.0)
    weight = weight * torch.logspace(0, 5, 97)[:, None]  # rows from ~1 to ~2e5 in logit scale
    parity(hidden, weight, targets, softcap=15.0, softcap_kind="algebraic", reduction="sum", rows_per_block=3)


def test_large_logits_without_softcap_do_not_overflow():
    """No softcap: the row max is subtracted, so logits of ~±1e3 (exp overflows fp32 at 88) stay finite."""
    hidden, weight, targets = make_inputs(7, 24, 97, torch.float32, "cpu", weight_scale=1e3)
    parity(hidden, weight, targets, reduction="sum", rows_per_block=2)


def test_block_rows_from_the_byte_budget():
    assert cce.block_rows(50304, threads=1) == cce.BLOCK_BYTES // (4 * 50304) >= 1
    assert cce.block_rows(50304, threads=4) == 4 * cce.BLOCK_BYTES // (4 * 50304)
    assert cce.block_rows(10**9, threads=1) == 1  # a row larger than the budget still makes a block


def test_no_grad_computes_no_gradient_buffer():
    """Without autograd the op skips the gradient (an empty G) and gives the same loss."""
    hidden, weight, targets = make_inputs(7, 24, 97, torch.float32, "cpu", ignore_rows=(4,), weight_scale=4.0)
    args = (hidden, weight, targets, None, 15.0, "algebraic", IGNORE, 0.0)
    loss_only, G_none, rho_none = torch.ops.speedrun.linear_cross_entropy_chunked(*args, False, 3)
    loss, G, rho = torch.ops.speedrun.linear_cross_entropy_chunked(*args, True, 3)
    assert G_none.numel() == rho_none.numel() == 0 and G.shape == (7, 97) and rho.shape == (7,)
    assert torch.equal(loss_only, loss) and loss[4] == 0
    with torch.no_grad():
        assert torch.equal(kernel_fn(hidden, weight, targets, softcap=15.0, softcap_kind="algebraic",
                                     reduction="sum"), loss.sum())


@pytest.mark.parametrize("needs", [(False, True, False), (False, False, True), (True, False, True)],
                         ids=["weight", "bias", "hidden+bias"])
def test_only_requested_gradients(needs):
    hidden, weight, targets = make_inputs(7, 24, 97, torch.float32, "cpu")
    bias = make_bias(97, torch.float32, "cpu")
    ours = [t.clone().requires_grad_(n) for t, n in zip((hidden, weight, bias), needs)]
    kernel_fn(*ours[:2], targets, ours[2], softcap=15.0).backward()
    ref = [t.clone().requires_grad_(n) for t, n in zip((hidden, weight, bias), needs)]
    eager_fn(*ref[:2], targets, ref[2], softcap=15.0).backward()
    for name, a, b, n in zip(NAMES_BIAS[1:], ours, ref, needs):
        if n:
            assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-4, name=name)
        else:
            assert a.grad is None, name


def test_all_targets_ignored_gives_zero():
    hidden, weight, targets = make_inputs(5, 24, 97, torch.float32, "cpu", ignore_rows=range(5))
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, make_bias(97, torch.float32, "cpu"))]
    loss = kernel_fn(leaves[0], leaves[1], targets, leaves[2], softcap=15.0, softcap_kind="algebraic")
    loss.backward()
    assert loss.item() == 0.0  # 0 / max(0, 1), as the eager reference
    for t in leaves:
        assert torch.equal(t.grad, torch.zeros_like(t))


def test_retain_graph_second_backward():
    """The backward leaves the saved G as it is: a second backward gives the same gradients."""
    hidden, weight, targets = make_inputs(7, 24, 97, torch.float32, "cpu")
    check_second_backward(lambda h: kernel_fn(h, weight, targets, softcap=30.0), hidden.clone().requires_grad_())


@NAN_WARNINGS
@pytest.mark.parametrize("rows_per_block", [None, 4], ids=["compiled", "rows4"])
@pytest.mark.parametrize("softcap", [None, 41.0, "algebraic"])
@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_nan_and_inf_propagate_as_in_eager(kind, softcap, rows_per_block):
    """Non-finite hidden rows (one of them ignored): loss and gradients non-finite exactly where eager's are."""
    hidden, weight, targets = make_inputs(37, 40, 131, torch.float32, "cpu", ignore_rows=(5,), weight_scale=4.0)
    if kind == "nan":
        hidden[3, 7], hidden[5, 1] = float("nan"), float("nan")
    else:
        hidden[11, 0], hidden[30, 9] = float("inf"), -float("inf")
    algebraic = softcap == "algebraic"
    kwargs = dict(softcap=15.0 if algebraic else softcap, softcap_kind="algebraic" if algebraic else "tanh",
                  ignore_index=IGNORE, rows_per_block=rows_per_block)
    inputs = [hidden, weight, targets] + ([make_bias(131, torch.float32, "cpu")] if algebraic else [])

    def eager(*args, rows_per_block, **kw):
        return eager_fn(*args, **kw)

    check_nonfinite(kernel_fn, eager, inputs, names=NAMES_BIAS if algebraic else NAMES,
                    grad_output=torch.rand(()) + 0.5, kwargs=kwargs)


def test_one_compiled_row_pass_serves_every_shape():
    """The compiled row pass is traced with symbolic sizes: new row counts and vocabularies compile nothing."""
    cases = [(37, 24, 131), (41, 24, 149), (53, 40, 131), (12, 24, 1031)]
    cce.linear_cross_entropy(*make_inputs(*cases[0], torch.float32, "cpu"), softcap=15.0,
                                     softcap_kind="algebraic")
    with torch._dynamo.config.patch(error_on_recompile=True):
        for N, H, V in cases[1:]:
            hidden, weight, targets = make_inputs(N, H, V, torch.float32, "cpu", weight_scale=4.0)
            leaves = [t.clone().requires_grad_() for t in (hidden, weight)]
            got = kernel_fn(*leaves, targets, softcap=15.0, softcap_kind="algebraic")
            got.backward()
            want = kernel_fn(hidden, weight, targets, softcap=15.0, softcap_kind="algebraic", rows_per_block=5)
            assert_close(got, want, atol=1e-6, rtol=1e-6, name=f"loss at {(N, H, V)}")
    assert not cce._compile_failure


def test_without_a_compiler_the_row_pass_runs_eagerly(monkeypatch):
    """No working C++ compiler (a real inductor failure, not a mock): one warning naming it, then eager blocks
    with the same numbers as before."""
    from torch._inductor import config as inductor_config

    hidden, weight, targets = make_inputs(37, 24, 131, torch.float32, "cpu", ignore_rows=(3,), weight_scale=4.0)
    bias = make_bias(131, torch.float32, "cpu")
    kw = dict(softcap=30.0, softcap_kind="tanh", reduction="sum", ignore_index=IGNORE)
    want = run(lambda h, w, b: kernel_fn(h, w, targets, b, **kw), [hidden, weight, bias], torch.tensor(1.5))
    monkeypatch.setattr(cce, "_compile_failure", [])
    torch._dynamo.reset()
    try:
        no_compiler = inductor_config.patch({"cpp.cxx": (None, "/nonexistent/c++"), "fx_graph_cache": False})
        with no_compiler, pytest.warns(UserWarning, match="could not be compiled.*InvalidCxxCompiler"):
            got = run(lambda h, w, b: kernel_fn(h, w, targets, b, **kw), [hidden, weight, bias], torch.tensor(1.5))
        assert cce._compile_failure
        for name, a, b in zip(NAMES_BIAS, got, want):
            assert_close(a, b, atol=1e-6, rtol=1e-5, name=name)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once: later calls go straight to the eager blocks
            kernel_fn(hidden, weight, targets, bias, **kw)
    finally:
        torch._dynamo.reset()


def test_opcheck():
    hidden, weight, targets = make_inputs(9, 24, 97, torch.float32, "cpu", ignore_rows=(2,), weight_scale=4.0)
    bias = make_bias(97, torch.float32, "cpu")
    for compute_grad in (True, False):
        leaves = [t.clone().requires_grad_(compute_grad) for t in (hidden, weight, bias)]
        args = (leaves[0], leaves[1], targets, leaves[2], 15.0, "algebraic", IGNORE, 1e-3, compute_grad, 4)
        torch.library.opcheck(torch.ops.speedrun.linear_cross_entropy_chunked.default, args)


def test_compiled_fullgraph_matches_eager():
    """torch.compile(fullgraph=True) through AOTAutograd keeps the op whole; forward and backward identical."""
    torch._dynamo.reset()
    hidden, weight, targets = make_inputs(9, 24, 97, torch.float32, "cpu", ignore_rows=(2,), weight_scale=4.0)
    bias = make_bias(97, torch.float32, "cpu")

    def loss(h, w, b, t):
        return kernel_fn(h, w, t, b, softcap=15.0, softcap_kind="algebraic", reduction="sum")

    explained = torch._dynamo.explain(loss)(hidden, weight, bias, targets)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    eager_out = run(lambda h, w, b: loss(h, w, b, targets), [hidden, weight, bias], torch.tensor(1.5))
    compiled_out = run(lambda h, w, b: compiled(h, w, b, targets), [hidden, weight, bias], torch.tensor(1.5))
    for a, b in zip(eager_out, compiled_out):
        assert torch.equal(a, b)


def test_rejects_bad_inputs():
    hidden, weight, targets = make_inputs(7, 24, 97, torch.float32, "cpu")
    with pytest.raises(ValueError, match="disagree on the hidden dim"):
        kernel_fn(hidden, weight[:, :20].contiguous(), targets)
    with pytest.raises(TypeError, match="share one dtype"):
        kernel_fn(hidden, weight.bfloat16(), targets)
    with pytest.raises(ValueError, match="contiguous"):
        kernel_fn(hidden.t().contiguous().t(), weight, targets)
    with pytest.raises(ValueError, match="one device"):
        kernel_fn(hidden, weight, targets.to("meta"))
    with pytest.raises(ValueError, match="rows_per_block"):
        kernel_fn(hidden, weight, targets, rows_per_block=0)
    with pytest.raises(ValueError, match="reduction"):
        kernel_fn(hidden, weight, targets, reduction="max")


def test_registered_and_the_cpu_choice():
    """Registered as "chunked"; the CPU's "auto" loss is this one (tests/test_configs.py holds the whole table)."""
    from speedrun.config import resolve, resolve_auto

    assert registry.get("linear_cross_entropy", "chunked") is cce.linear_cross_entropy
    assert resolve_auto(resolve(["--preset=track3-cpu"]), "cpu").model.linear_cross_entropy_impl == "chunked"

