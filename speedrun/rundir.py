"""The run directory, runs/<name>/: what an earlier run left there, and what a new run may do with it.

A run writes config.json at its start, log.jsonl as it goes, summary.json when it finishes and checkpoint.pt
(see train.py for when). A new run into a directory holding any of them is refused before anything is built or
written, in one line naming the choices: `--resume=True` to continue the earlier run (when it has a checkpoint), a
new `--run_name`, or `--overwrite` to replace it, whose files are then removed only once the new run has finished
its warm-up and writes its own. So a finished or interrupted run is never overwritten without being asked.
JSON files are written atomically (speedrun.atomic): a kill leaves the old file or the new one, never a part.
"""

import json
import os

from speedrun.atomic import atomic_write
from speedrun.cli import UserError, read_json

RUN_FILES = ("config.json", "log.jsonl", "summary.json", "checkpoint.pt")


class RunDirTaken(UserError, FileExistsError):
    """The run directory holds an earlier run, and neither --resume nor --overwrite was given."""


def earlier_run_state(run_dir: str) -> str | None:
    """What an earlier run left in run_dir: "finished" (summary.json), "interrupted" (a checkpoint, no summary),
    "unfinished" (a config or log only: a run killed or failed before any checkpoint), or None (nothing)."""
    present = {name for name in RUN_FILES if os.path.exists(os.path.join(run_dir, name))}
    if not present:
        return None
    if "summary.json" in present:
        return "finished"
    return "interrupted" if "checkpoint.pt" in present else "unfinished"


def earlier_run(run_dir: str) -> str | None:
    """What an earlier run left in run_dir, in words ("a finished run", ...), or None when it left nothing."""
    state = earlier_run_state(run_dir)
    checkpoint = os.path.exists(os.path.join(run_dir, "checkpoint.pt"))
    return {None: None, "finished": "a finished run" + (" with its checkpoint" if checkpoint else ""),
            "interrupted": "an interrupted run with its checkpoint",
            "unfinished": "an unfinished run without a checkpoint (killed or failed before one was written)"}[state]


def refuse_earlier_run(run_dir: str):
    """Raise RunDirTaken when run_dir holds an earlier run, naming what it holds and the choices."""
    what = earlier_run(run_dir)
    if what is None:
        return
    resumable = os.path.exists(os.path.join(run_dir, "checkpoint.pt"))
    continue_it = ("continue it with --resume=True" if resumable
                   else "it cannot be continued with --resume=True (no checkpoint)")
    raise RunDirTaken(f"{run_dir} already holds {what}; {continue_it}, start another run beside it with a new "
                      "--run_name, or replace it with --overwrite")


def remove_earlier_run(run_dir: str):
    """--overwrite: delete the files of the earlier run (never anything else in the directory)."""
    for name in RUN_FILES:
        try:
            os.unlink(os.path.join(run_dir, name))
        except FileNotFoundError:
            pass


def read_config(path: str) -> dict | None:
    """config.json as it is now (None: absent); a file that is not a JSON object is a UserError."""
    if not os.path.exists(path):
        return None
    config = read_json(path, what="the run's config", hint="undo the edit")
    if not isinstance(config, dict):
        raise UserError(f"{path} holds no config (a JSON object); undo the edit")
    return config


def write_config(path: str, config: dict, *, earlier: dict | None = None) -> list[str]:
    """Write config.json, unless `earlier` (the file as read before, on --resume) holds the same config already
    (`out_dir`, `run_name` and `resume` aside). Returns the changes made to `earlier` ("--name: old -> new")."""
    from speedrun.resume import WHERE_OPTIONS, flat, plain

    config = plain(config)
    changed = []
    if earlier is not None:
        before = flat(earlier)
        changed = [f"--{name}: {before.get(name)!r} -> {value!r}" for name, value in flat(config).items()
                   if before.get(name) != value and name not in WHERE_OPTIONS]
        if not changed:
            return []
    write_json(path, config)
    return changed


def write_json(path: str, obj):
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=1)
