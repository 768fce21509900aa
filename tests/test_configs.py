"""configs.resolve: presets, --key=value and dotted overrides, type checks and clear errors."""

import pytest

from configs import PRESETS, resolve


def test_presets_resolve():
    for name in PRESETS:
        cfg = resolve([f"--preset={name}"])
        assert cfg.preset == name
    assert resolve([]).preset == "cpu"
    assert resolve(["--preset", "gpt2-124m"]).model.n_embd == 768


def test_overrides_of_every_form():
    cfg = resolve(["--preset=tiny", "--max_steps=7", "--optim.lr=0.02", "--optimizer", "muon",
                   "--model.window=16", "--attention=sdpa", "--compile=True", "--optim.betas=(0.8, 0.9)"])
    assert cfg.max_steps == 7 and cfg.optim.lr == 0.02 and cfg.optim.name == "muon"
    assert cfg.model.window == 16 and cfg.model.attn_impl == "sdpa" and cfg.compile is True
    assert cfg.optim.betas == (0.8, 0.9)
    assert resolve(["--optim.lr=1"]).optim.lr == 1.0  # int literal accepted for a float field


@pytest.mark.parametrize("argv, message", [
    (["--nope=1"], "unknown option --nope"),
    (["--optim.nope=1"], "unknown option --optim.nope"),
    (["--max_steps=ten"], "not a Python literal"),
    (["--max_steps=1.5"], "expected int"),
    (["--compile=1"], "expected True/False"),
    (["--preset=huge"], "unknown preset"),
    (["--max_steps"], "needs a value"),
    (["max_steps=3"], "unexpected argument"),
    (["--seed.x=1"], "has no sub-options"),
])
def test_bad_overrides_raise(argv, message):
    with pytest.raises(ValueError, match=message):
        resolve(argv)


def test_fields_validated_together_change_together():
    cfg = resolve(["--preset=gpt2-124m", "--model.n_embd=64", "--model.n_head=2"])
    assert cfg.model.head_dim == 32


def test_each_optimizer_starts_from_its_own_lr():
    assert resolve(["--optimizer=muon"]).optim.lr == 0.02
    assert resolve(["--optimizer=muon", "--optim.lr=0.05"]).optim.lr == 0.05
    assert resolve([]).optim.lr == 3e-3
