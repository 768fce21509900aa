"""Checkpoints that survive being killed at any moment, and everything needed to resume a run exactly.

A checkpoint is written to a temporary file in the same directory, flushed to disk, then renamed over the
old one (os.replace is atomic on POSIX): a kill during the save leaves the previous checkpoint intact.
"""

import os
import random
import tempfile

import numpy as np
import torch


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj, path: str):
    """torch.save(obj) to `path` so that readers only ever see the old or the complete new file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: str) -> dict:
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}: nothing to resume (run without --resume to start)")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a foreign or damaged file: name it rather than fail deep inside pickle
        raise RuntimeError(f"checkpoint {path} could not be read ({type(e).__name__}: {e})") from e
