"""tests/parity.py: the driver every kernel test uses must catch what it is there to catch."""

import pytest
import torch

from kernels.reference import relu2_mlp as eager_relu2_mlp
from tests.parity import check_nonfinite, check_parity, poisoned, run

NAMES = ("y", "dx", "dw_fc", "dw_proj")


def _inputs(dtype=torch.float32):
    x, w_fc, w_proj = torch.randn(9, 8), torch.randn(12, 8) / 8**0.5, torch.randn(8, 12) / 12**0.5
    return [t.to(dtype) for t in (x, w_fc, w_proj)], torch.randn(9, 8).to(dtype)


def test_the_reference_passes_against_itself():
    inputs, dy = _inputs()
    got, peer, oracle = check_parity(eager_relu2_mlp, eager_relu2_mlp, inputs, names=NAMES, grad_output=dy,
                                     table=NAMES)
    assert [t.dtype for t in oracle] == [torch.float64] * 4 and all(torch.equal(a, b) for a, b in zip(got, peer))


def test_a_wrong_gradient_fails():
    """A kernel whose forward is right but whose backward scales dw_proj by 1.01: caught in dw_proj only."""

    class Skewed(torch.autograd.Function):
        @staticmethod
        def forward(ctx, w):
            return w.clone()

        @staticmethod
        def backward(ctx, g):
            return g * 1.01

    def kernel(x, w_fc, w_proj):
        return eager_relu2_mlp(x, w_fc, Skewed.apply(w_proj))

    inputs, dy = _inputs()
    with pytest.raises(AssertionError, match="dw_proj"):
        check_parity(kernel, eager_relu2_mlp, inputs, names=NAMES, grad_output=dy)


def test_an_unwritten_element_fails():
    inputs, dy = _inputs()

    def kernel(*args):
        y = eager_relu2_mlp(*args)
        return torch.where(torch.arange(y.numel()).view(y.shape) == 5, poisoned(y), y)  # one element "not written"

    with pytest.raises(AssertionError, match="non-finite"):
        check_parity(kernel, eager_relu2_mlp, inputs, names=NAMES, grad_output=dy)


def test_fresh_leaves_and_one_grad_output():
    inputs, dy = _inputs()
    first, second = run(eager_relu2_mlp, inputs, dy), run(eager_relu2_mlp, inputs, dy)
    assert all(torch.equal(a, b) for a, b in zip(first, second))  # no gradient accumulates across paths
    assert all(not t.requires_grad for t in inputs)


def test_a_kernel_that_hides_nan_fails():
    inputs, dy = _inputs()
    inputs[0][3, 2] = float("nan")

    def hides_nan(x, w_fc, w_proj):  # torch.maximum(h, 0) would propagate; clamp-by-where hides it
        h = x @ w_fc.T
        return torch.where(h > 0, h, 0.0).square() @ w_proj.T

    check_nonfinite(eager_relu2_mlp, eager_relu2_mlp, inputs, names=NAMES, grad_output=dy)
    with pytest.raises(AssertionError, match="NaN positions differ"):
        check_nonfinite(hides_nan, eager_relu2_mlp, inputs, names=NAMES, grad_output=dy)
