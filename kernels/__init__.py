"""Kernels for the speedrun: eager references plus hand-written Triton implementations.

Importing this package registers every implementation in kernels.registry; nothing is compiled,
printed or launched at import. Look implementations up with kernels.registry.get(op, impl).
"""

# reference registers the "eager" implementations; each kernel module registers its own.
from kernels import (  # noqa: F401
    attention,
    attention_select,
    fused_linear_cross_entropy,
    newton_schulz,
    reference,
    registry,
    relu2_mlp,
)
