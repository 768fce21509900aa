"""NorMuon: per-row (neuron) second-moment normalization after Muon, with the norm preserved."""

import torch

from optim.normuon import NorMuon


def test_first_step_equalizes_row_scale_and_preserves_norm():
    opt = NorMuon([torch.nn.Parameter(torch.zeros(8, 16))], [], lr=0.1, adam_lr=0.0, beta2=0.95)
    group = opt.param_groups[0]
    p = group["params"][0]
    direction = torch.randn(8, 16) * torch.linspace(0.1, 3.0, 8)[:, None]  # rows of very different scale
    out = opt.normalize(group, p, direction)
    row_rms = out.square().mean(dim=1).sqrt()
    # After one step v = (1-β₂)·row mean square, so every row is rescaled to the same RMS.
    torch.testing.assert_close(row_rms, row_rms.mean().expand(8), rtol=1e-4, atol=0)
    torch.testing.assert_close(out.norm(), direction.norm())
    v = opt.state[p]["row_second_moment"]
    torch.testing.assert_close(v, 0.05 * direction.square().mean(dim=1))


def test_second_moment_is_an_ema():
    opt = NorMuon([torch.nn.Parameter(torch.zeros(4, 6))], [], lr=0.1, adam_lr=0.0, beta2=0.9)
    group, p = opt.param_groups[0], opt.param_groups[0]["params"][0]
    d1, d2 = torch.randn(4, 6), torch.randn(4, 6)
    opt.normalize(group, p, d1)
    opt.normalize(group, p, d2)
    expected = 0.9 * 0.1 * d1.square().mean(1) + 0.1 * d2.square().mean(1)
    torch.testing.assert_close(opt.state[p]["row_second_moment"], expected)


def test_step_updates_weights_by_normalized_direction():
    w = torch.nn.Parameter(torch.randn(16, 32))
    before = w.detach().clone()
    opt = NorMuon([w], [], lr=0.05, adam_lr=0.0)
    w.grad = torch.randn(16, 32)
    opt.step()
    delta = (w.detach() - before) / -0.05
    # An orthogonalized (16, 32) direction has Frobenius norm ≈ sqrt(16); the rescale keeps it.
    assert 0.6 * 4 < delta.norm() < 1.2 * 4
