"""What every torch.library custom op of the project shares: its namespace, autocast at the entry points, and the
stand-in for an output that is not computed.

Every Triton kernel is registered with torch.library under OP_NAMESPACE (torch.ops.speedrun.<op>): an opaque op
that torch.compile keeps in its graph (no graph break, and Dynamo never traces the Triton launches, which it
cannot do under the interpreter), with a fake implementation for shapes and, where differentiable, an autograd
formula.
"""

import torch

OP_NAMESPACE = "speedrun"


def op_name(name: str) -> str:
    """The qualified name torch.library.custom_op takes: "speedrun::<name>"."""
    return f"{OP_NAMESPACE}::{name}"


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype torch.autocast gives matmuls on `device` right now; None outside autocast. (torch.compile traces
    both calls, so an entry point that asks this compiles to the right cast for the region it runs in.)"""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


def autocast_inputs(*tensors):
    """The tensors as autocast would hand them to a matmul: under autocast on their device, floating-point tensors
    other than float64 (autocast leaves those alone) cast to the autocast dtype; else unchanged. None passes.

    The entry points of the custom ops call this, so a model calls them under autocast without casting by hand:
    the dispatcher's autocast key falls through to an op with no autocast rule, with its inputs as they are.
    """
    first = next(t for t in tensors if t is not None)
    dtype = autocast_dtype(first.device)
    if dtype is None:
        return tensors
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t
                 for t in tensors)


def absent(like: torch.Tensor) -> torch.Tensor:
    """The stand-in for an output an op did not compute (a gradient no input needs): an empty tensor, since a
    custom op's schema has no optional returns."""
    return like.new_empty(0)
