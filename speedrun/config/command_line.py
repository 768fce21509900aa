"""The command line: `--key=value` overrides of a preset (or of a run's own config.json), parts chosen by name, and
`--help` built from the fields' docstrings.

    cfg = resolve(["--preset=track3-cpu", "--optimizer=track3-normuon", "--optim.lr=0.03"])
    cfg = resolve(["--config=runs/NAME/config.json", "--max_steps=200"])     # replay a run, overrides on top

Order: the preset (or --config's file), then the recipe (--optimizer RECIPE, or the preset's own; its step counts
scaled to the preset's budget), then the options given, which win. `--optimizer NAME` takes a recipe, an optimizer
(starting from its own defaults) or FILE.py:NAME; `--schedule`, `--wrapper` and `--readout NAME` pick those parts
(`none` for no wrapper or readout), and `--optim.FIELD`, `--schedule.FIELD`, ... set their fields. A part keeps the
preset's values only when the same part stays chosen. `--attention NAME` is short for --model.attention_impl.
"""

import ast
import dataclasses

from optim import registry
from speedrun.cli import ConfigError, read_json
from speedrun.config.presets import PRESETS
from speedrun.config.schema import TrainConfig

ALIASES = {"attention": "model.attention_impl"}
# the options that pick a part by name -> the TrainConfig field holding its hyper-parameters, and its kind
PARTS = {"optimizer": ("optim", "optimizer"), "schedule": ("schedule", "schedule"), "wrapper": ("wrapper", "wrapper"),
         "readout": ("readout", "readout")}
OPTIONAL_PARTS = ("wrapper", "readout")  # "none" = no part
# Recipes state their step counts for track 3's 3250-step baseline; a preset with another budget scales every
# Steps field a recipe sets by its max_steps / 3250.
RECIPE_REFERENCE_STEPS = 3250


# --- values --------------------------------------------------------------------------------------------


def _parse_value(text, current, name: str):
    """Command-line text (a Python literal, or the text itself for a str field) or a recipe's typed value,
    checked against the field's current value's type."""
    if not isinstance(text, str):
        value = text
    elif isinstance(current, str):
        return text
    else:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            if isinstance(current, bool) and text.lower() in ("true", "false"):
                return text.lower() == "true"
            raise ConfigError(f"--{name}={text}: not a Python literal") from None
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"--{name}={text}: expected True/False")
        return value
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if current is not None and not isinstance(value, type(current)):
        if isinstance(current, tuple) and isinstance(value, list):
            return tuple(value)
        raise ConfigError(f"--{name}={text}: expected {type(current).__name__}, got {type(value).__name__}")
    return value


def _apply(obj, overrides: dict, prefix: str = ""):
    """Apply {field: text or nested dict} with one dataclasses.replace per dataclass, so that fields validated
    together (n_embd and n_head) change together."""
    names = {f.name for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in overrides.items():
        if key not in names:
            raise ConfigError(f"unknown option --{prefix}{key}; {_describe(obj)} has: {', '.join(sorted(names))}")
        current = getattr(obj, key)
        if isinstance(value, dict):
            if current is None and prefix == "" and key in OPTIONAL_PARTS:
                raise ConfigError(f"--{key}.{next(iter(value))}: no {key} is chosen; pick one with --{key} NAME "
                                  f"(one of: {', '.join(sorted(registry.entries(key)))})")
            if not dataclasses.is_dataclass(current):
                raise ConfigError(f"--{prefix}{key}: {key} has no sub-options")
            changes[key] = _apply(current, value, f"{prefix}{key}.")
        else:
            changes[key] = _parse_value(value, current, prefix + key)
    return dataclasses.replace(obj, **changes)


def _describe(obj) -> str:
    try:
        entry = registry.entry_of(obj)
        return f"{entry.kind} {entry.name!r} ({type(obj).__name__})"
    except ConfigError:
        return type(obj).__name__


def _nest(overrides: dict, key: str, value):
    """Set overrides[a][b][c] = value for key "a.b.c"."""
    *parents, leaf = key.split(".")
    node = overrides
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--{key}: {part} is given both a value and sub-options")
    if isinstance(node.get(leaf), dict):
        raise ConfigError(f"--{key}: {leaf} is given both a value and sub-options")
    node[leaf] = value


def _merge(base: dict, top: dict):
    """Nested dict update: top's values win; a value against sub-options is an error."""
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        elif key in base and isinstance(value, dict) != isinstance(base[key], dict):
            raise ConfigError(f"--{key} is given both a value and sub-options")
        else:
            base[key] = value


# --- parts and recipes -----------------------------------------------------------------------------------


def _part_class(option: str, name: str):
    """The hyper-parameter class of the part `name` picked with --`option` (None for `none`)."""
    kind = PARTS[option][1]
    if option in OPTIONAL_PARTS and name in ("none", "None", ""):
        return None
    return registry.lookup(kind, name).config


def recipe_overrides(name: str, preset: str) -> dict:
    """The recipe's dotted overrides {key: value} (its optimizer under "optimizer"), every Steps field it sets
    scaled to the preset's budget (max_steps / 3250)."""
    entry = registry.lookup("recipe", name)
    overrides = dict(entry.factory())
    if "optimizer" not in overrides:
        raise ConfigError(f"recipe {name!r} ({entry.source}) names no optimizer (its \"optimizer\" key)")
    scale = PRESETS[preset]().max_steps / RECIPE_REFERENCE_STEPS
    classes = {option: _part_class(option, str(overrides[option])) for option in PARTS if option in overrides}
    for key, value in list(overrides.items()):
        if key in PARTS or key not in _step_keys(key, classes):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"recipe {name!r}: {key} counts steps, got {value!r}")
        overrides[key] = round(value * scale) if isinstance(value, int) else value * scale
    return overrides


def _step_keys(key: str, classes: dict) -> set[str]:
    """{key} if the dotted `key` names a field annotated Steps (in TrainConfig, or in the part `classes` picks or
    the preset's default part), else {}."""
    parts = key.split(".")
    cls = TrainConfig
    for i, part in enumerate(parts[:-1]):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            return set()
        option = next((o for o, (field, _) in PARTS.items() if field == part), None) if i == 0 else None
        if option is not None and option in classes:
            cls = classes[option]
        else:
            default = fields[part].default_factory() if fields[part].default_factory is not dataclasses.MISSING \
                else fields[part].default
            cls = type(default)
        if cls is None or not dataclasses.is_dataclass(cls):
            return set()
    return {key} if parts[-1] in registry.step_fields(cls) else set()


# --- resolving a command line ----------------------------------------------------------------------------


def _pairs(argv: list[str]) -> list[tuple[str, str]]:
    pairs, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; options look like --key=value")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
        else:
            if i + 1 >= len(argv):
                raise ConfigError(f"{arg} needs a value")
            key, value = arg[2:], argv[i + 1]
            i += 1
        pairs.append((ALIASES.get(key, key), value))
        i += 1
    return pairs


def resolve(argv: list[str]) -> TrainConfig:
    """The TrainConfig of a command line (see the module docstring)."""
    pairs = _pairs(argv)
    given = dict(pairs)
    if "config" in given and "preset" in given:
        raise ConfigError("--config replays a run's config.json, which names its preset: drop --preset")
    if "config" in given:
        base = from_dict(read_json(given["config"], what="run config",
                                   hint="pass a run's config.json (runs/NAME/config.json)"))
        recipe = ""  # the file holds the recipe's values already
    else:
        preset = given.get("preset", "cpu")
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        base = PRESETS[preset]()
        recipe = base.recipe
    user, choices = {}, {}
    for key, value in pairs:
        if key in ("preset", "config"):
            continue
        if key == "recipe":
            registry.lookup("recipe", value)
            recipe, choices = value, {k: v for k, v in choices.items() if k != "optimizer"}
        elif key == "optimizer":
            entry = registry.lookup("optimizer", value, also=("recipe",))
            if entry.kind == "recipe":
                recipe = entry.ref
                choices.pop("optimizer", None)
            else:
                recipe, choices["optimizer"] = "", entry.ref  # a plain optimizer replaces the preset's recipe
        elif key in PARTS:
            choices[key] = value
        else:
            _nest(user, key, value)
    overrides, picked = {}, {}
    if recipe:
        for key, value in recipe_overrides(recipe, base.preset).items():
            if key in PARTS:
                picked[key] = value
            else:
                _nest(overrides, key, value)
    for option, name in choices.items():  # the options given win over the recipe's
        if option in picked and picked[option] != name:
            overrides.pop(PARTS[option][0], None)  # another part: the recipe's values for its part do not apply
        picked[option] = name
    _merge(overrides, user)
    cfg = dataclasses.replace(base, recipe=recipe if recipe else ("" if "optimizer" in choices else base.recipe))
    for option, name in picked.items():
        field, _ = PARTS[option]
        cls = _part_class(option, str(name))
        current = getattr(cfg, field)
        if cls is None:
            cfg = dataclasses.replace(cfg, **{field: None})
        elif type(current) is not cls:  # a part keeps the preset's values only when it stays the same part
            cfg = dataclasses.replace(cfg, **{field: cls()})
    cfg = _apply(cfg, overrides)
    check_names(cfg)
    return cfg


def check_names(cfg: TrainConfig):
    """Every implementation name in the model exists (the ranges are checked by the dataclasses themselves, the
    optimizer's names by its own config; the kernels' names live in the registries, which import torch)."""
    from kernels import attention_select
    from kernels import registry as kernels

    def choose(option: str, value, allowed):
        if value not in allowed:
            raise ConfigError(f"--{option}={value!r}; choose from {', '.join(map(str, allowed))}")

    m = cfg.model
    choose("model.attention_impl", m.attention_impl, (*attention_select.BACKENDS, "auto"))
    choose("model.relu2_mlp_impl", m.relu2_mlp_impl, (*kernels.names("relu2_mlp"), "auto"))
    choose("model.linear_cross_entropy_impl", m.linear_cross_entropy_impl, (*kernels.names("linear_cross_entropy"),
                                                                            "auto"))


# --- a run's configuration as JSON ---------------------------------------------------------------------


def to_dict(cfg) -> dict:
    """The config as JSON-ready nested dicts; each part's dict starts with its "name" (FILE.py:NAME for a part from
    a file of your own), which from_dict reads back."""
    out = {}
    if not isinstance(cfg, TrainConfig) and _is_part(cfg):
        out["name"] = registry.entry_of(cfg).ref
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out[f.name] = to_dict(value) if dataclasses.is_dataclass(value) else _jsonable(value)
    return out


def _is_part(obj) -> bool:
    try:
        registry.entry_of(obj)
        return True
    except ConfigError:
        return False


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def from_dict(data: dict, cls=TrainConfig):
    """The config `to_dict` wrote (a run's config.json): every field checked as the command line checks it."""
    if not isinstance(data, dict):
        raise ConfigError(f"a {cls.__name__} must be a JSON object, got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names) - {"name"})
    if unknown:
        raise ConfigError(f"{cls.__name__} has no field {', '.join(unknown)} (a config.json of another version?)")
    kwargs = {}
    for key, value in data.items():
        if key == "name":
            continue
        f = names[key]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        part = next((o for o, (field, _) in PARTS.items() if field == key), None) if cls is TrainConfig else None
        if part is not None:
            if value is None:
                kwargs[key] = None
                continue
            if not isinstance(value, dict) or "name" not in value:
                raise ConfigError(f"{key} in the config must be an object naming its part (\"name\")")
            kwargs[key] = from_dict(value, _part_class(part, value["name"]))
        elif dataclasses.is_dataclass(default):
            kwargs[key] = from_dict(value, type(default)) if value is not None else None
        elif isinstance(default, tuple) and isinstance(value, list):
            kwargs[key] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        elif isinstance(value, str) and default is not None and not isinstance(default, str):
            raise ConfigError(f"{key}={value!r} in the config: expected {type(default).__name__}, got str")
        else:
            kwargs[key] = _parse_value(value, default, key) if default is not None else value
    return cls(**kwargs)


# --- --help ----------------------------------------------------------------------------------------------


def help_text(argv: list[str] = ()) -> str:
    """`python train.py [options] --help`: the presets and parts there are, then every option of the config these
    options resolve to (its preset, optimizer, schedule, ...), dotted, with its value there and its docstring."""
    cfg = resolve(list(argv))
    lines = [
        "usage: python train.py [--key=value | --key value ...] [--help] [--debug]",
        "",
        "Options override the preset's values (--preset=NAME, or --config=runs/NAME/config.json to replay a run);",
        "values are Python literals, text for str options. --optimizer NAME takes a recipe, an optimizer or",
        "FILE.py:NAME (a file of your own); --schedule, --wrapper, --readout NAME pick those parts. With --help,",
        "the options below are those of the config the other options give. --debug (or SPEEDRUN_DEBUG=1) shows",
        "tracebacks.",
        "",
        f"Presets: {', '.join(PRESETS)}.",
    ]
    for kind in registry.KINDS:
        lines.append(f"{kind.capitalize()}s:")
        for name, entry in sorted(registry.entries(kind).items()):
            lines.append(f"  {name:<24} {_first_sentence(entry.summary)}")
    lines += ["", f"Options and their values here (preset {cfg.preset}"
              + (f", recipe {cfg.recipe}" if cfg.recipe else "") + "):"]

    def walk(obj, prefix: str):
        docs = registry.field_docs(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            doc = docs.get(f.name, "").replace("\n", " ")
            if dataclasses.is_dataclass(value):
                kind = next((k for o, (field, k) in PARTS.items() if field == f.name), None) if not prefix else None
                chosen = f" (--{'optimizer' if kind == 'optimizer' else f.name} {registry.entry_of(value).name})" \
                    if kind else ""
                lines.append(f"  --{prefix}{f.name}.*{chosen}  {doc}")
                walk(value, f"{prefix}{f.name}.")
                continue
            entry = f"  --{prefix}{f.name}={value if isinstance(value, str) else repr(value)}"
            lines.append(f"{entry:<46} {doc}" if len(entry) < 46 else f"{entry}\n{'':<46} {doc}")

    walk(cfg, "")
    return "\n".join(lines)


def _first_sentence(text: str) -> str:
    head = text.split(". ")[0]
    return head if head.endswith(".") else head + "."
