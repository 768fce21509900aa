"""Kernels for the speedrun: eager references plus hand-written Triton implementations.

Importing this package registers every implementation in kernels.registry and gives inductor's cache a
directory per CPU capability (kernels.device.separate_inductor_cache); nothing is compiled, printed or launched
at import. Look implementations up with kernels.registry.get(op, impl).

Layout: kernels/<op>.py is an op's Triton implementation (configs, launcher with input checks, custom op,
autograd, registration) and kernels/jit/<op>.py its @triton.jit device code; kernels/reference.py holds every
op's eager version; kernels/linear_cross_entropy_chunked.py is the CPU's implementation of linear_cross_entropy.
Shared by them: device.py (what the machine can do; public), checks.py (input checks), custom_ops.py (the
torch.library namespace and autocast), tiles.py (launch configurations), jit/matmul.py (device-side building
blocks). Design notes and measurements: docs/kernels/<op>.md.

The Triton kernels and the FlashAttention backends run as torch.library custom ops, torch.ops.speedrun.*
(relu2_mlp, relu2_mlp_backward, linear_cross_entropy, linear_cross_entropy_chunked, newton_schulz, gram, gram_out,
flash_attention, flash_attention_backward): each has a fake implementation (shapes, for torch.compile and
FakeTensorMode) and, where differentiable, an autograd formula, so torch.compile keeps them whole in its graph.
The model ops' registry entries cast inputs to the autocast dtype under torch.autocast, so callers do not cast by
hand.
"""

# reference registers the "eager" implementations; each kernel module registers its own.
from kernels import (  # noqa: F401
    attention,
    attention_select,
    gram,
    linear_cross_entropy,
    linear_cross_entropy_chunked,
    newton_schulz,
    reference,
    registry,
    relu2_mlp,
)
