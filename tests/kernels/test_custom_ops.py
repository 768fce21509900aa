"""The torch.library custom ops behind the Triton kernels (torch.ops.speedrun.*): the registry entries call them,
their fake implementations give exactly the real outputs' shapes, dtypes and strides, torch.library.opcheck passes,
autocast is applied at the entry points, autograd saves what the kernels need and nothing more, and torch.compile
traces each op whole (fullgraph, no graph break) with the same results as eager.

Runs on the CPU under the Triton interpreter (tests/conftest.py); shapes stay tiny. The compiled whole model is
tested in tests/model/test_compile.py.
"""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from kernels import linear_cross_entropy as lce
from kernels import newton_schulz as ns
from kernels import reference, registry
from kernels import relu2_mlp as r2
from tests.parity import assert_close

OPS = torch.ops.speedrun


def _mlp_inputs(N=7, H=24, F=40, dtype=torch.float32, biases=True):
    x = torch.randn(N, H)
    w_fc, w_proj = torch.randn(F, H) / H**0.5, torch.randn(H, F) / F**0.5
    b = [0.5 * torch.randn(F), torch.randn(H)] if biases else [None, None]
    return [None if t is None else t.to(dtype) for t in (x, w_fc, w_proj, *b)]


def _ce_inputs(N=9, H=24, V=97, dtype=torch.float32):
    hidden, weight = torch.randn(N, H).to(dtype), (torch.randn(V, H) * 4 / H**0.5).to(dtype)
    targets = torch.randint(0, V, (N,))
    targets[2] = -100
    return hidden, weight, targets, (2 * torch.randn(V)).to(dtype)


def _leaves(tensors, requires_grad=True):
    return [None if t is None else t.detach().clone().requires_grad_(requires_grad) for t in tensors]


class _OpLog(TorchDispatchMode):
    """Records the name of every op dispatched below autograd (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.name())
        return func(*args, **(kwargs or {}))


# ---------------------------------------------------------------------------------------------------
# The registry entries run the custom ops
# ---------------------------------------------------------------------------------------------------


def test_registry_entries_call_the_custom_ops():
    x, w_fc, w_proj, b_fc, b_proj = _leaves(_mlp_inputs())
    hidden, weight, targets, bias = _ce_inputs()
    hidden, weight, bias = _leaves((hidden, weight, bias))
    with _OpLog() as log:
        registry.get("relu2_mlp", "triton")(x, w_fc, w_proj, b_fc, b_proj).sum().backward()
        registry.get("linear_cross_entropy", "triton")(hidden, weight, targets, bias=bias, softcap=15.0,
                                                       softcap_kind="algebraic").backward()
        registry.get("newton_schulz", "triton")(torch.randn(8, 12), coefficients="cubic")
        registry.get("gram", "triton")(torch.randn(8, 12))
        registry.get("gram", "triton")(torch.randn(8, 12), side="right", out=torch.zeros(12, 12), beta=0.5)
    for name in ("speedrun::relu2_mlp", "speedrun::relu2_mlp_backward", "speedrun::linear_cross_entropy",
                 "speedrun::newton_schulz", "speedrun::gram", "speedrun::gram_out"):
        assert name in log.names, f"{name} not dispatched; saw {sorted(set(log.names))}"


# ---------------------------------------------------------------------------------------------------
# Fake implementations: exactly the real outputs' shapes, dtypes and strides
# ---------------------------------------------------------------------------------------------------


def _op_calls():
    """(label, op, args) for every op, across the flags that change its outputs."""
    calls = []
    for dtype in (torch.float32, torch.bfloat16):
        x, w_fc, w_proj, b_fc, b_proj = _mlp_inputs(dtype=dtype)
        calls.append((f"relu2_mlp {dtype}", OPS.relu2_mlp.default, (x, w_fc, w_proj, b_fc, b_proj)))
        calls.append((f"relu2_mlp nobias {dtype}", OPS.relu2_mlp.default, (x, w_fc, w_proj, None, None)))
        a = r2.relu2_fc_fwd(x, w_fc, b_fc)
        dy = torch.randn_like(x)
        for needs in ((True,) * 5, (False, True, False, True, False), (False,) * 4 + (True,)):
            saved = (x if needs[1] else None, w_fc if needs[0] else None, w_proj, a if any(needs[:4]) else None)
            calls.append((f"relu2_mlp_backward {needs} {dtype}", OPS.relu2_mlp_backward.default, (dy, *saved, *needs)))
        hidden, weight, targets, bias = _ce_inputs(dtype=dtype)
        for reduction, b, needs in (("mean", bias, (True, True, True)), ("sum", None, (False, True, False)),
                                    ("none", bias, (False, False, False))):
            calls.append((f"linear_cross_entropy {reduction} {needs} {dtype}", OPS.linear_cross_entropy.default,
                          (hidden, weight, targets, b, 15.0, "algebraic", -100, reduction, 0.0, *needs, None, None)))
        for G in (torch.randn(10, 14), torch.randn(14, 10), torch.randn(2, 10, 14), torch.randn(14, 10).mT):
            calls.append((f"newton_schulz {tuple(G.shape)} {G.stride()} {dtype}", OPS.newton_schulz.default,
                          (G.to(dtype), 5, "quintic", 1e-7, None)))
        for x in (torch.randn(10, 14), torch.randn(2, 14, 10), torch.randn(14, 10).mT):
            for side in ("left", "right"):
                s = x.shape[-2] if side == "left" else x.shape[-1]
                calls.append((f"gram {tuple(x.shape)} {x.stride()} {side} {dtype}", OPS.gram.default,
                              (x.to(dtype), side, 0.5, None)))
                calls.append((f"gram_out {tuple(x.shape)} {x.stride()} {side} {dtype}", OPS.gram_out.default,
                              (x.to(dtype), torch.randn(*x.shape[:-2], s, s), side, 0.5, 2.0, None)))
    return calls


def _metadata(out):
    if out is None:  # an op that mutates its output buffer returns nothing
        return []
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [(tuple(t.shape), t.dtype, t.stride()) for t in outs]


def test_fake_outputs_match_the_real_ones():
    """Each op on real tensors and under FakeTensorMode (its register_fake): same shapes, dtypes and strides, for
    every output including the empty stand-ins of gradients that are not computed."""
    for label, op, args in _op_calls():
        real = _metadata(op(*args))
        with FakeTensorMode() as mode:
            fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
            fake = _metadata(op(*fake_args))
        assert fake == real, f"{label}: fake {fake} != real {real}"


@pytest.mark.parametrize("op", ["relu2_mlp", "linear_cross_entropy", "newton_schulz", "gram", "gram_out"])
def test_opcheck(op):
    """torch.library.opcheck: schema (no mutation, no aliasing), autograd registration, fake tensor, and AOT
    dispatch with dynamic shapes, for the forward ops (the backward op runs inside the autograd checks)."""
    calls = [(label, fn, args) for label, fn, args in _op_calls() if label.split(" ")[0] == op
             and "bfloat16" not in label]  # one dtype: the checks are about the op's registration, not numerics
    for label, fn, args in calls:
        if op in ("newton_schulz", "gram", "gram_out") and not args[0].is_contiguous():
            continue  # opcheck's own comparison re-creates inputs contiguous; the strided case is tested above
        grads = op in ("relu2_mlp", "linear_cross_entropy") and "none" not in label
        args = [a.detach().clone().requires_grad_(grads and a.is_floating_point()) if isinstance(a, torch.Tensor)
                else a for a in args]
        torch.library.opcheck(fn, args)


# ---------------------------------------------------------------------------------------------------
# Autocast: the entry points cast, so callers do not
# ---------------------------------------------------------------------------------------------------


def test_autocast_casts_at_the_entry_points():
    """Under bf16 autocast, fp32 inputs give exactly what bf16 inputs give outside it (y in bf16 as F.linear's
    output; the loss in fp32; Newton-Schulz in G's dtype), gradients reach the fp32 leaves in fp32, and each op
    stays within the bf16 band of the eager reference under the same autocast."""
    mlp = _mlp_inputs()
    hidden, weight, targets, bias = _ce_inputs()
    G = torch.randn(12, 20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        leaves = _leaves(mlp)
        y = r2.relu2_mlp(*leaves)
        y.float().sum().backward()
        ce = _leaves((hidden, weight, bias))
        loss = lce.linear_cross_entropy(ce[0], ce[1], targets, bias=ce[2], softcap=15.0)
        loss.backward()
        o = ns.newton_schulz(G, coefficients="cubic")
        y_ref = reference.relu2_mlp(*mlp)
        loss_ref = reference.linear_cross_entropy(hidden, weight, targets, bias=bias, softcap=15.0)
    assert y.dtype == torch.bfloat16 and loss.dtype == torch.float32 and o.dtype == torch.float32
    assert all(t.grad.dtype == torch.float32 for t in leaves + ce)
    assert torch.equal(y, r2.relu2_mlp(*[t.bfloat16() for t in mlp]))
    assert torch.equal(loss, lce.linear_cross_entropy(hidden.bfloat16(), weight.bfloat16(), targets,
                                                             bias=bias.bfloat16(), softcap=15.0))
    assert torch.equal(o, ns.newton_schulz(G.bfloat16(), coefficients="cubic").float())
    assert_close(y, y_ref, atol=5e-2, rtol=5e-2, name="relu2_mlp vs eager under autocast")
    assert_close(loss, loss_ref, atol=1e-2, rtol=1e-2, name="loss vs eager under autocast")


# ---------------------------------------------------------------------------------------------------
# What autograd saves
# ---------------------------------------------------------------------------------------------------


def _saved_shapes(fn):
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sorted(shapes)


def test_saved_tensors_are_the_minimum():
    """The loss saves only the gradients it computed in forward (never an (N, V) tensor); the MLP saves a = relu(h)²
    and only the inputs a requested gradient needs (the inputs are alive anyway)."""
    N, H, V = 9, 24, 97
    hidden, weight, targets, bias = _ce_inputs(N, H, V)
    h, w, b = _leaves((hidden, weight, bias))
    _, saved = _saved_shapes(lambda: lce.linear_cross_entropy(h, w, targets, bias=b, softcap=15.0))
    assert saved == sorted([(N, H), (V, H), (V,)])
    _, saved = _saved_shapes(lambda: lce.linear_cross_entropy(hidden, w, targets, softcap=15.0))
    assert saved == [(0,), (0,), (V, H)]  # the absent gradients' empty stand-ins cost nothing

    x, w_fc, w_proj, b_fc, b_proj = _mlp_inputs(N=7, H=24, F=40)
    leaves = _leaves((x, w_fc, w_proj, b_fc, b_proj))
    _, saved = _saved_shapes(lambda: r2.relu2_mlp(*leaves))
    assert saved == sorted([(7, 24), (40, 24), (24, 40), (7, 40)])  # x, w_fc, w_proj, a
    w_proj_only = w_proj.detach().clone().requires_grad_()
    _, saved = _saved_shapes(lambda: r2.relu2_mlp(x, w_fc, w_proj_only, b_fc, b_proj))
    assert saved == [(7, 40)]  # dW_proj = dyᵀ a needs a alone


def test_backward_allocates_no_zero_gradients_for_extra_outputs():
    """The ops return more than the caller sees (the MLP's a; The loss's gradients): autograd must not fill (N, F) or
    (V, H) zero tensors as their "gradients" during backward (that would grow peak memory by one activation)."""
    x, w_fc, w_proj, b_fc, b_proj = _leaves(_mlp_inputs())
    y = r2.relu2_mlp(x, w_fc, w_proj, b_fc, b_proj)
    hidden, weight, targets, bias = _ce_inputs()
    h, w, b = _leaves((hidden, weight, bias))
    loss = lce.linear_cross_entropy(h, w, targets, bias=b, softcap=15.0)
    with _OpLog() as log:
        (y.sum() + loss).backward()
    zero_fills = [n for n in log.names if "zero" in n or "fill" in n]
    assert not zero_fills, zero_fills
    assert "speedrun::relu2_mlp_backward" in log.names


# ---------------------------------------------------------------------------------------------------
# torch.compile: each op whole in the graph
# ---------------------------------------------------------------------------------------------------


def _mlp_call(x, w_fc, w_proj, b_fc, b_proj):
    return registry.get("relu2_mlp", "triton")(x, w_fc, w_proj, b_fc, b_proj)


def _ce_call(hidden, weight, targets, bias):
    return registry.get("linear_cross_entropy", "triton")(hidden, weight, targets, bias=bias, softcap=15.0,
                                                          softcap_kind="algebraic", reduction="sum")


def _gram_ema(G, L):
    """An optimizer's statistics step: L ← 0.9·L + 0.1·G·Gᵀ in place, and the right Gram as a new tensor."""
    gram = registry.get("gram", "triton")
    gram(G, out=L, alpha=0.1, beta=0.9)
    return gram(G, side="right")


def test_dynamo_traces_every_op_without_a_graph_break():
    """torch._dynamo.explain of each registry entry: one graph, no break (under the interpreter Dynamo would
    crash tracing the raw Triton launches; the ops are opaque to it)."""
    hidden, weight, targets, bias = _ce_inputs()
    cases = [(_mlp_call, _leaves(_mlp_inputs())), (_ce_call, [*_leaves((hidden, weight)), targets, *_leaves((bias,))]),
             (lambda G: registry.get("newton_schulz", "triton")(G, coefficients="cubic"), [torch.randn(8, 12)]),
             (_gram_ema, [torch.randn(8, 12), torch.zeros(8, 8)])]
    for fn, args in cases:
        explained = torch._dynamo.explain(fn)(*args)
        assert explained.graph_break_count == 0, explained.break_reasons
        assert explained.graph_count == 1


@pytest.mark.parametrize("op", ["relu2_mlp", "linear_cross_entropy"])
def test_aot_compiled_forward_backward_matches_eager(op):
    """torch.compile(fullgraph=True) through AOTAutograd (the fake implementations, the autograd formulas and the
    backward op traced into a joint graph), forward and backward bit-identical to the eager calls: the same
    kernels run. (Inductor's own codegen is exercised by tests/model/test_compile.py.)"""
    torch._dynamo.reset()
    if op == "relu2_mlp":
        fn, tensors, extra = _mlp_call, _mlp_inputs(), ()
    else:
        hidden, weight, targets, bias = _ce_inputs()
        fn, tensors, extra = (lambda h, w, b, t: _ce_call(h, w, t, b)), (hidden, weight, bias), (targets,)
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    results = []
    for f in (fn, compiled):
        leaves = _leaves(tensors)
        out = f(*leaves, *extra)
        out.backward(torch.ones_like(out))
        results.append([out.detach()] + [t.grad for t in leaves])
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_compiled_newton_schulz_fullgraph():
    """A Newton-Schulz call compiled by inductor with fullgraph=True: no graph break, the same result as eager
    (the op runs the same kernels), in G's dtype."""
    torch._dynamo.reset()
    orthogonalize = registry.get("newton_schulz", "triton")

    def step(G):
        return orthogonalize(G, coefficients="cubic") * 0.5

    G = torch.randn(2, 16, 24).bfloat16()
    compiled = torch.compile(step, fullgraph=True)
    out = compiled(G)
    assert out.dtype == torch.bfloat16 and torch.equal(out, step(G))


def test_compiled_gram_fullgraph():
    """gram inside torch.compile(fullgraph=True) by inductor: the in-place EMA (gram_out, a mutating op
    functionalised by the compiler) and the fresh right Gram give exactly the eager calls' results, and the
    statistic is updated in place."""
    torch._dynamo.reset()
    G = torch.randn(2, 16, 24).bfloat16()
    L_eager = torch.randn(2, 16, 16)
    L_compiled = L_eager.clone()
    R_eager = _gram_ema(G, L_eager)
    R_compiled = torch.compile(_gram_ema, fullgraph=True)(G, L_compiled)
    assert torch.equal(R_compiled, R_eager) and R_compiled.dtype == torch.float32
    assert torch.equal(L_compiled, L_eager)
