"""One dispatch point: OPS[op][impl] -> callable.

Kernel files register their implementation on import ("triton"), kernels/reference.py registers "eager".
The model, optimizers, tests and benches look implementations up here by the names in the config.
"""

from typing import Callable

OPS: dict[str, dict[str, Callable]] = {}


def register(op: str, impl: str, fn: Callable) -> Callable:
    impls = OPS.setdefault(op, {})
    if impl in impls and impls[impl] is not fn:
        raise ValueError(f"{op!r} already has an implementation named {impl!r}")
    impls[impl] = fn
    return fn


def get(op: str, impl: str) -> Callable:
    import kernels  # noqa: F401  (importing the package registers every implementation)

    if op not in OPS:
        raise KeyError(f"unknown op {op!r}; registered ops: {sorted(OPS)}")
    if impl == "auto" and impl not in OPS[op]:  # a per-device choice that the config layer makes
        raise ValueError(f"implementation 'auto' of {op!r} is chosen per device: resolve the config first "
                         "(configs.resolve_auto(cfg, device)), or name one of " + ", ".join(sorted(OPS[op])))
    if impl not in OPS[op]:
        raise KeyError(f"op {op!r} has no implementation {impl!r}; registered: {sorted(OPS[op])}")
    return OPS[op][impl]


def names(op: str) -> list[str]:
    import kernels  # noqa: F401

    return sorted(OPS.get(op, {}))
