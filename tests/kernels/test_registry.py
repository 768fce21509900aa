"""kernels.registry: every op has an eager reference and a Triton kernel; unknown names fail clearly."""

import pytest

from kernels import registry

TRITON_OPS = ["newton_schulz", "linear_cross_entropy", "relu2_mlp", "gram"]


@pytest.mark.parametrize("op", TRITON_OPS)
def test_every_kernel_op_has_eager_and_triton(op):
    assert {"eager", "triton"} <= set(registry.names(op))


def test_attention_backends_are_registered():
    assert {"eager", "sdpa", "flex", "fa2", "fa3", "auto"} <= set(registry.names("attention"))


def test_unknown_names_raise_and_list_the_choices():
    with pytest.raises(KeyError, match=r"unknown op 'nope'.*relu2_mlp"):
        registry.get("nope", "eager")
    with pytest.raises(KeyError, match=r"no implementation 'cuda'.*'eager'"):
        registry.get("relu2_mlp", "cuda")


def test_double_registration_is_refused():
    with pytest.raises(ValueError, match="already has"):
        registry.register("relu2_mlp", "eager", lambda *a: None)
