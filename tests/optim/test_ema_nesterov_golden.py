"""Result #39 (track3-ema-nesterov-muon: Muon + AdamW inside EMA-Nesterov) against its golden,
tests/golden/20260522_ema_nesterov_muon.json: the reference's own script (its log's text; it has no .py) run by
scripts/track3_golden.py for 6 steps at 2 layers, d=256, with the look-ahead window moved to steps 2-4
(prefill_steps 2, rest_steps 5; its size 0.6·ρ, ρ the embedding group's lr ratio one step late: 0.6, 0.571, 0.429).

Method and tolerances: tests/optim/track3_goldens.py. The init (the baseline's rule) is the reference's bit for
bit; the loss and every gradient at a perturbed init within 1e-5; the look-ahead size and every group's lr per step
equal to the reference's to the last bit of a double. The reference against itself with its bf16 GEMMs summed in
another order (the golden's peer) drifts by (self_drift, worst over the 6 steps): losses 1.1e-5, val 1.4e-5,
parameter norms 3.5e-3 (blocks.0.attn.q.bias; block matrices up to 8.7e-4, embedding 1.6e-8); steps 0 and 1 are
bitwise. Tolerance: 4× the peer's running maximum per figure and step, at least 1e-5. Measured on an AVX2 CPU
without native bf16, one thread (the recording machine's kind): every parameter norm after every step and the
final val loss are the peer's bit for bit (our bf16 Newton-Schulz there is the same emulation), so each figure sits
at exactly 1/4 of its tolerance; the losses before steps 0-2 differ from both by at most 3 fp32 ulps (2.6e-7).
A wrong wrapper hyper-parameter (γ 0.98, β 0.59, or the look-ahead unscheduled) puts some figure at 5-1200× its
tolerance (test_a_wrong_hyper_parameter_fails_the_comparison).
"""

import pytest
import torch

from tests.optim import track3_goldens as golden_method

FOLDER = "20260522_ema_nesterov_muon"
RECIPE = "track3-ema-nesterov-muon"
GOLDEN = golden_method.load(FOLDER)
META = GOLDEN["meta"]
# the reference's optimizer and group of each of our roles (its golden's param_groups)
GROUP_OF_ROLE = {"embed": "AdamW#0.group0", "head": "AdamW#0.group1", "scalar": "AdamW#0.group2",
                 "hidden": "Muon#1.group0"}


def tiny_model():
    model = golden_method.tiny_model(GOLDEN)
    baseline_init(model)
    return model


def baseline_init(model):
    torch.manual_seed(META["init_seed"])
    model.reset_parameters()


def test_init_loss_and_every_gradient_match_the_reference():
    golden_method.check_init(GOLDEN, tiny_model())
    golden_method.check_perturbed(GOLDEN, tiny_model())


def probe(trainer) -> dict:
    """What the golden records per step (its hparams): each group's lr, the look-ahead size and the step count
    after the step."""
    wrapper = trainer.optimizer
    lrs = {f"{GROUP_OF_ROLE[g['role']]}.lr": g["lr"] for g in wrapper.param_groups}
    return {**lrs, "EMA_Nesterov#2.current_lookahead_stepsize": wrapper.shift, "EMA_Nesterov#2.it": wrapper.steps + 1}


def run(tmp_path, *extra):
    cfg = golden_method.config(GOLDEN, tmp_path, RECIPE, "--wrapper.prefill_steps=2", "--wrapper.rest_steps=5", *extra)
    return golden_method.Run(cfg, init=baseline_init, probe=probe).run()


def test_the_recipe_at_the_golden_s_size_is_the_reference_s_configuration(tmp_path):
    cfg = golden_method.config(GOLDEN, tmp_path, RECIPE, "--wrapper.prefill_steps=2", "--wrapper.rest_steps=5")
    static = GOLDEN["hparams_static"]
    assert (cfg.wrapper.lookahead, cfg.wrapper.ema) == (static["EMA_Nesterov#2.lookahead_stepsize"],
                                                        static["EMA_Nesterov#2.lookahead_ema"])
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.momentum) == (
        static["Muon#1.group0.initial_lr"], static["Muon#1.group0.weight_decay"], static["Muon#1.group0.mu"])
    assert cfg.optim.ns_dtype == "bf16" and cfg.max_steps == cfg.horizon == META["steps"]


def test_the_trajectory_matches_the_reference(tmp_path):
    """The trainer with the recipe over the golden's 6 steps: each group's lr and the look-ahead size per step
    equal to the reference's; the loss before each step, every parameter's norm at each training forward (moved by
    the look-ahead at steps 2-4) and after each step, and the val loss after, within the tolerances above; where
    our arithmetic is the peer's (an AVX2 CPU without native bf16), every norm and the val loss bitwise the peer's."""
    result = run(tmp_path)
    for got, want in zip(result.probes, GOLDEN["steps"]):
        assert got == pytest.approx(want["hparams"], rel=1e-15, abs=0)
    assert [p["EMA_Nesterov#2.current_lookahead_stepsize"] != 0 for p in result.probes] == [
        False, False, True, True, True, False]
    golden_method.check_trajectory(result, GOLDEN)
    if golden_method.peer_arithmetic_differs(GOLDEN) is None:
        golden_method.check_equals_the_peer(result, GOLDEN)


@pytest.mark.parametrize("wrong", ["--wrapper.ema=0.98", "--wrapper.lookahead=0.59", "--wrapper.scheduled=False"])
def test_a_wrong_hyper_parameter_fails_the_comparison(tmp_path, wrong):
    """The comparison can fail: one wrapper hyper-parameter a little off moves some figure beyond its tolerance."""
    result = run(tmp_path, wrong)
    assert max(golden_method.worst(result, GOLDEN).values()) > 1
