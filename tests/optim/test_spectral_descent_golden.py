"""Result #22 (track3-spectral-descent: Muon with momentum 0 and no Nesterov, + AdamW) against its golden,
tests/golden/20260517_ortho.json: the reference's own script (its log's text; it has no .py) run by
scripts/track3_golden.py for 5 steps at 2 layers, d=256 (schedule factors 1, 1, .857, .571, .286), and the update
itself: the orthogonalized current gradient, whatever came before.

Method and tolerances: tests/optim/track3_goldens.py (4× the peer's running maximum drift per figure and step, at
least 1e-5). The peer (the reference with its bf16 GEMMs summed in another order) drifts by, over the 5 steps:
losses 2.3e-6, val 1.9e-6, parameter norms 1.7e-3 (blocks.1.attn.v.bias; block matrices up to 8.8e-4),
steps 0 and 1 bitwise. Measured on an AVX2 CPU without native bf16, one thread (the recording machine's kind):
every parameter norm after every step and the final val loss are the peer's bit for bit. A wrong hyper-parameter
(momentum 0.1, weight decay 0.03, or lr 0.033) fails the comparison (test_a_wrong_hyper_parameter_fails_the_comparison).
"""

import pytest
import torch

from kernels import registry as kernels
from optim.muon import Muon, lr_scale
from tests.optim import track3_goldens as golden_method

FOLDER = "20260517_ortho"
RECIPE = "track3-spectral-descent"
GOLDEN = golden_method.load(FOLDER)
META = GOLDEN["meta"]
GROUP_OF_ROLE = {"embed": "AdamW#0.group0", "head": "AdamW#0.group1", "scalar": "AdamW#0.group2",
                 "hidden": "Muon#1.group0"}


def baseline_init(model):
    torch.manual_seed(META["init_seed"])
    model.reset_parameters()


def probe(trainer) -> dict:
    return {f"{GROUP_OF_ROLE[g['role']]}.lr": g["lr"] for g in trainer.optimizer.param_groups}


def run(tmp_path, *extra):
    cfg = golden_method.config(GOLDEN, tmp_path, RECIPE, *extra)
    return golden_method.Run(cfg, init=baseline_init, probe=probe).run()


def test_init_loss_and_every_gradient_match_the_reference():
    for check in (golden_method.check_init, golden_method.check_perturbed):
        model = golden_method.tiny_model(GOLDEN)
        baseline_init(model)
        check(GOLDEN, model)


def test_the_recipe_at_the_golden_s_size_is_the_reference_s_configuration(tmp_path):
    cfg = golden_method.config(GOLDEN, tmp_path, RECIPE)
    static = GOLDEN["hparams_static"]
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.momentum, cfg.optim.nesterov) == (
        static["Muon#1.group0.initial_lr"], static["Muon#1.group0.weight_decay"], static["Muon#1.group0.mu"], False)
    assert cfg.optim.ns_dtype == "bf16" and cfg.max_steps == cfg.horizon == META["steps"]


def test_the_trajectory_matches_the_reference(tmp_path):
    """The trainer with the recipe over the golden's 5 steps: every group's lr per step equal to the reference's;
    the loss before each step, every parameter's norm after each, and the val loss after, within the tolerances;
    where our arithmetic is the peer's, every norm and the val loss bitwise the peer's."""
    result = run(tmp_path)
    for got, want in zip(result.probes, GOLDEN["steps"]):
        assert got == pytest.approx(want["hparams"], rel=1e-15, abs=0)
    golden_method.check_trajectory(result, GOLDEN)
    if golden_method.peer_arithmetic_differs(GOLDEN) is None:
        golden_method.check_equals_the_peer(result, GOLDEN)


@pytest.mark.parametrize("wrong", ["--optim.momentum=0.1", "--optim.weight_decay=0.03", "--optim.lr=0.033"])
def test_a_wrong_hyper_parameter_fails_the_comparison(tmp_path, wrong):
    """The comparison can fail: one hyper-parameter a little off moves some figure beyond its tolerance."""
    result = run(tmp_path, wrong)
    worst = golden_method.worst(result, GOLDEN)
    assert max(worst.values()) > 1, worst


def test_the_step_is_the_orthogonalized_current_gradient():
    """Momentum 0, no Nesterov: the buffer is the current gradient bit for bit, and the step is
    W·(1 - lr·wd) - lr·s·NS(G) whatever gradients came before (two histories, the same last gradient, the same
    step), on fresh random matrices."""
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    shape, lr, wd = (48, 16), 0.03, 0.015
    w0 = torch.randn(*shape, generator=g)
    last = torch.randn(*shape, generator=g)
    ns = kernels.get("newton_schulz", "eager")
    for history in range(2):
        w = torch.nn.Parameter(w0.clone())
        opt = Muon([w], lr=lr, momentum=0.0, nesterov=False, weight_decay=wd, ns_coefficients="cubic", ns_steps=12,
                   ns_dtype="bf16")
        for _ in range(history * 3):
            w.grad = torch.randn(*shape, generator=g) * 10
            opt.step()
        before = w.detach().clone()
        w.grad = last.clone()
        opt.step()
        assert torch.equal(opt.state[w]["momentum_buffer"], last)
        want = before * (1 - lr * wd) - lr * lr_scale(shape, "original") * ns(
            last.bfloat16(), steps=12, coefficients="cubic").float()
        torch.testing.assert_close(w.detach(), want, rtol=0, atol=1e-7)
        if history == 0:
            step0 = (w.detach() - before * (1 - lr * wd)).clone()
        else:
            torch.testing.assert_close(w.detach() - before * (1 - lr * wd), step0, rtol=0, atol=1e-7)
