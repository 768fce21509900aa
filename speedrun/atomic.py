"""Files that readers (and a crash at any instant) see whole or not at all.

    with atomic_write("runs/x/checkpoint.pt") as f:
        torch.save(state, f)

The content goes to a temporary file beside the target, is flushed to disk and renamed over the target
(os.replace is atomic on POSIX); then the directory is flushed, so the rename itself survives a power loss.
On any error the temporary file is removed and the old target is left as it was. Used for checkpoints, token
shards, downloaded shards and the GPU report; imports nothing heavy (bench.gpu_report's parent imports no torch).
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
