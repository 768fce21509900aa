"""Checkpoints that survive being killed at any moment, everything needed to resume a run exactly, and the lock
that keeps two runs out of one run directory.

A checkpoint is written to a temporary file in the same directory, flushed to disk, then renamed over the
old one (os.replace is atomic on POSIX): a kill during the save leaves the previous checkpoint intact, and so does
a KeyboardInterrupt raised inside the save by a signal handler (the temporary file is removed and that interrupt,
not torch's failure to finish the half-written file, is what propagates).

`Checkpointer` is a run's checkpoint file and its rollback point: the last checkpoint written or resumed from
or, before the first one, the state at step 0 kept as a host copy (`host_copy`). `check` compares a checkpoint's
config with the run's: every option outside the given resumable set must be equal.

The lock is a file `lock` in the run directory, created with O_CREAT|O_EXCL (one creator wins) and holding
"<pid> <host>". A second run into the directory is refused while that process lives; a lock whose process is
gone (a run killed with SIGKILL) is taken over with a note. Releasing it removes the folders acquiring it created
when they are empty again (a run that failed before writing anything leaves no empty folder behind).
"""

import os
import random
import socket
import sys

import numpy as np
import torch

from speedrun.atomic import atomic_write, missing_dirs, remove_empty
from speedrun.cli import UsageError, UserError


class CheckpointMismatch(UsageError, ValueError):
    """A checkpoint written by another configuration or for other data than the run resuming it."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be read."""


class NoCheckpoint(UserError, FileNotFoundError):
    """--resume without a checkpoint to resume."""


class RunDirInUse(UserError, RuntimeError):
    """Another live process holds the run directory's lock."""


class RunDirUnwritable(UserError, OSError):
    """The run directory cannot be created or written."""


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
    try:
        with atomic_write(path) as f:
            torch.save(obj, f)
    except Exception as e:
        # An interrupt raised inside torch.save (a signal handler) leaves its zip writer half-way, and closing it
        # fails again ("unexpected pos"); the interrupt is what happened.
        if isinstance(e.__context__, KeyboardInterrupt):
            raise e.__context__ from None
        raise


def load(path: str) -> dict:
    if not os.path.exists(path):
        raise NoCheckpoint(f"no checkpoint at {path}: nothing to resume (run without --resume to start)")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a foreign or damaged file: name it rather than fail deep inside pickle
        raise CheckpointError(f"checkpoint {path} could not be read ({type(e).__name__}: {e}); delete it to "
                              "start over, or resume another run") from e


def host_copy(value):
    """A copy of a (nested dict/list of) state in host memory: tensors detached and copied to the CPU."""
    if torch.is_tensor(value):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: host_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [host_copy(v) for v in value]
    return value


def differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """'--name: saved in the checkpoint, current now' for each config field (dotted) whose value differs."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"--{prefix}{key}: {a!r} in the checkpoint, {b!r} now")
    return out


class Checkpointer:
    """A run's checkpoint.pt and its rollback point.

    step: the step of the last checkpoint written or resumed from (None: none yet), the rollback point once set;
    initial: the state at step 0 in host memory, the rollback point until the first checkpoint.
    Every rank keeps the rollback point; only the rank given states to save writes (rank 0)."""

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, "checkpoint.pt")
        self.step = None
        self.initial = None

    def save(self, step: int, state: dict | None):
        """Write `state` (None: another rank writes) as the checkpoint of `step`, which becomes the rollback point
        as soon as the file is in place, also where an interrupt arrives right after the rename."""
        if state is not None:
            before = _inode(self.path)
            try:
                save_atomic(state, self.path)
            finally:
                if _inode(self.path) != before:
                    self.step, self.initial = step, None
        self.step, self.initial = step, None

    def read(self) -> dict:
        return load(self.path)

    def check(self, state: dict, config: dict, resumable) -> dict:
        """Raise CheckpointMismatch unless `state`'s config equals `config` in every option outside `resumable`."""
        saved, current = dict(state["config"]), dict(config)
        for name in resumable:
            saved.pop(name, None), current.pop(name, None)
        diff = differences(saved, current)
        if diff:
            raise CheckpointMismatch(
                f"{self.path} was written by a different config, and these options change the "
                f"trajectory: {'; '.join(diff)}. Resume with the checkpoint's values on the same kind of machine "
                "(implementations chosen by 'auto' are part of the config), or pick another --run_name")
        return state

    def resumed(self, step: int):
        """The run continues from the checkpoint of `step`: the rollback point."""
        self.step, self.initial = step, None

    def keep_initial(self, state: dict):
        self.initial = state

    def rollback_state(self) -> dict | None:
        """The last good state: the last checkpoint (read again), else the initial state, else None."""
        if self.step is not None:
            return self.read()
        return self.initial


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


class RunLock:
    """The lock of one run directory, held from acquire() to release(). Creates the directory."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, "lock")
        self.held = False
        self.created = []  # the folders acquire() made

    def acquire(self):
        try:
            self.created = missing_dirs(self.run_dir)
            os.makedirs(self.run_dir, exist_ok=True)
        except OSError as e:
            raise RunDirUnwritable(f"cannot create the run directory {self.run_dir} ({e.strerror}); choose another "
                                   "--out_dir") from e
        me = f"{os.getpid()} {socket.gethostname()}"
        for _ in range(3):  # a stale lock is removed and creation retried; another process may win that race
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            except OSError as e:
                raise RunDirUnwritable(f"cannot write in the run directory {self.run_dir} ({e.strerror}); choose "
                                       "another --out_dir") from e
            with os.fdopen(fd, "w") as f:
                f.write(me + "\n")
            self.held = True
            return self
        raise RunDirInUse(f"{self.run_dir} is being locked by other processes (its lock file {self.path} keeps "
                          "reappearing); wait for them, or pick another --run_name")

    def _take_over_if_stale(self):
        try:
            with open(self.path) as f:
                text = f.read().split()
        except FileNotFoundError:
            return  # released meanwhile
        pid = int(text[0]) if text and text[0].isdigit() else None
        host = text[1] if len(text) > 1 else None
        if pid is not None and host != socket.gethostname():
            raise RunDirInUse(f"{self.run_dir} is in use by PID {pid} on host {host} (its lock file {self.path}); "
                              "wait for that run to end, or delete the lock file if that run is gone")
        if pid is not None and _pid_alive(pid):
            raise RunDirInUse(f"{self.run_dir} is in use by PID {pid} (its lock file {self.path}); wait for that run "
                              "to end, stop it, or pick another --run_name")
        print(f"note: taking over the stale lock {self.path} of PID {pid}, which is no longer running",
              file=sys.stderr)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def release(self):
        if self.held:
            self.held = False
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            remove_empty(self.created)
