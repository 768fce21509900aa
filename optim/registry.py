"""The one registry of the optimizer side: optimizers, their named recipes, lr schedules, wrappers and readouts.

Each is a *part*: a name bound to a frozen dataclass of documented hyper-parameters (a docstring under every
field; that is what `train.py --help` prints) and the code that uses them:

    @dataclass(frozen=True)
    class MuonConfig:
        lr: float = 0.02
        "Learning rate of the hidden matrices."

    @optimizer("muon", MuonConfig)
    def build(cfg: MuonConfig, groups: dict[str, list[Parameter]]) -> torch.optim.Optimizer: ...

    @recipe("track3-muon")
    def track3_muon() -> dict:
        '''Track-3 result #36: 3250 steps, mean val loss 3.2787 (n=10). ...'''
        return {"optimizer": "muon", "optim.lr": 0.025, "max_steps": 3250}

    @schedule("power_cool")            # on a Schedule dataclass (optim.schedules)
    @wrapper("ema_nesterov", EmaNesterovConfig)     # wrap(cfg, optimizer, model) -> a Wrapper (optim.wrappers)
    @readout("tail_ema", TailEmaConfig)             # make(cfg, model) -> a Readout (optim.readouts)

Every module of the optim package is imported on the first lookup, so a new file registers itself: adding one
changes no other file, and removing one breaks nothing else. A file outside the repository joins the same way
with `--optimizer PATH.py:NAME` (load_file): its parts are registered under their names, and a run records
`PATH.py:NAME` so that resuming or replaying it loads the file again.

A recipe returns dotted overrides of the run's configuration (`"optim.lr"`, `"schedule"`, `"schedule.power"`,
`"max_steps"`, `"model.init_std_mlp_fc"`, ...), `"optimizer"` naming its optimizer. Step counts are stated for track
3's 3250-step baseline: every field annotated `Steps` that a recipe sets is scaled to the preset's budget.
"""

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import os
import pkgutil
import sys
import textwrap
import typing
from typing import Annotated, Callable

from speedrun.cli import ConfigError

KINDS = ("optimizer", "recipe", "schedule", "wrapper", "readout")

# A field that counts optimizer steps: a recipe's value for it is scaled to the preset's budget.
STEPS = "steps"
Steps = Annotated[int, STEPS]


@dataclasses.dataclass(frozen=True)
class Entry:
    """One registered part. `factory`: the optimizer's build(cfg, groups), the recipe's function, the schedule's
    class, the wrapper's wrap(cfg, optimizer, model), the readout's make(cfg, model). `source`: its file."""

    kind: str
    name: str
    config: type | None
    factory: Callable
    source: str
    external: bool = False

    @property
    def ref(self) -> str:
        """How a run names it: the name, or PATH.py:NAME for a part from a file outside the repository."""
        return f"{self.source}:{self.name}" if self.external else self.name

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.factory if self.kind == "recipe" or self.config is None else self.config) or ""
        return doc.split("\n\n")[0].replace("\n", " ")


_ENTRIES: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
_loading_external: list[str] = []  # the file load_file is executing, while it runs
_discovered = False


def _register(kind: str, name: str, config, factory) -> Entry:
    if not name or ":" in name or "=" in name:
        raise ValueError(f"{kind} name {name!r}: a name must be non-empty, without ':' or '='")
    source = _loading_external[-1] if _loading_external else inspect.getsourcefile(factory) or "?"
    entry = Entry(kind, name, config, factory, os.path.abspath(source), external=bool(_loading_external))
    old = _ENTRIES[kind].get(name)
    if old is not None and old.source != entry.source:
        raise ValueError(f"the {kind} name {name!r} is already registered by {old.source}")
    if config is not None:
        if not (dataclasses.is_dataclass(config) and config.__dataclass_params__.frozen):
            raise TypeError(f"{kind} {name!r}: its hyper-parameters must be a frozen dataclass, got {config!r}")
        if "name" in {f.name for f in dataclasses.fields(config)}:
            raise TypeError(f"{kind} {name!r}: 'name' is reserved (the part's registered name)")
        config.name = name  # a class attribute, not a field: cfg.optim.name is the optimizer's name
    _ENTRIES[kind][name] = entry
    return entry


_ITSELF = object()  # a schedule is registered by its class, which is also its hyper-parameters


def _registering(kind: str, name: str, config=None):
    """A decorator that registers what it decorates as `kind` `name` and gives it back unchanged; `config` is its
    hyper-parameter class (None: it has none; _ITSELF: the decorated class is its own)."""
    def decorator(factory):
        _register(kind, name, factory if config is _ITSELF else config, factory)
        return factory
    return decorator


def optimizer(name: str, config: type):
    """Register build(cfg: config, groups) -> torch.optim.Optimizer as optimizer `name` (optim.roles: groups)."""
    return _registering("optimizer", name, config)


def recipe(name: str):
    """Register a function returning dotted overrides (with "optimizer") as recipe `name`; its docstring gives
    the published result it reproduces."""
    return _registering("recipe", name)


def schedule(name: str):
    """Register a Schedule dataclass (optim.schedules) as lr schedule `name`."""
    return _registering("schedule", name, _ITSELF)


def wrapper(name: str, config: type):
    """Register wrap(cfg: config, optimizer, model) -> optim.wrappers.Wrapper as wrapper `name`."""
    return _registering("wrapper", name, config)


def readout(name: str, config: type):
    """Register make(cfg: config, model) -> optim.readouts.Readout as readout `name`."""
    return _registering("readout", name, config)


def discover():
    """Import every module of the optim package once (each registers its parts)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module("optim")
    for module in sorted(m.name for m in pkgutil.iter_modules(package.__path__)):
        importlib.import_module(f"optim.{module}")


def entries(kind: str) -> dict[str, Entry]:
    """name -> Entry of every registered part of `kind` (the package's and any loaded file's)."""
    discover()
    return dict(_ENTRIES[kind])


def load_file(path: str):
    """Execute an optimizer file from outside the package (once per file); its decorators register its parts."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such file (--optimizer FILE.py:NAME takes the path of a Python file)")
    module_name = "speedrun_external_" + "".join(c if c.isalnum() else "_" for c in path)
    if module_name in sys.modules:
        return sys.modules[module_name]
    discover()  # the package's parts first: a clash is then reported against the file
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    _loading_external.append(path)
    try:
        spec.loader.exec_module(module)
    except ValueError as e:  # a name clash
        del sys.modules[module_name]
        raise ConfigError(f"{path}: {e}") from e
    finally:
        _loading_external.pop()
    return module


def unload_file(path: str):
    """Forget the parts a file loaded with load_file registered (a changed file can then be loaded again)."""
    path = os.path.abspath(os.path.expanduser(path))
    for table in _ENTRIES.values():
        for name in [n for n, e in table.items() if e.external and e.source == path]:
            del table[name]
    sys.modules.pop("speedrun_external_" + "".join(c if c.isalnum() else "_" for c in path), None)


def lookup(kind: str, ref: str, *, also: tuple[str, ...] = ()) -> Entry:
    """The part `ref` names: NAME, or PATH.py:NAME (the file is loaded first). `also`: other kinds the name may
    belong to (--optimizer takes an optimizer or a recipe)."""
    kinds = (kind, *also)
    if ":" in ref and ref.rsplit(":", 1)[0].endswith(".py"):
        path, name = ref.rsplit(":", 1)
        load_file(path)
        path = os.path.abspath(os.path.expanduser(path))
        for k in kinds:
            entry = _ENTRIES[k].get(name)
            if entry is not None and entry.source == path:
                return entry
        defined = [f"{e.name} ({k})" for k in kinds for e in _ENTRIES[k].values() if e.source == path]
        raise ConfigError(f"{path} defines no {' or '.join(kinds)} named {name!r}; it defines: "
                          f"{', '.join(defined) or 'nothing registered'}")
    for k in kinds:
        entry = entries(k).get(ref)
        if entry is not None:
            return entry
    listing = "; ".join(f"{k}s: {', '.join(sorted(entries(k)))}" for k in kinds)
    raise ConfigError(f"unknown {' or '.join(kinds)} {ref!r}; {listing} (or FILE.py:NAME for one of your own)")


def entry_of(config) -> Entry:
    """The registered part whose hyper-parameter class `config` (an instance or the class) is."""
    cls = config if isinstance(config, type) else type(config)
    discover()
    for kind in KINDS:
        for entry in _ENTRIES[kind].values():
            if entry.config is cls:
                return entry
    raise ConfigError(f"{cls.__name__} is not the hyper-parameter class of a registered part")


# --- fields ------------------------------------------------------------------------------------------


def field_docs(cls) -> dict[str, str]:
    """{field: the docstring under it} for a dataclass and its bases (the string literal right after the field,
    as torchtitan and Sphinx read them). A class without readable source gives {}."""
    docs = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _counts_steps(hint) -> bool:
    if typing.get_origin(hint) is Annotated:
        return STEPS in hint.__metadata__
    return any(_counts_steps(arg) for arg in typing.get_args(hint))  # Optional[Steps], Steps | None


def step_fields(cls) -> set[str]:
    """The fields of dataclass `cls` annotated `Steps` (or a STEPS-marked float, alone or in a union with None)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name for f in dataclasses.fields(cls) if _counts_steps(hints.get(f.name))}


def require(condition: bool, message: str):
    """A configuration check: ConfigError(message) unless `condition`."""
    if not condition:
        raise ConfigError(message)
