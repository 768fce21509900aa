"""How the command-line entry points end: a user's mistake in one line, a bug with its traceback.

    if __name__ == "__main__":
        cli.run_main(main)

A problem the user can fix (a bad option, missing or damaged data, an unreadable checkpoint, a run directory in
use, a GPU too small) is raised as a `UserError` (or a subclass: each module keeps its own exception types, which
also derive from the builtin type callers already catch, e.g. `class ShardError(UserError, ValueError)`).
`run_main` prints it as one line on stderr,

    error: <what is wrong and what to do>

and exits with the error's exit_code: 2 for a usage or configuration error (`UsageError`), 1 otherwise. Anything
else is a bug and keeps its traceback. `--debug` on the command line (or SPEEDRUN_DEBUG=1) shows the traceback of
a user error too. A run stopped by a signal ends with an `Interrupted`, printed without the "error:" prefix.
"""

import argparse
import json
import os
import signal
import sys


class CleanExit(Exception):
    """An ending that is not a bug: printed as `prefix + message` on one line, exit status exit_code."""

    exit_code = 1
    prefix = ""


class UserError(CleanExit):
    """Something the user can fix; the message says what is wrong and what to do."""

    prefix = "error: "


class UsageError(UserError):
    """A bad command line or configuration value."""

    exit_code = 2


class ConfigError(UsageError, ValueError):
    """A configuration value that is out of range, unknown or inconsistent (a ValueError for existing callers)."""


class Interrupted(CleanExit):
    """A run stopped by SIGINT or SIGTERM after writing a checkpoint; exits 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class ArgumentParser(argparse.ArgumentParser):
    """argparse without abbreviations (`--seed` is not `--seeds`), whose errors are UsageErrors: one line, exit 2
    (argparse itself prints the usage first)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def read_json(path, *, what: str, hint: str):
    """The JSON in the file at `path`; a missing, unreadable or non-JSON file is a UserError naming `what` it was
    meant to be and, as `hint`, which file to pass instead."""
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path} is not JSON ({e}); {hint}") from e


def flag(argv, name: str) -> tuple[bool, list[str]]:
    """A boolean command-line flag given as `name`, `name=True` or `name=False` (the last one counts): its value
    and argv without it. Any other value is a UsageError."""
    value, rest = False, []
    for arg in argv:
        if arg != name and not arg.startswith(name + "="):
            rest.append(arg)
            continue
        text = arg.partition("=")[2] if arg != name else "True"
        if text not in ("True", "true", "False", "false"):
            raise UsageError(f"{arg}: {name} takes no value, or True/False")
        value = text in ("True", "true")
    return value, rest


def debug_requested(argv) -> bool:
    return "--debug" in argv or os.environ.get("SPEEDRUN_DEBUG", "") not in ("", "0")


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def run_main(main, argv=None):
    """Call main(argv) (argv without --debug; default sys.argv[1:]) and turn a CleanExit into its one line and exit
    status. Returns main's result when it returns; raises SystemExit otherwise."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    try:
        return main(argv)
    except CleanExit as e:
        if debug:
            raise
        sys.stdout.flush()
        print(e.prefix + one_line(e), file=sys.stderr)
        if isinstance(e, Interrupted):
            ignore_stop_signals()
        raise SystemExit(e.exit_code) from None
    except KeyboardInterrupt:
        if debug:
            raise
        sys.stdout.flush()
        print("interrupted", file=sys.stderr)
        ignore_stop_signals()
        raise SystemExit(130) from None


def ignore_stop_signals():
    """A stopped run has printed its last line and is exiting: further Ctrl-Cs are ignored. Python's shutdown puts
    the default action back on signals with a Python handler, so a repeat arriving while the interpreter unwinds
    would otherwise kill the process and replace its exit status (130/143) with the signal's."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
