"""Kernels for the speedrun: eager references plus hand-written Triton implementations.

Importing this package registers every implementation in kernels.registry and gives inductor's cache a
directory per CPU capability (kernels._common.separate_inductor_cache); nothing is compiled, printed or launched
at import. Look implementations up with kernels.registry.get(op, impl).

The Triton kernels and the FlashAttention backends run as torch.library custom ops, torch.ops.speedrun.*
(relu2_mlp, relu2_mlp_backward, linear_cross_entropy, newton_schulz, flash_attention, flash_attention_backward):
each has a fake implementation (shapes, for torch.compile and FakeTensorMode) and, where differentiable, an
autograd formula, so torch.compile keeps them whole in its graph. Their registry entries cast inputs to the
autocast dtype under torch.autocast, so callers do not cast by hand.
"""

# reference registers the "eager" implementations; each kernel module registers its own.
from kernels import (  # noqa: F401
    attention,
    attention_select,
    chunked_cross_entropy,
    fused_linear_cross_entropy,
    newton_schulz,
    reference,
    registry,
    relu2_mlp,
)
