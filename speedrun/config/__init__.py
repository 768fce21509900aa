"""Run configuration, one package:

    schema.py        TrainConfig: every field with the docstring --help prints
    presets.py       the named presets, functions building on each other
    command_line.py  --key=value overrides, parts picked by name, --config replay, --help, config.json in and out
    device.py        what "auto" means on the device a run is on

    cfg = resolve(["--preset=track3-cpu", "--optimizer=track3-normuon"])
"""

from speedrun.config.command_line import from_dict, help_text, recipe_overrides, resolve, to_dict  # noqa: F401
from speedrun.config.device import device_type, resolve_auto  # noqa: F401
from speedrun.config.presets import GPU_AUTO, GPU_LOG_EVERY, PRESETS  # noqa: F401
from speedrun.config.schema import COMPILE_MODES, DEVICES, DTYPES, TrainConfig  # noqa: F401
