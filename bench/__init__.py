"""Benchmarks and reports: kernel cases and their timer, the GPU report, steps to target, training curves."""

import argparse


def command_help(doc: str) -> dict:
    """argparse.ArgumentParser arguments that show a command module's docstring whole: its first paragraph as the
    description, the rest (usage lines, details) as the epilog, line breaks kept."""
    first, _, rest = doc.strip().partition("\n\n")
    return {"description": first, "epilog": rest or None, "formatter_class": argparse.RawDescriptionHelpFormatter}
