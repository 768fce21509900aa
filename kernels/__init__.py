"""Kernels for the speedrun: eager references plus hand-written Triton implementations.

Importing this package registers every implementation in kernels.registry; nothing is compiled,
printed or launched at import. Look implementations up with kernels.registry.get(op, impl).
"""

from kernels import reference, registry  # noqa: F401

# Triton kernel modules register themselves ("triton") on import. Each is imported here once it exists.
