"""kernels.relu2_mlp: forward/backward parity (with and without the biases), poisoned buffers, dead-unit gradients,
configs, codegen, input checks.

On the CPU the Triton kernel runs under the interpreter (tests/conftest.py) with the pinned 16×32×16 config,
so the odd shapes below span several tiles, ragged edges and a short last GROUP_M group; the 124M shape is
`gpu`-marked. Parity through tests.parity.check_parity: oracle kernels.reference.relu2_mlp in float64, peer the
same eager code in the input dtype, one random grad_output shared by every path.
"""

import math

import pytest
import torch
import triton

from bench.cases import relu2_mlp as cases
from kernels import reference, registry
from kernels import relu2_mlp as r2
from kernels.reference import relu2_mlp as eager_relu2_mlp
from kernels.tiles import TRITON_DTYPE
from tests.parity import NAN_WARNINGS, assert_close, assert_same_nonfinite, check_nonfinite, check_parity, poisoned, run

# (N, H, F): a single row, rows fewer than a tile, 37 rows (3 tile-rows: the last GROUP_M=2 group is short);
# H and F not multiples of BLOCK_K=16 / BLOCK_N=32 (K-loop and column edges masked).
SHAPES = [(1, 24, 72), (7, 40, 100), (37, 24, 100), (37, 40, 72)]
NAMES = ("y", "dx", "dw_fc", "dw_proj")
NAMES_BIAS = NAMES + ("db_fc", "db_proj")


def _inputs(N, H, F, dtype, device, *, biases=False):
    """x, w_fc, w_proj (and b_fc, b_proj) at the scale of a trained layer (unit-variance h and y), plus a
    grad_output dy. The biases shift h by ~±0.5 (so they move units across the relu) and y by ~±1."""
    x = torch.randn(N, H, device=device)
    w_fc = torch.randn(F, H, device=device) / math.sqrt(H)
    w_proj = torch.randn(H, F, device=device) / math.sqrt(F)
    dy = torch.randn(N, H, device=device)
    tensors = [x, w_fc, w_proj] + ([0.5 * torch.randn(F, device=device), torch.randn(H, device=device)] if biases
                                   else [])
    return [t.to(dtype) for t in tensors], dy.to(dtype)


def parity(inputs, dy, *, k=2.0):
    """Kernel vs eager peer (same dtype) and float64 oracle: output and every gradient (the biases' too)."""
    where = f"{tuple(inputs[0].shape)}x{inputs[1].shape[0]} {inputs[0].dtype} biases={len(inputs) == 5}"
    names = NAMES_BIAS if len(inputs) == 5 else NAMES
    return check_parity(r2.relu2_mlp, eager_relu2_mlp, inputs, names=names, grad_output=dy, k=k, where=where)[0]


# ---------------------------------------------------------------------------------------------------
# Parity: forward and backward (interpreter on CPU, the same code on a GPU)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_parity_forward_backward(shape, dtype, device):
    inputs, dy = _inputs(*shape, dtype, device)
    # One row: each max error is taken over a handful of sums, so the peer's error is as much luck as the
    # kernel's. Worst kernel/peer ratio over 30 seeds (interpreter): one row 1.75 in bf16, 4.5 in
    # fp32; every other shape below 2 once the noise floor is added.
    parity(inputs, dy, k=6.0 if shape[0] == 1 else 2.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_parity_with_biases(shape, dtype, device):
    """The track-3 MLP: relu(x w_fcᵀ + b_fc)² w_projᵀ + b_proj, b_fc fused into the forward epilogue; db_fc and
    db_proj compared like every other gradient."""
    inputs, dy = _inputs(*shape, dtype, device, biases=True)
    parity(inputs, dy, k=6.0 if shape[0] == 1 else 2.0)  # one row: see test_parity_forward_backward


@pytest.mark.parametrize("biases", [False, True])
def test_parity_fp16(biases, device):
    inputs, dy = _inputs(37, 40, 100, torch.float16, device, biases=biases)
    parity(inputs, dy)


@pytest.mark.parametrize("need", [(True, False, False, False, False), (False, True, False, False, False),
                                  (False, False, True, False, False), (True, False, True, False, False),
                                  (False, False, False, True, False), (False, False, False, False, True),
                                  (False, True, False, True, True)],
                         ids=["x", "w_fc", "w_proj", "x+w_proj", "b_fc", "b_proj", "w_fc+biases"])
def test_only_requested_gradients(need, device):
    """Backward returns None for inputs that need no gradient and the same values for those that do."""
    inputs, dy = _inputs(7, 24, 72, torch.bfloat16, device, biases=True)
    _, *full = run(r2.relu2_mlp, inputs, dy)
    leaves = [t.detach().clone().requires_grad_(n) for t, n in zip(inputs, need)]
    r2.relu2_mlp(*leaves).backward(dy)
    for name, leaf, n, g in zip(NAMES_BIAS[1:], leaves, need, full):
        if n:
            assert torch.equal(leaf.grad, g), name
        else:
            assert leaf.grad is None, name


def test_registered_as_triton():
    assert registry.get("relu2_mlp", "triton") is r2.relu2_mlp


# ---------------------------------------------------------------------------------------------------
# The fused epilogues on their own, and poisoned buffers
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("biases", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_epilogues_match_their_formulas(dtype, biases, device):
    """a = relu(x w_fcᵀ [+ b_fc])² and dH = (dy w_proj)·2·sqrt(a), each one rounding of the fp64 value."""
    (x, w_fc, w_proj, *b), dy = _inputs(37, 40, 100, dtype, device, biases=biases)
    b_fc = b[0] if b else None
    a = r2.relu2_fc_fwd(x, w_fc, b_fc)
    h64 = x.double() @ w_fc.double().T + (0 if b_fc is None else b_fc.double())
    expected_a = h64.clamp_min(0).square()
    dh = r2.relu2_fc_bwd(dy, w_proj, a)
    expected_dh = (dy.double() @ w_proj.double()) * 2 * a.double().sqrt()
    # bf16: half an ulp from the store, plus the fp32 accumulation; fp32: tf32x3/fp32 accumulation.
    tol = dict(atol=1e-2, rtol=8e-3) if dtype == torch.bfloat16 else dict(atol=1e-5, rtol=1e-5)
    assert_close(a, expected_a, name="a = relu(h)²", **tol)
    assert_close(dh, expected_dh, name="dH = dA·2·sqrt(a)", **tol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_poisoned_outputs_and_grad_buffers_are_fully_written(dtype, device):
    """Every launcher output starts as NaN: any element a kernel (or matmul, or column sum) skips stays NaN and
    fails. With both biases, so that their epilogue and gradients are covered too."""
    N, H, F = 37, 40, 100
    (x, w_fc, w_proj, b_fc, b_proj), dy = _inputs(N, H, F, dtype, device, biases=True)
    y_ref, *g_ref = run(r2.relu2_mlp, [x, w_fc, w_proj, b_fc, b_proj], dy)

    out, act = poisoned((N, H), dtype=dtype, device=device), poisoned((N, F), dtype=dtype, device=device)
    y, a = r2.relu2_mlp_fwd(x, w_fc, w_proj, b_fc, b_proj, out=out, act_out=act)
    assert y is out and a is act
    assert torch.isfinite(a).all() and torch.equal(y, y_ref)

    bufs = dict(dx=poisoned(x), dw_fc=poisoned(w_fc), dw_proj=poisoned(w_proj), db_fc=poisoned(b_fc),
                db_proj=poisoned(b_proj), dh=poisoned(a))
    grads = r2.relu2_mlp_bwd(dy, x, w_fc, w_proj, a, need_db_fc=True, need_db_proj=True, **bufs)
    assert all(g is bufs[name] for g, name in zip(grads, ("dx", "dw_fc", "dw_proj", "db_fc", "db_proj")))
    assert torch.isfinite(bufs["dh"]).all()
    for name, got, ref in zip(NAMES_BIAS[1:], grads, g_ref):
        assert torch.isfinite(got).all(), name
        assert torch.equal(got, ref), name


def test_negative_preactivations_give_exactly_zero_gradient(device):
    """Units whose pre-activation is negative for every token pass no gradient: dW_fc and dW_proj rows/columns
    are exactly 0, dH is exactly 0 wherever h < 0, and their w_proj columns cannot change dx or dW_fc."""
    N, H, F = 37, 24, 72
    dtype = torch.bfloat16
    dead = torch.arange(0, F, 5, device=device)  # every 5th unit
    x = (torch.rand(N, H, device=device) + 0.1).to(dtype)  # positive inputs...
    w_fc = torch.randn(F, H, device=device) / math.sqrt(H)
    w_fc[dead] = -w_fc[dead].abs() - 0.05  # ...and all-negative rows: h[:, dead] < 0 for every token
    w_fc = w_fc.to(dtype)
    w_proj = (torch.randn(H, F, device=device) / math.sqrt(F)).to(dtype)
    dy = torch.randn(N, H, device=device).to(dtype)

    _, dx, dw_fc, dw_proj = run(r2.relu2_mlp, [x, w_fc, w_proj], dy)
    assert torch.all(dw_fc[dead] == 0), "dW_fc rows of dead units"
    assert torch.all(dw_proj[:, dead] == 0), "dW_proj columns of dead units"

    h64 = x.double() @ w_fc.double().T  # (N, F)
    a = r2.relu2_fc_fwd(x, w_fc)
    dh = r2.relu2_fc_bwd(dy, w_proj, a)
    negative = h64 < -1e-3  # away from 0, where the sign of an fp32-accumulated h is certain
    assert negative[:, dead].all() and negative.sum() > negative[:, dead].numel()  # random units too
    assert torch.all(a[negative] == 0) and torch.all(dh[negative] == 0)

    scaled = w_proj.clone()
    scaled[:, dead] *= 1000  # a dead unit's dA grows 1000x; its contribution must stay exactly 0
    _, dx2, dw_fc2, _ = run(r2.relu2_mlp, [x, w_fc, scaled], dy)
    assert torch.equal(dx2, dx) and torch.equal(dw_fc2, dw_fc)


def _nonfinite_inputs(dtype, device):
    """x with a NaN, a +inf and a -inf (rows 1, 5, 9), dy with a NaN (row 20)."""
    inputs, dy = _inputs(37, 40, 100, dtype, device)
    x = inputs[0]
    x[1, 3], x[5, 0], x[9, 7] = float("nan"), float("inf"), float("-inf")
    dy[20, 4] = float("nan")
    return inputs, dy


@NAN_WARNINGS
@pytest.mark.parametrize("biases", [False, True])
def test_nan_and_inf_propagate_as_in_eager(biases, device):
    """The output and every gradient are non-finite exactly where eager's are, of the same kind. fp32: in bf16 the
    CPU's own GEMM smears a NaN into a neighbouring row (tests.parity.check_nonfinite), which the module's
    torch.matmul calls inherit; the bf16 Triton launches are checked on their own below."""
    inputs, dy = _nonfinite_inputs(torch.float32, device)
    names = NAMES
    if biases:
        inputs += [0.5 * torch.randn(100, device=device), torch.randn(40, device=device)]
        names = NAMES_BIAS
    y, *_ = check_nonfinite(r2.relu2_mlp, eager_relu2_mlp, inputs, names=names, grad_output=dy)[0]
    assert torch.isnan(y[1]).all() and torch.isfinite(y[[0, 2, 3]]).all()


@NAN_WARNINGS
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_epilogues_propagate_nan_and_inf(dtype, device):
    """a = relu(h)² is NaN for a NaN h (not 0), inf for +inf, 0 for -inf; dH is exactly 0 where h <= 0 even for a
    NaN dA (eager's relu backward selects 0 there) and NaN/inf elsewhere: the positions and kinds of eager's
    relu(h).square() and its autograd, in float64."""
    (x, w_fc, w_proj), dy = _nonfinite_inputs(dtype, device)
    h64 = (x.double() @ w_fc.double().T).requires_grad_()
    a64 = torch.relu(h64).square()
    a64.backward(dy.double() @ w_proj.double())
    a = r2.relu2_fc_fwd(x, w_fc)
    assert_same_nonfinite(a, a64.detach(), name="a = relu(h)²")
    assert_same_nonfinite(r2.relu2_fc_bwd(dy, w_proj, a), h64.grad, name="dH")
    assert torch.isnan(a[1]).all() and torch.isnan(h64.grad[20]).any() and (h64.grad[20] == 0).any()


@NAN_WARNINGS
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_reference_relu_square_is_autograds_bit_for_bit(dtype):
    """The eager MLP's relu(h)² (kernels.reference.relu_square, two passes each way) gives F.relu(h).square() and
    its autograd exactly: values, gradients, and NaN/inf (a NaN grad where h <= 0 still gives 0)."""
    h = torch.randn(64, 77, dtype=dtype)
    h[0, :5] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0], dtype=dtype)
    grad = torch.randn(64, 77, dtype=dtype)
    grad[1, :8], grad[2, 3] = float("nan"), float("inf")
    grad[3] = float("nan")
    outs = []
    for fn in (reference.relu_square, lambda t: torch.nn.functional.relu(t).square()):
        leaf = h.clone().requires_grad_()
        y = fn(leaf)
        y.backward(grad)
        outs.append((y.detach(), leaf.grad))
    for got, want, name in zip(outs[0], outs[1], ("relu(h)²", "its gradient")):
        assert torch.equal(got.nan_to_num(7.0, 8.0, 9.0), want.nan_to_num(7.0, 8.0, 9.0)), name
        assert torch.equal(got.isnan(), want.isnan()), name
    assert (outs[0][1][3] == 0).any() and outs[0][1][3].isnan().any()  # the NaN row: 0 where h <= 0


# ---------------------------------------------------------------------------------------------------
# Configs: every GPU tile runs (under the interpreter too), the prune filter, the FLOP/byte model
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", r2.CONFIGS, ids=lambda c: c.name.replace(" ", "_"))
def test_every_config_computes_the_same_thing(cfg, device):
    """Each autotune config, forced, matches the pinned config (fp32 sums in another order: not bitwise)."""
    dtype = torch.bfloat16 if cfg.block_k == 64 else torch.float32
    (x, w_fc, w_proj), dy = _inputs(37, 40, 100, dtype, device)
    a_pin = r2.relu2_fc_fwd(x, w_fc, config=r2.INTERPRETER_CONFIG.name)
    dh_pin = r2.relu2_fc_bwd(dy, w_proj, a_pin, config=r2.INTERPRETER_CONFIG.name)
    a = r2.relu2_fc_fwd(x, w_fc, out=poisoned(a_pin), config=cfg.name)
    dh = r2.relu2_fc_bwd(dy, w_proj, a_pin, out=poisoned(dh_pin), config=cfg.name)
    tol = dict(atol=1e-2, rtol=8e-3) if dtype == torch.bfloat16 else dict(atol=1e-5, rtol=1e-5)
    assert_close(a, a_pin, name=f"a [{cfg.name}]", **tol)
    assert_close(dh, dh_pin, name=f"dH [{cfg.name}]", **tol)


def test_autotuned_launch_path(monkeypatch, device):
    """The GPU launch path — triton.autotune over CONFIGS, pruned by prune_configs, grid from the chosen
    tile — run under the interpreter with a CPU timer, in fp16 (whose tl.dot the interpreter gets right
    without UPCAST). The 130×200 output keeps all four 16-bit tiles, so the autotuner really chooses."""
    if device.type == "cuda":
        pytest.skip("on a GPU the gpu-marked tests run this path for real")
    import time

    def cpu_timer(fn, quantiles):
        start = time.perf_counter()
        fn()
        return [time.perf_counter() - start] * len(quantiles)

    tuned = r2._autotuned_kernel.__wrapped__(do_bench=cpu_timer)  # uncached: the GPU one stays untouched
    monkeypatch.setattr(r2, "_autotuned_kernel", lambda: tuned)
    monkeypatch.setattr(r2, "is_interpreter", lambda: False)  # the launcher takes its GPU branch
    (x, w_fc, w_proj), dy = _inputs(130, 40, 200, torch.float16, device)
    a = r2.relu2_fc_fwd(x, w_fc, out=poisoned((130, 200), dtype=torch.float16))
    dh = r2.relu2_fc_bwd(dy, w_proj, a, out=poisoned((130, 200), dtype=torch.float16))
    monkeypatch.undo()
    assert len(tuned.cache) == 2  # one choice per (size, epilogue, dtypes) key: forward and backward
    usable = {(tuple(sorted(c.meta().items())), c.warps, c.stages) for c in r2.usable_configs(torch.float16)}
    assert all((tuple(sorted(c.kwargs.items())), c.num_warps, c.num_stages) in usable for c in tuned.cache.values())
    assert_close(a, r2.relu2_fc_fwd(x, w_fc), atol=1e-2, rtol=2e-3, name="a (autotuned)")
    assert_close(dh, r2.relu2_fc_bwd(dy, w_proj, a), atol=1e-2, rtol=2e-3, name="dH (autotuned)")


def _prune(dtype, M, N, epilogue=r2.EPILOGUE_RELU2):
    configs = [triton.Config(c.meta(), **c.launch()) for c in r2.CONFIGS]
    kept = r2.prune_configs(configs, {}, a_ptr=torch.empty(1, dtype=dtype), EPILOGUE=epilogue, M=M, N=N, K=768)
    return {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages) for c in kept}


def test_prune_filter():
    for dtype, block_k in ((torch.bfloat16, 64), (torch.float16, 64), (torch.float32, 32)):
        itemsize = torch.empty((), dtype=dtype).element_size()
        usable = r2.usable_configs(dtype)
        assert usable and all(c.block_k == block_k for c in usable)
        assert all(c.smem_bytes(itemsize) <= 227 * 1024 for c in usable)
        # the 124M shape keeps every usable config for autotuning, in both epilogues
        for epilogue in (r2.EPILOGUE_RELU2, r2.EPILOGUE_DRELU2):
            assert len(_prune(dtype, 8192, 3072, epilogue)) == len(usable)
    # a tiny problem: no tile fits inside it, so only the smallest tile (64×128) is left: no autotuning
    assert _prune(torch.bfloat16, 7, 40) == {(64, 128, 64, 4, 4)}
    # a 100×100 output: tiles up to 128 on a side
    assert all(m <= 128 and n <= 128 for m, n, *_ in _prune(torch.bfloat16, 100, 100))


def test_flop_and_byte_model():
    N, H, F = 8192, 768, 3072
    assert cases.mlp_flops(N, H, F, "forward") == 4 * N * H * F
    assert cases.mlp_flops(N, H, F, "backward") == 8 * N * H * F
    assert cases.mlp_flops(N, H, F, "full") == 12 * N * H * F
    fwd, bwd = cases.mlp_bytes(N, H, F, "forward", 2), cases.mlp_bytes(N, H, F, "backward", 2)
    assert cases.mlp_bytes(N, H, F, "full", 2) == fwd + bwd
    assert cases.mlp_bytes(N, H, F, "forward", 2) == 2 * (2 * N * H + 2 * H * F + 2 * N * F)


# ---------------------------------------------------------------------------------------------------
# sm_90 codegen
# ---------------------------------------------------------------------------------------------------


def test_codegen_cases_cover_every_usable_config():
    all_cases = cases.codegen_cases()
    for dtype in r2.SUPPORTED_DTYPES:
        ty = TRITON_DTYPE[dtype]
        for kernel, suffixes in (("relu2_mm_fwd", ("", " bias")), ("relu2_mm_bwd", ("",))):
            have = {c.config for c in all_cases if c.kernel == kernel and c.config.startswith(ty + " ")}
            assert have == {f"{ty} {c.name}{suffix}" for c in r2.usable_configs(dtype) for suffix in suffixes}
    assert all(c.constexprs["HAS_BIAS"] == c.config.endswith(" bias") for c in all_cases)
    for case in all_cases:
        assert case.constexprs["UPCAST"] is False and case.constexprs["RNE_BF16"] is False
        assert case.flops == 2 * 8192 * 768 * 3072


def test_sm90_codegen_has_hgmma_and_no_spills(assert_sm90_clean):
    """Every (config, dtype, epilogue) compiles for sm_90 with HGMMA, no spills and smem <= 227 KB."""
    assert_sm90_clean("relu2_mm_", cases.codegen_cases())


# ---------------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------------


def _good(dtype=torch.float32):
    (x, w_fc, w_proj), dy = _inputs(5, 24, 72, dtype, "cpu")
    return x, w_fc, w_proj, dy


def test_rejects_wrong_rank_dtype_and_mixed_dtypes():
    x, w_fc, w_proj, _ = _good()
    with pytest.raises(ValueError, match="x must have 2 dims"):
        r2.relu2_mlp(x[0], w_fc, w_proj)
    with pytest.raises(ValueError, match="w_proj must have 2 dims"):
        r2.relu2_mlp(x, w_fc, w_proj[None])
    with pytest.raises(TypeError, match="supported: bfloat16, float16, float32"):
        r2.relu2_mlp(x.double(), w_fc.double(), w_proj.double())
    with pytest.raises(TypeError, match="x has dtype torch.int32"):
        r2.relu2_mlp(x.int(), w_fc, w_proj)
    with pytest.raises(TypeError, match="inputs must share one dtype.*w_fc: torch.bfloat16"):
        r2.relu2_mlp(x, w_fc.bfloat16(), w_proj)


def test_rejects_shape_mismatches_naming_the_dims():
    x, w_fc, w_proj, dy = _good()
    with pytest.raises(ValueError, match=r"w_fc \(F, H\) = \(72, 40\) must have H = 24 columns"):
        r2.relu2_mlp(x, torch.randn(72, 40), w_proj)
    with pytest.raises(ValueError, match=r"w_proj must be \(H, F\) = \(24, 72\).*got \(72, 24\)"):
        r2.relu2_mlp(x, w_fc, w_proj.T.contiguous())
    with pytest.raises(ValueError, match=r"a must be \(N, F\) = \(5, 72\)"):
        r2.relu2_fc_bwd(dy, w_proj, torch.zeros(5, 70))
    with pytest.raises(ValueError, match=r"w_proj \(H, F\) = \(20, 72\) must have H = 24 rows"):
        r2.relu2_fc_bwd(dy, torch.randn(20, 72), torch.zeros(5, 72))
    with pytest.raises(ValueError, match=r"b_fc must have 72 entries \(F, the rows of w_fc\), got 24"):
        r2.relu2_mlp(x, w_fc, w_proj, torch.zeros(24))
    with pytest.raises(ValueError, match=r"b_proj must have 24 entries \(H, the rows of w_proj\), got 72"):
        r2.relu2_mlp(x, w_fc, w_proj, None, torch.zeros(72))
    with pytest.raises(TypeError, match="b_fc has dtype torch.bfloat16"):
        r2.relu2_mlp(x, w_fc, w_proj, torch.zeros(72, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="b_proj must have 1 dims"):
        r2.relu2_mlp(x, w_fc, w_proj, None, torch.zeros(24, 1))


def test_rejects_layout_empty_and_bad_out():
    x, w_fc, w_proj, _ = _good()
    with pytest.raises(ValueError, match="w_fc must be contiguous"):
        r2.relu2_mlp(x, w_fc.T.contiguous().T, w_proj)
    with pytest.raises(ValueError, match="x is empty"):
        r2.relu2_mlp(x[:0], w_fc, w_proj)
    with pytest.raises(ValueError, match=r"out must have shape \(5, 72\)"):
        r2.relu2_fc_fwd(x, w_fc, out=torch.empty(5, 71))
    with pytest.raises(TypeError, match="out has dtype torch.bfloat16"):
        r2.relu2_fc_fwd(x, w_fc, out=torch.empty(5, 72, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"dx must have shape \(5, 24\)"):
        r2.relu2_mlp_bwd(x, x, w_fc, w_proj, torch.zeros(5, 72), dx=torch.empty(24, 5))


def test_rejects_unknown_or_wrong_dtype_config():
    x, w_fc, _, _ = _good()
    with pytest.raises(ValueError, match="unknown relu2_mlp config 'huge'"):
        r2.relu2_fc_fwd(x, w_fc, config="huge")
    with pytest.raises(ValueError, match="is not for torch.float32"):
        r2.relu2_fc_fwd(x, w_fc, config=r2.CONFIGS[0].name)  # a bf16 tile: 256-byte fp32 K rows


def test_cpu_tensor_without_interpreter_is_refused(monkeypatch):
    x, w_fc, w_proj, _ = _good()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        r2.relu2_mlp(x, w_fc, w_proj)


# ---------------------------------------------------------------------------------------------------
# GPU: the 124M shape and determinism
# ---------------------------------------------------------------------------------------------------

SPEEDRUN_SHAPE = (8192, 768, 3072)  # tokens × n_embd → 4·n_embd


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("biases", [False, True])
def test_speedrun_shape(dtype, biases):
    inputs, dy = _inputs(*SPEEDRUN_SHAPE, dtype, "cuda", biases=biases)
    # fp32 runs tl.dot(input_precision="tf32x3"): about fp32 accuracy, not bit-for-bit fp32 FMA sums; k=4
    # allows for that (not yet measured on a GPU: this test on one measures it).
    parity(inputs, dy, k=2.0 if dtype == torch.bfloat16 else 4.0)


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", [c for c in r2.CONFIGS if c.block_k == 64], ids=lambda c: c.name.replace(" ", "_"))
def test_speedrun_shape_every_bf16_config(cfg):
    (x, w_fc, w_proj), dy = _inputs(*SPEEDRUN_SHAPE, torch.bfloat16, "cuda")
    a = r2.relu2_fc_fwd(x, w_fc, config=cfg.name)
    dh = r2.relu2_fc_bwd(dy, w_proj, a, config=cfg.name)
    h64 = x.double() @ w_fc.double().T
    assert_close(a, h64.clamp_min(0).square(), atol=1e-2, rtol=8e-3, name=f"a [{cfg.name}]")
    assert_close(dh, (dy.double() @ w_proj.double()) * 2 * a.double().sqrt(), atol=1e-2, rtol=8e-3,
                 name=f"dH [{cfg.name}]")


@pytest.mark.gpu
def test_deterministic():
    inputs, dy = _inputs(*SPEEDRUN_SHAPE, torch.bfloat16, "cuda", biases=True)
    first = run(r2.relu2_mlp, inputs, dy)
    for _ in range(10):
        assert all(torch.equal(a, b) for a, b in zip(run(r2.relu2_mlp, inputs, dy), first))
