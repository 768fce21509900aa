"""The Tail-EMA readout (optim/tail_ema.py): its EMA and blend against the formula in float64, the window, the
embeddings left out, the trained weights restored after validation, and its state through a state_dict."""

import copy

import pytest
import torch

from optim import make_readout
from optim.tail_ema import TailEmaConfig
from tests.optim.test_roles import BiasedModel


def train_step(model, gen):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("embeddings", [False, True])
def test_ema_and_blend_follow_the_formula(embeddings):
    torch.manual_seed(0)
    model = BiasedModel()
    cfg = TailEmaConfig(start=3, end=7, tau=2.5, blend=0.6, embeddings=embeddings)
    readout = make_readout(cfg, model)
    gen = torch.Generator().manual_seed(1)
    ema = None
    for step in range(1, 10):  # update(step) after the step-th optimizer step
        train_step(model, gen)
        readout.update(step)
        weights = {n: p.detach().double() for n, p in model.named_parameters()}
        if 3 <= step < 7:
            ema = dict(weights) if ema is None else {n: e + (weights[n] - e) / 2.5 for n, e in ema.items()}
        trained = {n: p.detach().clone() for n, p in model.named_parameters()}
        with readout.weights():
            for name, p in model.named_parameters():
                averaged = embeddings or not name.startswith("wte.")
                want = (0.4 * weights[name] + 0.6 * ema[name]) if ema is not None and averaged else weights[name]
                assert torch.allclose(p.double(), want, rtol=1e-6, atol=1e-7), (step, name)
        for name, p in model.named_parameters():
            assert torch.equal(p, trained[name])  # the trained weights are back


def test_state_dict_round_trip():
    torch.manual_seed(2)
    model = BiasedModel()
    cfg = TailEmaConfig(start=1, end=10, tau=3.0)
    readout = make_readout(cfg, model)
    gen = torch.Generator().manual_seed(3)
    for step in range(1, 4):
        train_step(model, gen)
        readout.update(step)
    saved, weights = copy.deepcopy(readout.state_dict()), copy.deepcopy(model.state_dict())
    for step in range(4, 7):
        train_step(model, gen)
        readout.update(step)
    with readout.weights():
        straight = {n: p.detach().clone() for n, p in model.named_parameters()}

    other = BiasedModel()
    other.load_state_dict(weights)
    resumed = make_readout(cfg, other)
    resumed.load_state_dict(saved)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):  # the generator's first draws, as before the stop
        train_step(BiasedModel(), gen)
    for step in range(4, 7):
        train_step(other, gen)
        resumed.update(step)
    with resumed.weights():
        for name, p in other.named_parameters():
            assert torch.equal(p, straight[name]), name


def test_no_ema_before_start():
    model = BiasedModel()
    readout = make_readout(TailEmaConfig(start=5, end=8), model)
    readout.update(4)
    assert readout.state_dict() == {"ema": None} and not readout.blends()
    readout.update(5)
    assert readout.blends()
