"""Export a run of this repository as one self-contained track-3 script, the form modded-nanogpt's optimization
benchmark takes a submission in (records/track_3_optimization: one file that holds all of its code, imports no
optimizer library, and logs its own source before its log).

    python -m bench.export_track3 --optimizer track3-muon --out train_track3_muon.py
    python -m bench.export_track3 --optimizer path/to/my_opt.py:my-recipe --optim.lr=0.03 --out my_run.py --check
    # then, in a modded-nanogpt checkout with the FineWeb shards (python data/cached_fineweb10B.py 20):
    torchrun --standalone --nproc_per_node=8 my_run.py

The options are train.py's for the track3 preset (--optimizer NAME|FILE.py:NAME, --optim.FIELD, --schedule NAME,
--schedule.FIELD, --wrapper NAME, --readout NAME, --model.FIELD, --max_steps, ...), resolved exactly as train.py
resolves them, plus --out FILE (required) and --check (run the written file in a fresh interpreter where this
repository cannot be imported: two steps of a tiny model on the CPU). The data folder defaults to the track's
quickstart location, data/fineweb10B, relative to where the script runs.

What the file holds: our track3 model (model/gpt.py), data loader (data/loader.py: the track's file order, window
and shard-switch rule, per-rank slices, the same global batch on 1, 2, 4 or 8 GPUs by gradient accumulation), the
training loop (bench/track3_script.py: validation cadence, schedule, wrapper, readout, target), the optimizer's
config, builder and everything they use, the schedule, wrapper and readout parts the run names, and their
resolved values written in. It imports torch, numpy and the standard library only (and triton when an
implementation asked for is a Triton kernel). Implementations: "auto" becomes the eager PyTorch ones (attention
F.scaled_dot_product_attention, the eager MLP, loss and Newton-Schulz), so the script runs on any GPU or CPU with
torch alone; ask for a Triton kernel explicitly (--model.relu2_mlp_impl=triton,
--model.linear_cross_entropy_impl=triton, --optim.newton_schulz_impl=triton) to get it inlined with its kernels.
On CUDA the script compiles the model with torch.compile, as the track's reference does.

How the code gets in: bench.flatten follows the names, not a list. It starts from the training loop and the written
settings, follows every name they use through the imports to the statement defining it, keeps that statement and
follows what it uses, to the fixpoint; the kernel implementations come from the registry lookups the model and the
optimizer make while they are built (kernels.registry), written as the registry's table. So a researcher's file
(--optimizer FILE.py:NAME), its imports of optim.muon, kernels.reference or optim.roles, and whatever those use,
come in by themselves, and nothing the run does not reach does.

Design: flat code, not embedded modules. The other way to make one file is to embed each module's source as a string
with a small import hook that serves them to `import`: exact by construction and immune to name clashes, but a
reviewer then reads code inside strings (no highlighting, no line numbers in tracebacks that point at the file) and
every module whole, reached or not. The track's reviewers read the file, so the export writes plain top-level code:
each module's reached definitions under a banner naming its file, in import order, with the comments right above
them. The price is one namespace: repository imports are dropped and `module.name` references become `name`, a
name two modules define gets its module as a prefix (`muon_build`), registration decorators (@optimizer,
@recipe, ...) are dropped, and import-time side effects are dropped unless attached to a kept definition (a custom
op's fake and autograd registrations). The flattener resolves names by Python's scoping rules, so locals are never
touched, and refuses (one line, file and line) what one namespace cannot express: star imports, a module object
used as a value, assignments to another module's attributes.
"""

import dataclasses
import inspect
import math
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

from bench.export_check import check
from speedrun import cli
from speedrun.cli import ConfigError, UserError

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = Path(__file__).with_name("track3_script.py")
TEMPLATE_MODULE = "bench.track3_script"  # its own classes (Run) need no import in the settings
SETTINGS_BEGIN = "# ---- export: settings"
SETTINGS_END = "# ---- export: end ----"
TRACK_DATA_DIR = "data/fineweb10B"
# Implementations that are plain PyTorch: what "auto" becomes, and what runs without a GPU.
EAGER = {"attention_impl": "sdpa", "relu2_mlp_impl": "eager", "linear_cross_entropy_impl": "eager"}
# Attention backends the script can hold: FlashAttention is a library of its own.
EXPORTABLE_ATTENTION = ("sdpa", "eager", "flex")
ALLOWED_IMPORTS = {"torch", "numpy"}


# --- the configuration -----------------------------------------------------------------------------------------


def resolve_config(argv: list[str]):
    """The TrainConfig of the export's options: train.py's resolution for the track3 preset, then the script's
    choices for what "auto" means (the eager implementations, bf16, the track's data folder)."""
    import torch

    from speedrun.config import resolve

    for arg in argv:
        if arg.split("=")[0] in ("--preset", "--config"):
            raise ConfigError(f"{arg.split('=')[0]}: the export is track 3's (the track3 preset); set the fields you "
                              "change with --key=value")
    cfg = resolve(["--preset=track3", *argv])
    if not any(arg.split("=")[0] == "--data_dir" for arg in argv):
        cfg = dataclasses.replace(cfg, data_dir=TRACK_DATA_DIR)
    model = dataclasses.replace(cfg.model, **{k: v for k, v in EAGER.items() if getattr(cfg.model, k) == "auto"})
    if model.attention_impl not in EXPORTABLE_ATTENTION:
        raise ConfigError(f"--model.attention_impl={model.attention_impl}: the script holds "
                          f"{', '.join(EXPORTABLE_ATTENTION)} "
                          "attention (plain PyTorch); FlashAttention would be a library the track does not allow")
    optim = cfg.optim
    if hasattr(optim, "resolve_auto"):  # "auto" as on a device that multiplies bf16 natively and runs eager kernels
        optim = optim.resolve_auto(torch.device("cpu"), native_bf16=True)
    dtype = "bf16" if cfg.dtype == "auto" else cfg.dtype
    return dataclasses.replace(cfg, model=model, optim=optim, dtype=dtype)


SCRIPT_ONLY = {"log_dir"}  # Run fields that are the script's alone; every other one is a TrainConfig field


def run_settings(cfg):
    """The script's Run (bench.track3_script.Run) from the config: every field the TrainConfig field of the same
    name (a field TrainConfig lacks is an error here, not a silent default in the script)."""
    from bench.track3_script import Run

    names = [f.name for f in dataclasses.fields(Run) if f.name not in SCRIPT_ONLY]
    missing = [n for n in names if not hasattr(cfg, n)]
    if missing:
        raise RuntimeError(f"bench.track3_script.Run has fields TrainConfig lacks: {', '.join(missing)}")
    values = {n: getattr(cfg, n) for n in names}
    values["compile"] = {"fullgraph": "on"}.get(cfg.compile, cfg.compile)
    return Run(**values)


def parts(cfg) -> dict:
    """kind -> (its config instance, its registry Entry) for the optimizer, schedule, wrapper and readout (None when
    the run has none)."""
    from optim import registry

    out = {}
    for kind, value in (("optimizer", cfg.optim), ("schedule", cfg.schedule), ("wrapper", cfg.wrapper),
                        ("readout", cfg.readout)):
        out[kind] = None if value is None else (value, registry.entry_of(value))
    return out


def kernel_lookups(cfg) -> dict:
    """op -> {implementation name: function} of every kernels.registry lookup the model, the optimizer, the wrapper
    and the readout make while they are built (a small model of the same family on the CPU)."""
    import torch

    from kernels import registry as kernels
    from model.gpt import GPT
    from optim import build_optimizer, make_readout, wrap_optimizer

    tables = [n for n in kernels.get.__code__.co_names if isinstance(getattr(kernels, n, None), dict)]
    if len(tables) != 1:
        raise RuntimeError(f"kernels.registry.get reads {tables}: expected its one table")
    table = getattr(kernels, tables[0])
    seen: dict = {}

    class Recorder(dict):
        def __init__(self, op, impls):
            super().__init__(impls)
            self.op = op

        def __getitem__(self, impl):
            value = super().__getitem__(impl)
            seen.setdefault(self.op, {})[impl] = value
            return value

    kernels.names("attention")  # imports every kernel module, so that the table is full before it is wrapped
    original = dict(table)
    table.update({op: Recorder(op, impls) for op, impls in original.items()})
    try:
        small = dataclasses.replace(cfg.model, n_layer=1, n_head=1, n_embd=cfg.model.head_dim, vocab_size=64)
        with torch.random.fork_rng():
            model = GPT(small)
            optimizer = wrap_optimizer(cfg.wrapper, build_optimizer(cfg.optim, model), model)
            make_readout(cfg.readout, model)
            del optimizer
    finally:
        table.clear()
        table.update(original)
    return seen, kernels, tables[0]


# --- writing the script ---------------------------------------------------------------------------------------------


def literal(value, indent: int = 0) -> tuple[str, set]:
    """Python source for a configuration value, and the classes it names: dataclasses as ClassName(field=...) one
    field a line, tuples, lists, dicts, numbers (exact: repr round-trips), text, None."""
    pad = " " * indent
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        classes, lines = {type(value)}, []
        for f in dataclasses.fields(value):
            if not f.init:
                continue
            text, more = literal(getattr(value, f.name), indent + 4)
            classes |= more
            lines.append(f"{pad}    {f.name}={text},")
        return f"{type(value).__name__}(\n" + "\n".join(lines) + f"\n{pad})", classes
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return repr(value), set()
    if isinstance(value, float):
        return (repr(value) if math.isfinite(value) else f'float("{value}")'), set()
    if isinstance(value, str):
        quoted = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return (quoted if "\n" not in value else repr(value)), set()
    if isinstance(value, (tuple, list)):
        items = [literal(v, indent) for v in value]
        body = ", ".join(t for t, _ in items) + ("," if isinstance(value, tuple) and len(value) == 1 else "")
        classes = set().union(*(c for _, c in items)) if items else set()
        return ("(" + body + ")" if isinstance(value, tuple) else "[" + body + "]"), classes
    if isinstance(value, dict):
        items = [(literal(k, indent), literal(v, indent)) for k, v in value.items()]
        classes = set().union(*(a[1] | b[1] for a, b in items)) if items else set()
        return "{" + ", ".join(f"{a[0]}: {b[0]}" for a, b in items) + "}", classes
    raise UserError(f"cannot write the value {value!r} ({type(value).__name__}) into the script: configuration "
                    "fields must be numbers, text, None, tuples, lists, dicts or dataclasses of those")


def _binding(obj) -> tuple[str, str]:
    """(module, top-level name) bound to a class or function, for an import line the flattener follows."""
    module = sys.modules.get(obj.__module__)
    name = obj.__name__
    if module is None or getattr(module, name, None) is not obj:
        name = next((n for n, v in vars(module or object()).items() if v is obj), None)
        if name is None:
            raise UserError(f"{obj.__qualname__} ({obj.__module__}) is not a top-level name of its module: the "
                            "export inlines top-level definitions only")
    return obj.__module__, name


def _comment(text: str) -> str:
    """`text` (a docstring, as written) as comment lines."""
    return "\n".join(("# " + line).rstrip() for line in textwrap.dedent(text).strip().splitlines())


def settings_source(cfg, found: dict) -> str:
    """The settings section of the script: the model, the run, the parts with their values, each with a comment
    naming where its code is."""
    imports, sections = set(), []

    def assign(name: str, value) -> str:
        text, classes = literal(value)
        imports.update(_binding(c) for c in classes)
        return f"{name} = {text}"

    def part_file(entry) -> str:
        path = Path(entry.source)
        return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name

    sections.append("# The model: track 3's architecture (its rule 1: unchanged), our model/gpt.py with these "
                    "switches.\n" + assign("MODEL", cfg.model))
    sections.append("# The data, the batch, the steps, validation and the device (Run, above).\n"
                    + assign("RUN", run_settings(cfg)))
    value, entry = found["optimizer"]
    recipe = ""
    if cfg.recipe:
        from optim import registry

        recipe_entry = registry.lookup("recipe", cfg.recipe)
        recipe = (f"\n# From the recipe {recipe_entry.name!r} and the options given at export:\n"
                  + _comment(inspect.cleandoc(recipe_entry.factory.__doc__ or recipe_entry.summary)))
    module, builder = _binding(entry.factory)
    imports.add((module, builder))
    sections.append(f"# The optimizer {entry.name!r} ({part_file(entry)}: {type(value).__name__} and its builder "
                    f"{builder}).{recipe}\n" + assign("OPTIMIZER", value) + f"\nBUILD_OPTIMIZER = {builder}")
    value, entry = found["schedule"]
    sections.append(f"# The lr and momentum schedule {entry.name!r} ({part_file(entry)}).\n"
                    + assign("SCHEDULE", value))
    for kind, names, what in (("wrapper", ("WRAPPER", "WRAP"), "the optimizer steps alone"),
                              ("readout", ("READOUT", "MAKE_READOUT"), "validation reads the trained weights")):
        if found[kind] is None:
            sections.append(f"# No {kind}: {what}.\n{names[0]} = {names[1]} = None")
            continue
        value, entry = found[kind]
        module, factory = _binding(entry.factory)
        imports.add((module, factory))
        sections.append(f"# The {kind} {entry.name!r} ({part_file(entry)}: {type(value).__name__} and "
                        f"{factory}).\n" + assign(names[0], value) + f"\n{names[1]} = {factory}")
    header = ("########################################\n"
              "#       Init & Optim Hyperparams       #\n"
              "########################################\n")
    import_lines = "\n".join(f"from {m} import {n}" for m, n in sorted(imports) if m != TEMPLATE_MODULE)
    return f"{import_lines}\n\n{header}\n" + "\n\n".join(sections) + "\n"


def kernel_table_source(found: dict) -> tuple[str, bool]:
    """The statement that replaces the kernel registry's table: the implementations the run looks up (their import
    lines bind them for the flattener), and whether one is a Triton kernel."""
    imports, rows = [], []
    for op in sorted(found):
        cells = []
        for impl, fn in sorted(found[op].items()):
            module, name = _binding(fn)
            imports.append(f"from {module} import {name}")
            cells.append(f'"{impl}": {name}')
        rows.append(f'    "{op}": {{{", ".join(cells)}}},')
    triton = any(impl == "triton" for impls in found.values() for impl in impls)
    text = ("\n".join(sorted(set(imports))) + "\n\n"
            "# The implementations the run looks up, by op and name (the repository registers every one here as its\n"
            "# modules are imported; this script holds only these).\n"
            "OPS = {\n" + "\n".join(rows) + "\n}\n")
    return text, triton


def custom_op_definitions(ext, attrs: list[str]) -> list[tuple[str, str]]:
    """For bench.flatten: `torch.ops.NAMESPACE.OP` is the custom op a module of the repository registers with
    torch.library.custom_op; the statement that defines it (found by the op's name among the registered ones)."""
    if ext.module != "torch" or ext.attr is not None or len(attrs) < 3 or attrs[0] != "ops":
        return []
    import torch

    definitions = getattr(getattr(torch._library, "custom_ops", None), "OPDEFS", {})
    op = definitions.get(f"{attrs[1]}::{attrs[2]}")
    if op is None:
        return []
    module = sys.modules.get(getattr(op, "_init_fn", op).__module__)
    name = next((n for n, v in vars(module or object()).items() if v is op), None)
    return [(module.__name__, name)] if name else []


def _commit() -> str:
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit"
    return f"commit {head}" + (" with uncommitted changes" if dirty else "")


def header_source(cfg, argv: list[str], found: dict, out_name: str, triton: bool, modules: list[str]) -> str:
    """The script's docstring: what it is, how to run it, what it holds."""
    def fill(text: str) -> str:
        return textwrap.fill(" ".join(text.split()), 116, break_on_hyphens=False)

    optimizer = found["optimizer"][1].name + (f" (recipe {cfg.recipe})" if cfg.recipe else "")
    impls = (f"attention {cfg.model.attention_impl}, MLP {cfg.model.relu2_mlp_impl}, "
             f"loss {cfg.model.linear_cross_entropy_impl}"
             + "".join(f", {k} {v}" for k, v in (cfg.optim.implementations().items()
                                                  if hasattr(cfg.optim, "implementations") else [])))
    triton_note = ("It imports triton: a Triton implementation was asked for." if triton else
                   "No Triton: every implementation is plain PyTorch, so it runs on any GPU (or the CPU) with torch "
                   "alone; export with --model.relu2_mlp_impl=triton, --model.linear_cross_entropy_impl=triton or "
                   "--optim.newton_schulz_impl=triton to inline those kernels instead.")
    batch = f"{cfg.reference_world_size * cfg.grad_accum} x {cfg.batch_size} x {cfg.seq_len}"
    paragraphs = [
        fill(f"Track 3 of modded-nanogpt (the optimization benchmark) with the optimizer {optimizer}: one "
             f"self-contained script, exported from the speedrun repository ({_commit()}) by"),
        f"    python -m bench.export_track3 {shlex.join(argv)}",
        fill("Run it as the track's quickstart runs train_gpt_simple.py, from a modded-nanogpt checkout holding the "
             f"FineWeb shards (python data/cached_fineweb10B.py 20 writes them to {TRACK_DATA_DIR}):"),
        f"    torchrun --standalone --nproc_per_node=$(nvidia-smi -L | wc -l) {out_name}",
        fill(f"on 1, 2, 4 or 8 GPUs: the batch of {batch} tokens is the same on each (fewer GPUs accumulate more "
             "micro-batches) and every rank reads the same token windows. Rank 0 prints and writes "
             "logs/<uuid>.txt: this file's source, a line of '=', then the log (val loss every "
             f"{cfg.val_every} steps, every {cfg.val_every_late} from {cfg.val_late_frac:.0%} of the steps, and at "
             f"the end; the first validation at or below {cfg.target_val_loss} is named)."),
        fill(f"Implementations: {impls}. {triton_note} On CUDA the model is compiled with torch.compile, as the "
             "reference's is."),
        fill("Layout: the repository's code this run uses, module by module under banners naming each file (only "
             "the definitions the run reaches; registration decorators dropped; a name two modules define carries "
             "its module's name as a prefix), then \"Init & Optim Hyperparams\" (every value written in), then the "
             "training loop and main(). Modules:") + "\n"
        + textwrap.fill(", ".join(modules), 112, initial_indent="    ", subsequent_indent="    "),
        fill("Options, for smoke tests only (the track's run takes none): --FIELD=VALUE sets a field of RUN, "
             "--model.FIELD=VALUE one of MODEL; e.g. on a CPU: --device=cpu --dtype=fp32 --max_steps=2 "
             "--model.n_layer=1 --data_dir=DIR."),
    ]
    return '"""' + "\n\n".join(paragraphs) + '\n"""'


def export(argv: list[str], out: str | None = None) -> tuple[str, object]:
    """The script's source for the export options `argv`, and the resolved config it holds."""
    from bench.flatten import Flattener
    from optim import registry

    cfg = resolve_config(argv)
    found = parts(cfg)
    lookups, kernels, table_name = kernel_lookups(cfg)
    table, triton = kernel_table_source(lookups)
    template = TEMPLATE.read_text()
    begin, end = template.index(SETTINGS_BEGIN), template.index(SETTINGS_END)
    root = template[:begin] + settings_source(cfg, found) + template[end + len(SETTINGS_END):]
    extra = {}
    for part in found.values():
        if part is not None and part[1].external:
            for obj in (part[1].factory, type(part[0])):
                extra[obj.__module__] = part[1].source
    flat = Flattener(root, root_path=str(TEMPLATE), extra_modules=extra,
                     strip_decorators={(registry.__name__, kind) for kind in registry.KINDS},
                     substitutions={(kernels.__name__, table_name): table}, external_refs=custom_op_definitions)
    modules = [flat.label(m) for m, _ in flat.module_sections() if m is not flat.root]
    out_name = Path(out).name if out else "train_track3.py"

    part_modules = {obj.__module__ for part in found.values() if part is not None
                    for obj in (part[1].factory, type(part[0]))}

    def banner(module) -> str:
        """The file's name and its docstring: whole for the modules of the run's parts, else its first paragraph."""
        summary = (module.docstring or "") if module.name in part_modules else (module.docstring or "").split("\n\n")[0]
        lines = ["#" * 118, f"# {flat.label(module)}" + (" (your file)" if module.name in extra else "")]
        if summary:
            lines.append(_comment(summary))
        return "\n".join([*lines, "#" * 118]) + "\n"

    text = flat.render(header_source(cfg, argv, found, out_name, triton, modules), banner)
    check_imports(text, flat, triton)
    compile(text, out_name, "exec")
    return text, cfg


def check_imports(text: str, flat, triton: bool):
    """Every import of the script is torch, numpy, the standard library, or triton when asked for (the track's rule
    4); otherwise a UserError naming the module and the file that imports it."""
    import ast

    allowed = ALLOWED_IMPORTS | ({"triton"} if triton else set())
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in allowed or top in sys.stdlib_module_names or top == "__future__":
                continue
            users = sorted(flat.external_users.get(name, ())) or sorted(
                u.module.display for u in flat.kept for sub in ast.walk(u.node)
                if isinstance(sub, (ast.Import, ast.ImportFrom)) and name in
                ([a.name for a in sub.names] if isinstance(sub, ast.Import) else [sub.module]))
            source = ", ".join(dict.fromkeys(users)) or "the script"
            raise UserError(f"{source} imports {name}: a track-3 script may import torch, numpy and the standard "
                            "library only (its rule 4: copy a library's code into your optimizer's file instead)")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--help" in argv or "-h" in argv:
        print(__doc__)
        return
    out, run_check, rest = None, False, []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--out" or arg.startswith("--out="):
            if "=" in arg:
                out = arg.split("=", 1)[1]
            elif i + 1 < len(argv):
                out, i = argv[i + 1], i + 1
        elif arg == "--check":
            run_check = True
        else:
            rest.append(arg)
        i += 1
    if not out:
        raise ConfigError("--out FILE.py: where to write the script")
    text, cfg = export(rest, out)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    print(f"wrote {out} ({len(text.splitlines())} lines)")
    if run_check:
        print(f"check: {check(Path(out), cfg)}")


if __name__ == "__main__":
    cli.run_main(main)
