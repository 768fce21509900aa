"""modded-nanogpt's triton_kernels.py for the tests, written at test time from a local git mirror of
KellerJordan/modded-nanogpt (never part of this repository); None where the machine has no mirror (CI)."""

import os
import subprocess
from pathlib import Path

from bench import modded

MIRROR = "/work/.mirror/KellerJordan+modded-nanogpt/repo"  # a bare clone, where the development machines keep one
COMMIT = "f411b3d"
MISSING = (f"no modded-nanogpt mirror at {MIRROR} on this machine: the peers' tests need its triton_kernels.py "
           f"(commit {COMMIT})")


def materialise(folder: Path) -> Path | None:
    """folder, now holding triton_kernels.py at COMMIT; None without the mirror."""
    if not os.path.isdir(MIRROR):
        return None
    source = subprocess.run(["git", "-C", MIRROR, "show", f"{COMMIT}:{modded.FILE}"], capture_output=True,
                            check=True).stdout
    (folder / modded.FILE).write_bytes(source)
    return folder
