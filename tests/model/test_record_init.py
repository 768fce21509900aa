"""The track-3 record's init edits as GPTConfig options, on top of init="torch" (tests/model/test_init.py):
init_fc_depth_scale and init_gain_split with its head-balanced antithetic pairs. The golden test
(tests/optim/test_record_golden.py) pins their numbers to the reference's bit for bit; here each edit is checked
against its definition on fresh seeds."""

import pytest
import torch
import torch.nn as nn

from model.config import model_preset
from model.gpt import GPT
from speedrun.cli import ConfigError


def model(**overrides) -> GPT:
    base = dict(n_layer=4, n_embd=256, n_head=2, vocab_size=512, max_seq_len=32, init="torch")
    return GPT(model_preset("track3", **{**base, **overrides}))


def test_the_record_zeroes_output_projections_and_head_with_their_biases():
    m = model(zero_init_proj_bias=True)
    zero = [n for n, p in m.named_parameters() if not p.any()]
    assert sorted(zero) == sorted([f"blocks.{i}.{k}.{w}" for i in range(4) for k in ("attn.c_proj", "mlp.c_proj")
                                   for w in ("weight", "bias")] + ["lm_head.weight", "lm_head.bias"])


def test_fc_depth_scale():
    torch.manual_seed(3)
    plain = model()
    torch.manual_seed(3)
    scaled = model(init_fc_depth_scale=0.3)
    for l in range(4):
        ratio = scaled.blocks[l].mlp.c_fc.weight / plain.blocks[l].mlp.c_fc.weight
        assert torch.allclose(ratio, torch.full_like(ratio, 1 - 0.3 * l / 3), rtol=1e-6), l
        assert torch.equal(scaled.blocks[l].attn.c_q.weight, plain.blocks[l].attn.c_q.weight)


def signs(m: GPT, l: int) -> torch.Tensor:
    g1, g2 = m.blocks[l].norm1.gain, m.blocks[l].norm2.gain
    assert torch.equal(g1 + g2, torch.full_like(g1, 2.0))
    s = (1 - g1) / m.cfg.init_gain_split
    assert torch.equal(s.abs(), torch.ones_like(s))
    return s


@pytest.mark.parametrize("seed,balance", [(0, 0.5), (7, 0.0), (7, 1.0)])
def test_gain_split_pairs(seed, balance):
    """Blocks before init_gain_pairs_from: ±1 from the global generator; from it, in pairs: per head the first
    block's + count is the drawn count pulled toward 64 by the balance (rounded half to even), the second's the
    opposite count."""
    m = model(n_layer=5, init_gain_split=0.125, init_gain_pairs_from=1, init_gain_head_balance=balance,
              init_gain_seed=seed)
    for first in (1, 3):
        a, b = signs(m, first), signs(m, first + 1)
        gen = torch.Generator().manual_seed(0xA9170000 + seed * 1009 + first * 9176)
        for h in range(2):
            drawn = int((torch.randint(0, 2, (128,), generator=gen, dtype=torch.int64) * 2 - 1 > 0).sum())
            torch.randperm(128, generator=gen), torch.randperm(128, generator=gen)
            plus = round(64 + balance * (drawn - 64))
            assert int((a[h * 128:(h + 1) * 128] > 0).sum()) == plus
            assert int((b[h * 128:(h + 1) * 128] > 0).sum()) == 128 - plus


def test_gain_split_seed_defaults_to_the_global_seed():
    torch.manual_seed(5)
    implicit = model(init_gain_split=0.125, init_gain_pairs_from=2)
    torch.manual_seed(5)
    explicit = model(init_gain_split=0.125, init_gain_pairs_from=2, init_gain_seed=5)
    for l in range(4):
        assert torch.equal(signs(implicit, l), signs(explicit, l))
    torch.manual_seed(6)
    other = model(init_gain_split=0.125, init_gain_pairs_from=2)
    assert not torch.equal(signs(other, 2), signs(implicit, 2))


@pytest.mark.parametrize("option", [dict(init_fc_depth_scale=1.5), dict(init_gain_split=-0.1),
                                    dict(init_gain_head_balance=2.0), dict(init_gain_pairs_from=-1),
                                    dict(init_gain_split=0.1, norm_gains=False), dict(init="xavier")])
def test_bad_init_options(option):
    with pytest.raises(ConfigError, match=next(iter(option)) if "norm_gains" not in option else "norm gains"):
        model(**option)
