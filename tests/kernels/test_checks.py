"""kernels.checks: output-buffer and workspace checks, with the messages a caller sees."""

import dataclasses

import pytest
import torch

from kernels.checks import check_out, check_workspace


def test_check_out_allocates_or_checks():
    new = check_out(None, "out", (3, 4), dtype=torch.bfloat16, device="cpu")
    assert new.shape == (3, 4) and new.dtype == torch.bfloat16
    given = torch.empty(3, 4)
    assert check_out(given, "out", (3, 4), dtype=torch.float32, device="cpu") is given
    with pytest.raises(ValueError, match=r"out must have shape \(3, 4\) on cpu, got \(4, 3\)"):
        check_out(torch.empty(4, 3), "out", (3, 4), dtype=torch.float32, device="cpu")
    with pytest.raises(TypeError, match="out has dtype torch.float16"):
        check_out(torch.empty(3, 4, dtype=torch.float16), "out", (3, 4), dtype=torch.float32, device="cpu")
    strided = torch.empty(4, 3).T
    with pytest.raises(ValueError, match="out must be contiguous"):
        check_out(strided, "out", (3, 4), dtype=torch.float32, device="cpu")
    assert check_out(strided, "out", (3, 4), dtype=torch.float32, device="cpu", contiguous=False) is strided


def test_check_workspace_names_the_buffer_and_its_builder():
    @dataclasses.dataclass
    class Workspace:
        a: torch.Tensor
        b: torch.Tensor | None

    shapes = {"a": (2, 3), "b": (4,)}
    check_workspace(Workspace(torch.empty(2, 3), torch.empty(4)), shapes, dtype=torch.float32, device="cpu",
                    builder="make_ws")
    for ws, got in ((Workspace(torch.empty(2, 3), None), "None"),
                    (Workspace(torch.empty(2, 3), torch.empty(5)), r"\(5,\) torch.float32 on cpu"),
                    (Workspace(torch.empty(2, 3), torch.empty(4, dtype=torch.float64)), r"\(4,\) torch.float64")):
        with pytest.raises(ValueError, match=rf"workspace.b must be a contiguous \(4,\) torch.float32 tensor on cpu, "
                                             rf"got {got}.*build it with make_ws\(\)"):
            check_workspace(ws, shapes, dtype=torch.float32, device="cpu", builder="make_ws")
