"""GPT: shapes, causality, every architecture switch, document masking and the presets' parameter counts."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from model.config import GPTConfig, model_preset
from model.gpt import GPT, Rotary, rope_frequencies

V = 50304


def tiny(**overrides) -> GPT:
    return GPT(model_preset("tiny", **overrides))


def test_forward_backward_shapes():
    model = tiny()
    idx = torch.randint(0, V, (2, 17))
    logits = model(idx)
    assert logits.shape == (2, 17, V) and logits.dtype == torch.float32
    loss = model(idx, torch.randint(0, V, (2, 17)))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name


def test_zero_initialised_head_starts_at_uniform_loss():
    model = tiny()
    idx = torch.randint(0, V, (2, 9))
    assert model(idx, idx).item() == pytest.approx(torch.log(torch.tensor(float(V))).item(), rel=1e-6)


def _randomise(model):
    # Zero-initialised projections and head would make every position's output identical: perturb them.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("overrides", [{}, {"doc_masking": True}, {"window": 4}, {"rotary": False}],
                         ids=["speedrun", "doc_masking", "window", "learned_pos"])
def test_future_tokens_never_change_past_logits(overrides):
    model = _randomise(tiny(**overrides)).eval()
    idx = torch.randint(0, V, (1, 24))
    changed = idx.clone()
    changed[:, 13:] = torch.randint(0, V, (1, 11))
    a, b = model(idx), model(changed)
    assert torch.equal(a[:, :13], b[:, :13])
    assert not torch.allclose(a[:, 13:], b[:, 13:])


def test_document_masking_isolates_documents():
    model = _randomise(tiny(doc_masking=True)).eval()
    eot = model.cfg.eot_token
    idx = torch.randint(0, 50000, (1, 20))
    idx[0, 10] = eot  # the second document starts at position 10 (EOT opens a document)
    changed = idx.clone()
    changed[0, :10] = torch.randint(0, 50000, (10,))  # rewrite the first document only
    a, b = model(idx), model(changed)
    assert torch.allclose(a[:, 10:], b[:, 10:], atol=1e-6)
    assert not torch.allclose(a[:, :10], b[:, :10])


def test_window_limits_context():
    model = _randomise(tiny(window=3, value_embeds=False, unet_skips=False, n_layer=1)).eval()
    idx = torch.randint(0, V, (1, 12))
    changed = idx.clone()
    changed[0, 0] = (idx[0, 0] + 1) % V
    a, b = model(idx), model(changed)
    # One layer, window 3: position t sees t-2..t, so position 0 influences only positions 0..2.
    assert torch.equal(a[:, 3:], b[:, 3:])
    assert not torch.allclose(a[:, :3], b[:, :3])


SWITCHES = {
    "rotary": lambda m: m.wpe is not None,
    "value_embeds": lambda m: len(m.value_embeds) == 0,
    "unet_skips": lambda m: m.skip_weights is None,
    "rmsnorm": lambda m: m.norm_f.ln is not None,
    "qk_norm": lambda m: True,
    "relu2": lambda m: m.blocks[0].mlp.relu2 is None,
    "zero_init_proj": lambda m: m.blocks[0].attn.c_proj.weight.abs().sum() > 0,
}


@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_each_switch_changes_the_model(switch):
    base = tiny()
    off = tiny(**{switch: False})
    assert SWITCHES[switch](off), f"{switch}=False did not change the structure"
    torch.manual_seed(1)
    _randomise(base), _randomise(off)
    idx = torch.randint(0, V, (2, 12))
    loss = off(idx, idx)
    loss.backward()
    assert torch.isfinite(loss)
    if switch in ("qk_norm", "relu2"):
        off.load_state_dict(base.state_dict())
        assert not torch.allclose(base(idx), off(idx)), f"{switch}=False gives the same outputs"


def test_tied_head_shares_the_embedding():
    model = tiny(tied_head=True, zero_init_proj=False)
    assert model.lm_head is None and model.head_weight is model.wte.weight


def test_softcap_bounds_logits():
    model = _randomise(tiny(logit_softcap=2.0))
    with torch.no_grad():
        model.lm_head.weight.mul_(1000)
    idx = torch.randint(0, V, (1, 8))
    assert model(idx).abs().max() <= 2.0  # tanh saturates to exactly ±1 in fp32
    uncapped = GPT(dataclasses.replace(model.cfg, logit_softcap=None))
    uncapped.load_state_dict(model.state_dict())
    assert uncapped(idx).abs().max() > 100.0


def test_parameter_counts_of_presets():
    with torch.device("meta"):
        speedrun = GPT(model_preset("gpt2-124m"))
        vanilla = GPT(model_preset("gpt2-vanilla"))
    C, L = 768, 12
    blocks = L * 12 * C * C  # q, k, v, o (4C²) + MLP (8C²)
    # token embedding + untied head + 3 value embeddings, blocks, 6 value-embed gain pairs, 6 skip gains
    assert speedrun.num_params() == 5 * V * C + blocks + 6 * 2 + 6
    # GPT-2 small without linear biases: tied embedding, 1024 positions, 2 LayerNorms a block + final
    assert vanilla.num_params() == V * C + 1024 * C + blocks + L * 4 * C + 2 * C
    assert 123e6 < vanilla.num_params() < 125e6  # "GPT-2 124M"
    assert sum(p.numel() for n, p in speedrun.named_parameters() if n.startswith("blocks.") and p.ndim == 2) == blocks


def test_bad_inputs_raise():
    model = tiny()
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="targets shape"):
        model(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="not divisible"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="unknown model preset"):
        model_preset("nope")
    with pytest.raises(KeyError, match="no implementation"):
        tiny(relu2_mlp_impl="nope")


def test_autocast_bf16_matches_fp32_closely():
    model = _randomise(tiny())
    idx = torch.randint(0, V, (2, 16))
    ref = model(idx, idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(idx, idx)
    assert abs(low.item() - ref.item()) < 0.05 * ref.item()


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        model_preset("tiny").n_layer = 3


@pytest.mark.parametrize("impls", [
    {"relu2_mlp_impl": "triton"}, {"linear_cross_entropy_impl": "triton"}, {"attention_impl": "sdpa"},
    {"relu2_mlp_impl": "triton", "linear_cross_entropy_impl": "triton", "attention_impl": "sdpa"},
], ids=["mlp", "ce", "attn", "all"])
@pytest.mark.parametrize("preset", ["tiny", "track3"])
def test_every_implementation_matches_eager_loss_and_grads(preset, impls):
    """track3: the Triton MLP with both biases, the fused head with its bias, the algebraic softcap and the sum."""
    # A small vocabulary keeps the Triton kernels quick under the interpreter; fp32 end to end.
    size = dict(n_layer=2, n_head=2, n_embd=32, max_seq_len=64) if preset == "track3" else {}
    cfg = model_preset(preset, vocab_size=97, doc_masking=False, attention_impl="eager", **size)
    torch.manual_seed(3)
    eager = _randomise(GPT(cfg))
    fused = GPT(dataclasses.replace(cfg, **impls))
    fused.load_state_dict(eager.state_dict())
    idx, targets = torch.randint(0, 97, (2, 19)), torch.randint(0, 97, (2, 19))
    ref_loss, loss = eager(idx, targets), fused(idx, targets)
    ref_loss.backward()
    loss.backward()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(eager.named_parameters(), fused.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


# --- track 3 (modded-nanogpt's optimization track) -------------------------------------------------------------


TV = 1024  # a small vocabulary keeps these tests fast


def track3(**overrides) -> GPT:
    return GPT(model_preset("track3", n_layer=2, n_embd=256, n_head=2, max_seq_len=64, vocab_size=TV, **overrides))


def test_track3_parameter_count():
    with torch.device("meta"):
        model = GPT(model_preset("track3"))
    C, L = 768, 12
    # embedding, per block q k v proj (4C² + 4C) MLP (8C² + 5C) and two gains, head weight and bias, two gains
    assert model.num_params() == V * C + L * (12 * C * C + 9 * C + 2 * C) + V * C + V + 2 * C
    assert model.wte.weight.dtype == torch.float32  # bf16 only in a bf16 run


def test_track3_init_rule():
    model = track3()
    params = dict(model.named_parameters())
    assert params["wte.weight"].std().item() == pytest.approx(1.0, rel=0.01)
    for name, p in params.items():
        if name.endswith("c_proj.weight") or name.startswith("lm_head.") or name.endswith("bias"):
            assert not p.any(), name
        elif name.endswith("gain"):
            assert torch.equal(p, torch.ones_like(p)), name
        elif name != "wte.weight":
            assert p.std().item() == pytest.approx((0.33 / p.size(1)) ** 0.5, rel=0.02), name
    with pytest.raises(ValueError, match="no rule for .*value_embeds"):
        GPT(model_preset("tiny", init="track3"))


def test_track3_sum_loss_is_tokens_times_mean():
    summed = _randomise(track3())
    mean = GPT(dataclasses.replace(summed.cfg, loss_reduction="mean"))
    mean.load_state_dict(summed.state_dict())
    idx, targets = torch.randint(0, TV, (2, 16)), torch.randint(0, TV, (2, 16))
    assert summed(idx, targets).item() == pytest.approx(32 * mean(idx, targets).item(), rel=1e-6)


def test_algebraic_softcap_bounds_logits_and_matches_its_formula():
    model = _randomise(track3())
    with torch.no_grad():
        model.lm_head.weight.mul_(1000)
    idx = torch.randint(0, TV, (1, 8))
    logits = model(idx)
    assert logits.abs().max() < 15.0
    z = F.linear(model.hidden_states(idx), model.lm_head.weight, model.lm_head.bias).double()
    torch.testing.assert_close(logits.double(), 15 * z / torch.sqrt(z**2 + 225), rtol=1e-5, atol=1e-5)


def test_half_truncated_rope_frequencies():
    freq = rope_frequencies(128, "half_truncated")
    assert freq.shape == (64,) and freq[0] == 1.0 and freq[31].item() == pytest.approx(1 / 1024, rel=1e-6)
    assert not freq[32:].any() and (freq[:31] > freq[1:32]).all()
    rotary = Rotary(128, 16, "half_truncated")
    x = torch.randn(1, 16, 2, 128)
    y = rotary(x)
    # dims with frequency 0 (the last quarter of each half) are not rotated; position 0 is never rotated
    torch.testing.assert_close(y[..., 32:64], x[..., 32:64])
    torch.testing.assert_close(y[..., 96:], x[..., 96:])
    torch.testing.assert_close(y[:, 0], x[:, 0])
    assert not torch.allclose(y[:, 1:, :, :32], x[:, 1:, :, :32])


@pytest.mark.parametrize("switch, value", [("bias", False), ("norm_gains", False), ("rope", "standard"),
                                           ("attn_scale", None), ("softcap_kind", "tanh")])
def test_each_track3_switch_changes_the_model(switch, value):
    torch.manual_seed(2)
    base = _randomise(track3())
    other = track3(**{switch: value})
    other.load_state_dict(base.state_dict(), strict=switch not in ("bias", "norm_gains"))
    idx = torch.randint(0, TV, (2, 12))
    if switch in ("bias", "norm_gains"):
        assert other.num_params() < base.num_params()
    assert not torch.allclose(base(idx), other(idx), atol=1e-4), f"{switch}={value!r} gives the same logits"


def test_bf16_embedding_model_runs_in_bf16_without_autocast():
    cfg = model_preset("track3", n_layer=1, n_embd=128, n_head=1, max_seq_len=32, vocab_size=TV)
    torch.manual_seed(0)
    low = GPT(cfg, dtype=torch.bfloat16)
    assert low.wte.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for n, p in low.named_parameters() if n != "wte.weight")
    _randomise(low)
    ref = GPT(cfg)
    ref.load_state_dict({k: v.float() for k, v in low.state_dict().items()})
    seen = []
    low.blocks[0].attn.c_q.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    idx = torch.randint(0, TV, (2, 16))
    loss, ref_loss = low(idx, idx), ref(idx, idx)
    assert seen == [torch.bfloat16] and loss.dtype == torch.float32
    assert abs(loss.item() - ref_loss.item()) < 0.02 * ref_loss.item()
    loss.backward()
    assert low.wte.weight.grad.dtype == torch.bfloat16 and low.lm_head.weight.grad.dtype == torch.float32


def test_track3_model_under_autocast_keeps_fp32_parameters():
    model = _randomise(track3())
    idx = torch.randint(0, TV, (2, 16))
    ref = model(idx, idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(idx, idx)
    assert abs(low.item() - ref.item()) < 0.02 * ref.item()


@pytest.mark.parametrize("overrides, message", [
    ({"softcap_kind": "sine"}, "softcap_kind='sine'; choose from tanh, algebraic"),
    ({"rope": "half_truncated", "n_embd": 20, "n_head": 2}, "divisible by 4, got 10"),
    ({"loss_reduction": "max"}, "loss_reduction='max'"),
    ({"init": "xavier"}, "init='xavier'"),
])
def test_bad_track3_switches_raise(overrides, message):
    with pytest.raises(ValueError, match=message):
        model_preset("tiny", **overrides)


def test_norm_fp32_is_the_same_in_fp32_and_normalises_bf16_activations_in_fp32():
    """norm_fp32: (rms_norm(x.float()) * gain).type_as(x), stated independently; bitwise the default in fp32."""
    cfg = model_preset("track3", n_layer=2, n_embd=256, n_head=2, vocab_size=TV, max_seq_len=64)
    default, upcast = GPT(cfg), GPT(dataclasses.replace(cfg, norm_fp32=True))
    _randomise(default)
    upcast.load_state_dict(default.state_dict())
    with torch.no_grad():
        for m in (default, upcast):
            m.norm_f.gain.copy_(1 + 0.1 * torch.randn(256, generator=torch.Generator().manual_seed(0)))
    idx = torch.randint(0, TV, (2, 16))
    assert torch.equal(default(idx, idx), upcast(idx, idx))
    x = torch.randn(3, 256).bfloat16()
    gain = upcast.norm_f.gain
    ms = x.double().square().mean(-1, keepdim=True)
    want = (x.double() / (ms + torch.finfo(torch.float32).eps).sqrt() * gain.double()).bfloat16()
    assert (upcast.norm_f(x).double() - want.double()).abs().max() <= 2 ** -8 * want.double().abs().max()
    assert upcast.norm_f(x).dtype == torch.bfloat16
    assert not torch.equal(upcast.norm_f(x), default.norm_f(x))  # bf16 normalisation rounds differently
