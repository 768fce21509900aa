"""Files that readers (and a crash at any instant) see whole or not at all.

    with atomic_write("runs/x/checkpoint.pt") as f:
        torch.save(state, f)

The content goes to a temporary file beside the target, is flushed to disk and renamed over the target
(os.replace is atomic on POSIX); then the directory is flushed, so the rename itself survives a power loss.
On any error the temporary file is removed and the old target is left as it was. Used for checkpoints, token
shards, downloaded shards and the GPU report; imports nothing heavy (bench.gpu_report's parent imports no torch).

`made_dirs(path)` creates an output folder for a block and, when the block fails, removes the folders it created
that are empty again: a failing command leaves no empty folders behind.
"""

import contextlib
import os
import uuid
from pathlib import Path


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb"):
    """Open a temporary file for writing ("wb" or "w") that replaces `path` when the block ends without error."""
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"  # open(), unlike mkstemp, honours the umask
    try:
        with open(tmp, mode.replace("w", "x")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def missing_dirs(path) -> list[Path]:
    """The folders of `path` (itself included) that do not exist yet, outermost first."""
    path, missing = Path(path).absolute(), []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing[::-1]


def remove_empty(dirs):
    """Remove each folder of `dirs` that is empty, innermost first (a folder holding anything stays)."""
    for d in reversed(list(dirs)):
        try:
            os.rmdir(d)
        except OSError:
            pass


@contextlib.contextmanager
def made_dirs(path):
    """Create the folder `path` with its missing parents; when the block raises, remove those of them that are
    empty again, so that a failing command leaves no empty folders behind."""
    created = missing_dirs(path)
    Path(path).mkdir(parents=True, exist_ok=True)
    try:
        yield Path(path)
    except BaseException:
        remove_empty(created)
        raise
