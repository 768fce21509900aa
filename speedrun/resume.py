"""What a resumed run may change, and where the changes come from.

A resumed run continues the checkpoint's config. Two things can change it:

- the command line: an option it gives (by name, or through --optimizer or --recipe; --preset is an option, the
  values it brings are not) whose value differs from the checkpoint's. Options it does not give keep the
  checkpoint's values, so `--resume=True` with just the run's name continues the run as it was, and a command
  without the original options does not reset them to their defaults. (Called without the command line, every
  option of the config counts as given.)
- config.json, as edited since it was written: it is compared with the checkpoint's config, and every option whose
  value differs is an edit (`out_dir`, `run_name` and `resume` say where the file is and are not compared). An
  option both given and edited must have one value.

Each change is then sorted:

- RESUMABLE_OPTIONS are applied: they decide what is logged, validated and checkpointed and where, how fast the
  run goes, whether it stops at the target, or how results are judged afterwards, never the sequence of weights.
- The schedule options (max_steps, schedule_steps and every --schedule.* field, the schedule's name included) are
  applied when the schedule of every step the checkpoint has taken keeps its values (each role's lr and the
  momentum, compared value for value) and max_steps is not below the checkpoint's step. The schedule of step s
  depends on them through the horizon (schedule_steps, or max_steps when schedule_steps is 0), so more steps
  leave the trajectory so far unchanged only where the horizon is separate from max_steps (schedule_steps set)
  or every step taken is still in the warm-up or constant phase of both schedules. The continuation is then
  exactly what a fresh run with the new values does from that step.
- The record options (the val set, the target, the readout: which weights validation reads) are refused: the
  weights would not change, but the val losses and the step the target was reached at, already in the log and the
  checkpoint, would no longer measure the same thing.
- Everything else shapes the trajectory (model, optimizer, wrapper, data order, batch, seed, device, precision,
  implementations) and is refused.

A refusal names each option with its value in the checkpoint and the new one, and where the new one comes from;
the applied changes are returned for the trainer to print. Nothing here writes a file.
"""

import json
import os
import shlex
import sys

from speedrun.checkpoint import CheckpointMismatch
from speedrun.cli import ConfigError
from speedrun.config import from_dict, to_dict

RESUMABLE_OPTIONS = frozenset({
    "resume", "checkpoint_every", "val_every", "val_every_late", "val_late_frac", "log_every", "threads", "out_dir",
    "run_name", "data_dir", "memory_check", "dist_timeout_s", "dist_bucket_mb", "stop_at_target", "target_sigma",
    "target_z", "loss_per_100_steps"})
SCHEDULE_OPTIONS = frozenset({"max_steps", "schedule_steps", "schedule"})  # "schedule": its every field
RECORD_OPTIONS = frozenset({"val_tokens", "val_pattern", "target_val_loss", "readout"})  # "readout": every field
WHERE_OPTIONS = frozenset({"out_dir", "run_name", "resume"})  # config.json's location: not compared
ALIASES = {"attention": "model.attention_impl"}


def _in(name: str, options: frozenset) -> bool:
    """Whether the dotted option `name` is one of `options` or a field of one (schedule.momentum.start)."""
    return name in options or name.split(".", 1)[0] in options


def plain(config: dict) -> dict:
    """The config as JSON holds it (tuples become lists), so that a checkpoint's and a file's compare equal."""
    return json.loads(json.dumps(config))


def flat(config: dict, prefix: str = "") -> dict:
    """{dotted name: value} of a nested config dict."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def nested(values: dict) -> dict:
    """flat's inverse: {"a.b": 1} -> {"a": {"b": 1}}."""
    out = {}
    for name, value in values.items():
        *parents, leaf = name.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def given_options(argv: list[str], cfg, resolve) -> set[str]:
    """The dotted options a command line sets: those it names (a part picked by name, --schedule NAME: all its
    fields), and those its --optimizer, --recipe or --config sets (where they differ from the preset's values; the
    preset's own values are not given). resolve(argv) parses one; cfg is what it gave."""
    names = {ALIASES.get(key, key) for key in (a[2:].split("=", 1)[0] for a in argv if a.startswith("--"))}
    ours = flat(plain(to_dict(cfg)))
    preset = flat(plain(to_dict(resolve([f"--preset={cfg.preset}"]))))
    named = {name for name in ours if name in names or name.split(".", 1)[0] in names}
    return named | {name for name, value in ours.items() if preset.get(name) != value}


def _same_json_type(new, old) -> bool:
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(new, bool) and isinstance(old, bool)
    if isinstance(old, float):
        return isinstance(new, (int, float))
    return type(new) is type(old)


def _edits(saved: dict, edited: dict, where: str) -> dict:
    """{name: value} of the options config.json changed from the checkpoint's config."""
    unknown = sorted(set(edited) - set(saved))
    if unknown:
        raise ConfigError(f"{where} has options the run does not: {', '.join(unknown)}; undo that edit")
    edits = {}
    for name, value in edited.items():
        if name in WHERE_OPTIONS or value == saved[name]:
            continue
        if not _same_json_type(value, saved[name]):
            raise ConfigError(f"{where}: {name} is {value!r} ({type(value).__name__}), where the checkpoint has "
                              f"{saved[name]!r} ({type(saved[name]).__name__}); undo that edit")
        edits[name] = value
    return edits


def _listed(changes) -> str:
    return "; ".join(f"--{name}: {old!r} in the checkpoint, {new!r} {'now' if src == 'now' else 'in ' + src}"
                     for name, old, new, src in changes)


def resumed_config(cfg, saved_config: dict, edited_config: dict | None, *, given: set[str] | None, step: int,
                   schedule, checkpoint_path: str, config_path: str):
    """The config a run resumed at `step` continues with, and the changes applied (["--name: old -> new (from)"]).

    cfg: the command line's config (every "auto" resolved for this device); given: the options the command line
    sets (None: all); saved_config: the checkpoint's config; edited_config: config.json as it is now (None:
    absent). schedule(step, cfg) is the trainer's schedule, compared over the steps already taken. Raises
    CheckpointMismatch (a usage error) for a change that is refused."""
    saved, current = flat(plain(saved_config)), flat(plain(to_dict(cfg)))
    edits = _edits(saved, flat(plain(edited_config)), config_path) if edited_config is not None else {}
    changes = {}  # name -> (the checkpoint's value, the new value, where the new value comes from)
    for name in sorted(set(saved) | set(current)):
        # the device is this machine's, given or not
        if saved.get(name) != current.get(name) and (given is None or name in given or name == "device"):
            changes[name] = (saved.get(name), current.get(name), "now")
    for name, value in edits.items():
        if name in changes and changes[name][1] != value:
            raise CheckpointMismatch(f"--{name} is {changes[name][1]!r} on the command line but {value!r} in the "
                                     f"edited {config_path} ({saved[name]!r} in the checkpoint); make them agree")
        changes[name] = (saved[name], value, config_path)
    listed = [(name, *change) for name, change in sorted(changes.items())]
    trajectory = [c for c in listed if not any(_in(c[0], o) for o in (RESUMABLE_OPTIONS, SCHEDULE_OPTIONS,
                                                                        RECORD_OPTIONS))]
    records = [c for c in listed if _in(c[0], RECORD_OPTIONS)]
    if trajectory or records:
        parts = [f"these options change the trajectory: {_listed(trajectory)}"] if trajectory else []
        parts += [f"these change what the run's records measure: {_listed(records)}"] if records else []
        edited = any(src != "now" for *_, src in trajectory + records)
        raise CheckpointMismatch(
            f"{checkpoint_path} was written by a different config, and {'; and '.join(parts)}. Resume with the "
            "checkpoint's values on the same kind of machine (implementations chosen by 'auto' are part of the "
            f"config){', undo the edits in ' + config_path if edited else ''}, or pick another --run_name")
    values = dict(saved)
    values.update({name: new for name, _, new, _ in listed})
    try:
        new = from_dict(nested(values))
    except ConfigError as e:
        raise ConfigError(f"{e} (the run resumed from {checkpoint_path}, with the options changed there)") from e
    moved = [c for c in listed if _in(c[0], SCHEDULE_OPTIONS)]
    if moved:
        old = from_dict(nested({**values, **{name: before for name, before, _, _ in moved}}))
        _check_schedule(new, old, step=step, schedule=schedule, what=_listed(moved))
    applied = [f"--{name}: {old!r} -> {value!r} ({'command line' if src == 'now' else src})"
               for name, old, value, src in listed if name != "resume"]
    return new, applied


def _check_schedule(new, old, *, step: int, schedule, what: str):
    """schedule(s, cfg) -> {quantity: value} must be the same under `old` and `new` for every step s taken."""
    if new.max_steps < step:
        raise CheckpointMismatch(f"{what}: --max_steps={new.max_steps} is below the checkpoint's step {step}")
    for s in range(step):
        before, after = schedule(s, old), schedule(s, new)
        changed = [k for k in before if before[k] != after[k]]
        if changed:
            k = changed[0]
            raise CheckpointMismatch(
                f"{what}: this changes the schedule of step {s}, which the checkpoint has already taken ({k} "
                f"{before[k]:.6g} then, {after[k]:.6g} now), so the run would not be the one these options describe. "
                "A run can take more steps when its schedule's horizon is separate (--schedule_steps) or while every "
                "step it took keeps its schedule; otherwise start a new run with another --run_name")


def carried_options(command_line, cfg) -> list[str]:
    """`--name=value` for each option a resumed run may change whose value in `cfg` (what runs) differs from the
    command line's config (both resolved): the changes taken from an edited config.json, which the command that
    resumes the run again must carry so as not to undo them."""
    given, running = flat(plain(to_dict(command_line))), flat(plain(to_dict(cfg)))
    changed = [name for name in sorted(running) if (_in(name, RESUMABLE_OPTIONS) or _in(name, SCHEDULE_OPTIONS))
               and name != "resume" and running[name] != given.get(name)]
    # a part is picked by name (--schedule NAME), its fields set after it
    return [f"--{name[:-5]}={running[name]}" for name in changed if name.endswith(".name")] + \
        [f"--{name}={running[name]}" for name in changed if not name.endswith(".name")]


def resume_command(argv: list[str], script: str, carried=(), *, world_size: int = 1) -> str:
    """The command line that resumes a run: its own (`script` and `argv`), without --resume and --overwrite, with
    the `carried` options and --resume=True; under torchrun on one node the torchrun command, on several the
    arguments every node's command takes."""
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--resume", "--overwrite"):
            skip = arg == "--resume"
        elif not arg.startswith(("--resume=", "--overwrite=")):
            args.append(arg)
    here = os.path.relpath(os.path.abspath(script))
    script = [here if not here.startswith("..") else os.path.abspath(script), *args, *carried, "--resume=True"]
    if world_size == 1:
        return shlex.join([sys.executable, *script])
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    if local == world_size:
        return shlex.join(["torchrun", "--standalone", f"--nproc_per_node={local}", *script])
    return "the same torchrun command on every node, with: " + shlex.join(script)
