"""Parity with modded-nanogpt's track-3 reference, records/track_3_optimization/train_gpt_simple.py.

The figures in tests/golden/track3_train_gpt_simple.json are the unedited output of

    # KellerJordan/modded-nanogpt at commit f411b3d346aa52d3504324ca93c230fd84c6c07f (the file's git blob e723a6bb)
    git -C modded-nanogpt show f411b3d:records/track_3_optimization/train_gpt_simple.py > train_gpt_simple.py
    python scripts/track3_golden.py --reference train_gpt_simple.py > tests/golden/track3_train_gpt_simple.json

run with torch 2.13.0+cpu and Python 3.11.7 on one thread of an x86_64 CPU with AVX-512 (torch capability
AVX512; an Intel Xeon). scripts/track3_golden.py runs the reference's own model and optimizer definitions at
2 layers, d=256 (2 heads of 128), 2 rows of 64 tokens, vocab 50304, fp32 (its bf16 embedding converted to fp32),
eagerly (torch.compile replaced by the identity), and records: every parameter's init after seeding the RNG
with 1234, the loss and every gradient at a perturbed state (init + seeded noise), and 5 optimizer steps on
seeded token streams (losses, every parameter's norm after each step, val loss before and after).

Here our "track3" model at that size, in fp32, must reproduce those figures: the same init from the same seed
(our track3 init draws in the reference's parameter order), and the loss and gradients within 1e-5 relative.
A gradient is compared by its norm and by a probe <g, r> with the same seeded r: |Δ<g, r>| <= 1e-5·|g|·|r| is
what "g within 1e-5 relative" implies (Cauchy-Schwarz), and a permuted or sign-flipped gradient fails it.
"""

import json
import re
from pathlib import Path

import pytest
import torch

from model.config import model_preset
from model.gpt import GPT

GOLDEN = json.loads((Path(__file__).parent / "golden" / "track3_train_gpt_simple.json").read_text())
META = GOLDEN["meta"]
RTOL = 1e-5


def our_name(ref: str) -> str:
    """The reference's parameter name -> ours."""
    top = {"embed.weight": "wte.weight", "proj.weight": "lm_head.weight", "proj.bias": "lm_head.bias",
           "norm1.gains": "norm_in.gain", "norm2.gains": "norm_f.gain"}
    if ref in top:
        return top[ref]
    name = re.sub(r"attn\.(q|k|v|proj)\.", r"attn.c_\1.", ref)
    name = re.sub(r"mlp\.(fc|proj)\.", r"mlp.c_\1.", name)
    return name.replace(".gains", ".gain")


def tiny_track3() -> GPT:
    shape = META["shape"]
    cfg = model_preset("track3", n_layer=shape["n_layer"], n_embd=shape["dim"], n_head=shape["dim"] // 128,
                       vocab_size=shape["vocab"], max_seq_len=shape["seq"])
    model = GPT(cfg)  # fp32: the bf16 embedding is bf16 only in a bf16 run
    torch.manual_seed(META["init_seed"])
    model.reset_parameters()
    return model


def streams() -> tuple[torch.Tensor, torch.Tensor]:
    """The golden script's train and val token streams."""
    g = torch.Generator()
    train = torch.randint(0, META["data_vocab"], (META["train_tokens"],), generator=g.manual_seed(META["train_seed"]))
    val = torch.randint(0, META["data_vocab"], (2 * META["val_tokens"] + 1,), generator=g.manual_seed(META["val_seed"]))
    return train, val


def first_batch() -> tuple[torch.Tensor, torch.Tensor]:
    rows, seq = META["shape"]["rows"], META["shape"]["seq"]
    buf = streams()[0][: rows * seq + 1]
    return buf[:-1].view(rows, seq), buf[1:].view(rows, seq)


def test_parameters_correspond_one_to_one():
    model = tiny_track3()
    assert sorted(our_name(n) for n in GOLDEN["init"]) == sorted(n for n, _ in model.named_parameters())
    assert [n for n, _ in model._track3_order()] == [our_name(n) for n in GOLDEN["init"]]  # the reference's order


def test_init_draws_the_reference_numbers():
    params = dict(tiny_track3().named_parameters())
    for ref, want in GOLDEN["init"].items():
        p = params[our_name(ref)].detach().double().flatten()
        got = {"norm": p.norm().item(), "sum": p.sum().item(), "first": p[:2].tolist(), "last": p[-2:].tolist()}
        assert got["first"] == pytest.approx(want["first"], rel=1e-6, abs=1e-12), ref
        assert got["last"] == pytest.approx(want["last"], rel=1e-6, abs=1e-12), ref
        assert got["norm"] == pytest.approx(want["norm"], rel=1e-9, abs=1e-12), ref
        assert got["sum"] == pytest.approx(want["sum"], rel=1e-9, abs=1e-9 * max(want["norm"], 1.0)), ref


def test_loss_and_every_gradient_match_the_reference():
    model = tiny_track3()
    params = dict(model.named_parameters())
    with torch.no_grad():  # the golden script's perturbation: parameter i of the reference's order, seed i
        for i, ref in enumerate(GOLDEN["init"]):
            p = params[our_name(ref)]
            p.add_(META["perturb_std"] * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    x, y = first_batch()
    loss = model(x, y)
    loss.backward()
    want = GOLDEN["perturbed"]
    assert loss.item() == pytest.approx(want["loss"], rel=RTOL)
    for i, (ref, grad) in enumerate(want["grads"].items()):
        g = params[our_name(ref)].grad.double()
        r = torch.randn(g.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        assert g.norm().item() == pytest.approx(grad["norm"], rel=RTOL), ref
        assert abs((g * r).sum().item() - grad["probe"]) <= RTOL * grad["norm"] * r.norm().item(), ref


def test_the_reference_loss_is_a_sum_at_uniform_init():
    """At init the head is zero: every logit is 0 and the summed loss is rows·seq·ln(V), here and there."""
    model = tiny_track3()
    x, y = first_batch()
    expected = x.numel() * torch.log(torch.tensor(float(META["shape"]["vocab"]), dtype=torch.float64)).item()
    assert model(x, y).item() == pytest.approx(expected, rel=1e-6)
    assert GOLDEN["steps"][0]["loss"] == pytest.approx(expected, rel=1e-6)
