"""OPTIMIZERS: name -> builder(cfg: OptimConfig, groups: dict[str, list[Parameter]]) -> torch.optim.Optimizer.

A new optimizer is one file with a `@register_optimizer("name")` builder, imported in optim/__init__.py;
`--optimizer name` then selects it.
"""

from typing import Callable

OPTIMIZERS: dict[str, Callable] = {}


def register_optimizer(name: str):
    def decorator(builder: Callable) -> Callable:
        if name in OPTIMIZERS:
            raise ValueError(f"an optimizer named {name!r} is already registered")
        OPTIMIZERS[name] = builder
        return builder

    return decorator


def get_optimizer(name: str) -> Callable:
    if name not in OPTIMIZERS:
        raise KeyError(f"unknown optimizer {name!r}; registered: {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name]
