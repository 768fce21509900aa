"""The errors of `python -m data.prepare`: one line on stderr through speedrun.cli.run_main."""

from speedrun import cli


class PrepareError(cli.UserError, RuntimeError):
    """A problem with the inputs or a download: one line on stderr, exit status 1 (cli.run_main)."""


class BadOption(PrepareError):
    """An option value out of range: a usage error, exit status 2."""

    exit_code = 2
