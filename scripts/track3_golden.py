"""Golden figures from a modded-nanogpt track-3 result's own script, run on the CPU at a tiny size.

    python scripts/track3_golden.py --result 20260430_adamh --checkout PATH/TO/modded-nanogpt --commit f411b3d \
        > tests/golden/20260430_adamh.json
    python scripts/track3_golden.py --reference PATH/records/track_3_optimization/train_gpt_simple.py \
        > tests/golden/track3_train_gpt_simple.json

--result names a folder of records/track_3_optimization/results/ in --checkout (a git directory, bare or not, read
at --commit; or a plain copy of the repository), or is the path of such a folder or of a script or log on disk.
The result's script is its .py file, or the text of its log before the first line made only of '=' characters
(--source picks one where a folder holds both; by default the .py, else the log that the track README's results
table links, else the first log). Nothing of it is copied here: the harness writes the script into a temporary
directory, rewrites a few constants in its syntax tree (line numbers kept), and executes all of it, its Setup and
training loop included, so the result's own optimizers, parameter grouping, schedule functions, init rule,
wrappers and readouts drive the run:

  - Size: GPT(vocab_size=50304, num_layers=2, model_dim=256) (2 heads of 128), batch_size = 2 rows of seq 64
    (mbs 2, the data generator's seq_len default 64), val_tokens = 256, train_steps = --steps. The script reads
    token shards through its own loader from a temporary data/fineweb10B/: a train stream of 1024 tokens (more,
    in whole 1024s, when the steps need them) among the first 64 ids (generator seed 1000) and a val stream of
    513 tokens (seed 2000).
  - Per result, an adapter (scripts/track3_adapters/<folder>.py) moves the schedule points expressed in steps
    (warm-ups, cooldown horizons, momentum warm-up/cool-down, wrapper start/stop steps, EMA start) so that the
    short run crosses them, sets the environment the published run used, and says how its loop reads out
    validation; --set NAME=VALUE, --kwarg CALLEE.NAME=VALUE and --env NAME=VALUE override further. Every
    rewritten constant (its original text, its new value, where) is recorded in meta.
  - CPU: torch.compile and Module.compile are the identity (eager: one rounding per op), a one-process gloo group
    stands in for NCCL (all_reduce AVG = SUM with one process), CUDA devices and pinned memory are redirected to
    the CPU, torch.cuda's device calls are no-ops, one thread. bf16 parameters (the token embedding) are
    converted to fp32 right after the model is constructed, so every activation is fp32; optimizer arithmetic
    stays as the script writes it (a bf16 Newton-Schulz stays bf16).
  - Init: torch.manual_seed(1234) right before the model class is constructed and again right after (before the
    script's own init rule), so construction-time draws (default Linear/Embedding init) and the script's draws
    are both fixed.

Printed (JSON): at the script's first model call (init and optimizer construction done, nothing trained) every
parameter's init fingerprint (norm, sum, first and last two entries), the loss and each gradient's norm and a
seeded probe <grad, r> at a perturbed state (init + seeded noise, step 0's batch; the parameters are restored
exactly afterwards), and the val loss; then for each of the --steps optimizer steps the loss the script's
training forward returned, every parameter's norm after the step (at the script's model.zero_grad, or after the
method the adapter names, e.g. an outer optimizer's step), and the optimizers' numeric hyper-parameters (lr,
momentum, ... per param group; wrapper counters), every validation pass the loop ran (raw and readout) and the
final val loss; which optimizer and param group holds each parameter. Then the same run again as a peer: with
the bf16 GEMMs emulated (fp32 GEMM of the bf16 operands, rounded to bf16: another summation order) when the
script runs bf16 matmuls; for fp32-only scripts twice, with 2 threads instead of 1 and, in another process, with
the CPU's SIMD kernels off (ATEN_CPU_CAPABILITY=default: every kernel, the init draws included, rounds as on a CPU
without SIMD). "self_drift" states how far these legitimate perturbations move each figure (per peer and the
maximum). Norms, sums and probes are float64 reductions.
"""

import argparse
import ast
import builtins
import contextlib
import hashlib
import importlib.util
import io
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

N_LAYER, DIM, VOCAB, ROWS, SEQ = 2, 256, 50304, 2, 64
INIT_SEED = 1234
PERTURB_STD = 0.05
DATA_VOCAB, TRAIN_SEED, VAL_SEED, VAL_TOKENS = 64, 1000, 2000, 256
TRACK = "records/track_3_optimization"
RESULTS = f"{TRACK}/results"
ADAPTERS = Path(__file__).resolve().parent / "track3_adapters"
BASELINE = "train_gpt_simple"

# The tiny size, as rewrites every script gets (an adapter adds its own).
TINY_ASSIGN = {"val_tokens": VAL_TOKENS, "batch_size": ROWS * SEQ, "mbs": ROWS}
TINY_KWARGS = {"GPT": {"vocab_size": VOCAB, "num_layers": N_LAYER, "model_dim": DIM}}
TINY_DEFAULTS = {"distributed_data_generator": {"seq_len": SEQ}}


def git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def script_from_log(text: str) -> str:
    """A log's script: its text before the first line made only of '=' characters."""
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if re.fullmatch(r"=+", line.rstrip("\r\n")):
            return "".join(lines[:i])
    raise SystemExit("no line of '=' characters in the log: it holds no script")


########################################
#        Reading the reference         #
########################################

class Checkout:
    """The modded-nanogpt repository: a git directory (bare or a work tree) read at one commit, or a plain copy."""

    def __init__(self, path: str | None, commit: str | None):
        self.path, self.commit = path, None
        self.git = False
        if path is None:
            return
        probe = subprocess.run(["git", "-C", path, "rev-parse", "--git-dir"], capture_output=True, text=True)
        if probe.returncode == 0:
            self.git = True
            rev = subprocess.run(["git", "-C", path, "rev-parse", "--verify", f"{commit or 'HEAD'}^{{commit}}"],
                                 capture_output=True, text=True)
            if rev.returncode != 0:
                raise SystemExit(f"{path}: no commit {commit or 'HEAD'}")
            self.commit = rev.stdout.strip()
        elif commit:
            raise SystemExit(f"{path} is not a git directory: --commit cannot be read there")

    def read(self, rel: str) -> bytes | None:
        if self.git:
            out = subprocess.run(["git", "-C", self.path, "show", f"{self.commit}:{rel}"], capture_output=True)
            return out.stdout if out.returncode == 0 else None
        file = Path(self.path, rel)
        return file.read_bytes() if file.is_file() else None

    def listdir(self, rel: str) -> list[str] | None:
        if self.git:
            out = subprocess.run(["git", "-C", self.path, "ls-tree", "--name-only", f"{self.commit}:{rel}"],
                                 capture_output=True, text=True)
            return sorted(out.stdout.split("\n")[:-1]) if out.returncode == 0 else None
        folder = Path(self.path, rel)
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else None

    def export(self, rel: str, dest: Path):
        """Copy the folder rel (and what is under it) to dest/<its name>."""
        if self.git:
            data = subprocess.run(["git", "-C", self.path, "archive", f"{self.commit}:{rel}"], capture_output=True,
                                  check=True).stdout
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                tar.extractall(dest / Path(rel).name, filter="data")
        else:
            shutil.copytree(Path(self.path, rel), dest / Path(rel).name)


def results_table(readme: str) -> dict:
    """The track README's results table: folder (or log file for top-level logs) -> its row."""
    rows = {}
    for line in readme.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 6 or not cells[0].isdigit():
            continue
        link = re.search(r"\]\((results/[^)]+)\)", cells[5])
        if not link:
            continue
        parts = link.group(1).split("/")
        key = parts[1]  # the folder, or the log file of a top-level log
        steps = re.match(r"\d+", cells[1])
        evidence = re.match(r"([\d.]+) \(n=(\d+)\)", cells[2])
        rows.setdefault(key, {
            "number": int(cells[0]), "steps": int(steps.group(0)) if steps else None,
            "mean_val_loss": float(evidence.group(1)) if evidence else None,
            "n": int(evidence.group(2)) if evidence else None, "evidence": cells[2],
            "log": link.group(1), "date": cells[4]})
    return rows


class Script:
    """The script to run: its text and where it came from."""

    def __init__(self, text: str, name: str, kind: str, rel: str, data: bytes, folder: str | None, table_row):
        self.text, self.name, self.kind, self.rel, self.data = text, name, kind, rel, data
        self.folder, self.table_row = folder, table_row
        self.disk_folder = None  # set when the script was read from a folder on disk

    def meta(self) -> dict:
        return {"file": self.rel, "source": self.kind, "file_git_blob": git_blob(self.data),
                "script_sha256": hashlib.sha256(self.text.encode()).hexdigest(),
                "script_git_blob": git_blob(self.text.encode())}


def pick(names: list[str], source: str | None, linked: str | None, where: str) -> tuple[str, str]:
    pys = [n for n in names if n.endswith(".py")]
    logs = [n for n in names if n.endswith(".txt")]
    if source in (None, "py") and len(pys) == 1:
        return pys[0], "py"
    if source == "py":
        raise SystemExit(f"{where}: {len(pys)} .py files ({pys}); name the file instead")
    if not logs:
        raise SystemExit(f"{where}: no .py and no .txt log")
    if linked in logs:
        return linked, "log"
    return logs[0], "log"


def locate(args, checkout: Checkout) -> Script:
    """The script named by --reference / --result."""
    if args.reference:
        data = Path(args.reference).read_bytes()
        return Script(data.decode(), Path(args.reference).name, "py", f"{TRACK}/{BASELINE}.py", data, None, None)
    target = args.result
    disk = Path(target)
    if disk.exists():  # a folder or a file on disk
        folder = disk if disk.is_dir() else disk.parent
        readme = folder.parent.parent / "README.md"
        table = results_table(readme.read_text()) if readme.is_file() else {}
        row = table.get(folder.name)
        if disk.is_dir():
            linked = Path(row["log"]).name if row else None
            name, kind = pick(sorted(p.name for p in disk.iterdir()), args.source, linked, str(disk))
            disk = disk / name
        else:
            kind = args.source or ("py" if disk.suffix == ".py" else "log")
        data = disk.read_bytes()
        text = data.decode() if kind == "py" else script_from_log(data.decode())
        is_baseline = disk.name == f"{BASELINE}.py"
        script = Script(text, disk.name, kind, str(disk), data, None if is_baseline else folder.name, row)
        script.disk_folder = folder
        return script
    if checkout.path is None:
        raise SystemExit(f"{target}: not on disk; name the repository with --checkout")
    readme = checkout.read(f"{TRACK}/README.md")
    table = results_table(readme.decode()) if readme else {}
    if target in (BASELINE, f"{BASELINE}.py"):
        rel = f"{TRACK}/{BASELINE}.py"
        data = checkout.read(rel)
        return Script(data.decode(), f"{BASELINE}.py", "py", rel, data, None, None)
    folder = target.rstrip("/").split("/")[-1]
    names = checkout.listdir(f"{RESULTS}/{folder}")
    if names is None:
        raise SystemExit(f"{RESULTS}/{folder}: no such folder in {checkout.path}")
    row = table.get(folder)
    linked = Path(row["log"]).name if row else None
    name, kind = pick(names, args.source, linked, f"{RESULTS}/{folder}")
    rel = f"{RESULTS}/{folder}/{name}"
    data = checkout.read(rel)
    text = data.decode() if kind == "py" else script_from_log(data.decode())
    return Script(text, name, kind, rel, data, folder, row)


########################################
#               Adapters               #
########################################

class Adapter:
    """Per-result settings (a module scripts/track3_adapters/<folder>.py may set any of these names).

    RESULT       the results-table number (checked against the table)
    STEPS        optimizer steps to record (default 5)
    ASSIGN       {name: value}: every assignment `name = ...` outside function bodies gets `value`
    KWARGS       {callee: {keyword: value}}: every call `callee(...)` gets `keyword=value`
    DEFAULTS     {function: {argument: value}}: the function's default for the argument
    ENV          {name: value}: environment the script reads (the published run's settings)
    A value may be a function of the step count (then called with it).
    MODEL_CLASS  the model class the script constructs ("GPT")
    RECORD_AFTER "zero_grad" (the model's, after the optimizer steps) or "Class.method" (after that method runs)
    RECORD_FORWARD_NORMS  also record every parameter's norm at each training forward (wrappers that move the
                 parameters between the step and the next forward, e.g. a lookahead)
    VAL_DENOMINATOR  "tokens" (the summed val loss / val_tokens) or "microbatches" (mean of per-batch means)
    VAL_LABELS   names of the validation passes one validation runs, in order (raw, then readouts)
    LIBRARY      put the result folder (exported from the checkout) on sys.path: the script imports from it
    NOTES        prose recorded in meta
    """
    RESULT = None
    STEPS = 5
    ASSIGN: dict = {}
    KWARGS: dict = {}
    DEFAULTS: dict = {}
    ENV: dict = {}
    MODEL_CLASS = "GPT"
    RECORD_AFTER = "zero_grad"
    RECORD_FORWARD_NORMS = False
    VAL_DENOMINATOR = "tokens"
    VAL_LABELS = ("val_loss",)
    LIBRARY = False
    NOTES = ""

    def __init__(self, name: str):
        self.name, self.file = name, ADAPTERS / f"{name}.py"
        if self.file.is_file():
            spec = importlib.util.spec_from_file_location(f"track3_adapter_{name}", self.file)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            for key in dir(Adapter):
                if key.isupper() and hasattr(module, key):
                    setattr(self, key, getattr(module, key))
        else:
            self.file = None


def resolve(value, steps: int):
    return value(steps) if callable(value) else value


########################################
#          Rewriting the script        #
########################################

class Rewriter(ast.NodeTransformer):
    """Constants replaced in the syntax tree (locations kept, so tracebacks and line numbers are the script's)."""

    def __init__(self, source: str, assign: dict, kwargs: dict, defaults: dict, hook_classes: set):
        self.source, self.assign, self.kwargs, self.defaults = source, assign, kwargs, defaults
        self.hook_classes = hook_classes
        self.applied, self.depth, self.hooked = [], 0, set()

    def _note(self, kind, name, old, new, line):
        text = ast.get_source_segment(self.source, old) if old is not None else None
        self.applied.append({"kind": kind, "name": name, "line": line, "was": text, "now": repr(new)})

    @staticmethod
    def _const(value, like):
        return ast.copy_location(ast.parse(repr(value), mode="eval").body, like)

    def visit_FunctionDef(self, node):
        if node.name in self.defaults:
            args = node.args
            positional = args.posonlyargs + args.args
            for arg, value in self.defaults[node.name].items():
                names = [a.arg for a in positional]
                if arg in names and names.index(arg) >= len(names) - len(args.defaults):
                    i = names.index(arg) - (len(names) - len(args.defaults))
                    self._note("default", f"{node.name}({arg}=)", args.defaults[i], value, args.defaults[i].lineno)
                    args.defaults[i] = self._const(value, args.defaults[i])
                elif arg in [a.arg for a in args.kwonlyargs]:
                    i = [a.arg for a in args.kwonlyargs].index(arg)
                    old = args.kw_defaults[i]
                    self._note("default", f"{node.name}({arg}=)", old, value, node.lineno)
                    args.kw_defaults[i] = self._const(value, old or node)
                else:
                    raise SystemExit(f"{node.name} has no default for {arg}")
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1
        return node

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1
        if self.depth == 0 and node.name in self.hook_classes:
            self.hooked.add(node.name)
            hook = ast.parse(f"{node.name} = __golden__.on_class({node.name!r}, {node.name})").body[0]
            return [node, ast.copy_location(hook, node)]
        return node

    def visit_Assign(self, node):
        self.generic_visit(node)
        if self.depth == 0 and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in self.assign:
                self._note("assign", name, node.value, self.assign[name], node.lineno)
                node.value = self._const(self.assign[name], node.value)
        return node

    def visit_AnnAssign(self, node):
        self.generic_visit(node)
        if self.depth == 0 and isinstance(node.target, ast.Name) and node.value is not None:
            if node.target.id in self.assign:
                self._note("assign", node.target.id, node.value, self.assign[node.target.id], node.lineno)
                node.value = self._const(self.assign[node.target.id], node.value)
        return node

    def visit_Call(self, node):
        self.generic_visit(node)
        callee = node.func.id if isinstance(node.func, ast.Name) else None
        if callee in self.kwargs:
            for kw, value in self.kwargs[callee].items():
                match = [k for k in node.keywords if k.arg == kw]
                if match:
                    self._note("kwarg", f"{callee}({kw}=)", match[0].value, value, node.lineno)
                    match[0].value = self._const(value, match[0].value)
                else:
                    self._note("kwarg", f"{callee}({kw}=)", None, value, node.lineno)
                    node.keywords.append(ast.keyword(arg=kw, value=self._const(value, node)))
        return node


def rewrite(text: str, filename: str, assign: dict, kwargs: dict, defaults: dict, hook_classes: set):
    tree = ast.parse(text, filename)
    rw = Rewriter(text, assign, kwargs, defaults, hook_classes)
    tree = ast.fix_missing_locations(rw.visit(tree))
    done = {a["name"].split("(")[0] for a in rw.applied} | {a["name"] for a in rw.applied}
    missing = [n for n in assign if n not in done] + [f"{c}({k}=)" for c, kw in kwargs.items() for k in kw
                                                       if f"{c}({k}=)" not in done]
    missing += [f"{f}({a}=)" for f, ad in defaults.items() for a in ad if f"{f}({a}=)" not in done]
    missing += [f"class {c}" for c in hook_classes - rw.hooked]
    if missing:
        raise SystemExit(f"{filename}: nothing to rewrite for {', '.join(missing)}; does the adapter fit the script?")
    return compile(tree, filename, "exec"), rw.applied


########################################
#          Running on the CPU          #
########################################

def _is_cuda(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return isinstance(device, str) and device.startswith("cuda")


class CpuMode(TorchFunctionMode):
    """CUDA devices and pinned memory redirected to the CPU; bf16 x bf16 matmuls counted, or emulated for the peer
    (fp32 GEMM of the bf16 operands, exactly representable, rounded to bf16: a bf16 GEMM summed in another order)."""

    MATMULS = (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm, torch.bmm)

    def __init__(self, emulate_bf16: bool):
        super().__init__()
        self.emulate, self.bf16_matmuls = emulate_bf16, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in self.MATMULS and len(args) >= 2 and all(
                isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16 for a in args[:2]):
            self.bf16_matmuls += 1
            if self.emulate:
                return torch.matmul(args[0].float(), args[1].float()).bfloat16()
        if func in (torch.Tensor.cuda, torch.Tensor.pin_memory):
            return args[0]
        if "device" in kwargs and _is_cuda(kwargs["device"]):
            kwargs["device"] = "cpu"
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


def _identity_compile(fn=None, *args, **kwargs):
    return fn if callable(fn) else (lambda f: f)


@contextlib.contextmanager
def patched(workdir: Path, argv0: str, env: dict, threads: int, on_optimizer):
    """The CPU stand-ins for what the script asks of CUDA, NCCL and torch.compile; restored afterwards."""
    saved = []

    def setattr_(obj, name, value):
        saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    init_process_group_ = dist.init_process_group

    def init_process_group(*args, **kwargs):
        if not dist.is_initialized():
            init_process_group_("gloo", store=dist.HashStore(), rank=0, world_size=1)

    all_reduce = dist.all_reduce

    def all_reduce_(tensor, op=dist.ReduceOp.SUM, *args, **kwargs):
        if op == dist.ReduceOp.AVG:  # gloo has no AVG; with one process AVG and SUM are the identity
            op = dist.ReduceOp.SUM
        return all_reduce(tensor, op, *args, **kwargs)

    optimizer_init = torch.optim.Optimizer.__init__

    def optimizer_init_(self, *args, **kwargs):
        optimizer_init(self, *args, **kwargs)
        on_optimizer(self)

    old_env = {k: os.environ.get(k) for k in [*env, "LOCAL_RANK", "RANK", "WORLD_SIZE"]}
    old_argv, old_cwd, old_threads = sys.argv, os.getcwd(), torch.get_num_threads()
    try:
        os.environ.update({"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1", **{k: str(v) for k, v in env.items()}})
        sys.argv = [argv0]
        os.chdir(workdir)
        torch.set_num_threads(threads)
        setattr_(torch, "compile", _identity_compile)
        setattr_(torch.nn.Module, "compile", lambda self, *a, **k: None)
        setattr_(torch.nn.Module, "cuda", lambda self, *a, **k: self)
        for name, value in {"set_device": None, "synchronize": None, "manual_seed": None, "manual_seed_all": None,
                            "empty_cache": None, "reset_peak_memory_stats": None, "get_device_name": "cpu",
                            "memory_allocated": 0, "max_memory_allocated": 0, "max_memory_reserved": 0,
                            "memory_reserved": 0}.items():
            setattr_(torch.cuda, name, lambda *a, _v=value, **k: _v)
        setattr_(dist, "init_process_group", init_process_group)
        setattr_(dist, "all_reduce", all_reduce_)
        setattr_(torch.optim.Optimizer, "__init__", optimizer_init_)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)
        if dist.is_initialized():
            dist.destroy_process_group()
        torch.set_num_threads(old_threads)
        os.chdir(old_cwd)
        sys.argv = old_argv
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def write_shard(path: Path, tokens: torch.Tensor):
    """The speedrun's shard format: 256 int32 header (magic 20240520, version 1, token count), uint16 tokens."""
    header = torch.zeros(256, dtype=torch.int32)
    header[0], header[1], header[2] = 20240520, 1, len(tokens)
    path.write_bytes(header.numpy().tobytes() + tokens.to(torch.int32).numpy().astype("uint16").tobytes())


def streams(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The train stream (1024 tokens, more in whole 1024s when the steps need them) and the val stream."""
    need = steps * ROWS * SEQ + 2
    train_tokens = 1024 * math.ceil(need / 1024)
    train = torch.randint(0, DATA_VOCAB, (train_tokens,), generator=torch.Generator().manual_seed(TRAIN_SEED))
    val = torch.randint(0, DATA_VOCAB, (2 * VAL_TOKENS + 1,), generator=torch.Generator().manual_seed(VAL_SEED))
    return train, val


def fingerprint(t: torch.Tensor) -> dict:
    flat = t.detach().double().flatten()
    return {"norm": flat.norm().item(), "sum": flat.sum().item(), "first": flat[:2].tolist(),
            "last": flat[-2:].tolist()}


def probe(i: int, t: torch.Tensor) -> float:
    r = torch.randn(t.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
    return (t.double() * r).sum().item()


def _numbers(items) -> dict:
    out = {}
    for k, v in items:
        if k.startswith("_") or k == "params" or isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[k] = v
        elif isinstance(v, (tuple, list)) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                        for x in v):
            out[k] = list(v)
    return out


class Recorder:
    """The __golden__ object the rewritten script calls; hooks the model it constructs and records."""

    def __init__(self, adapter: Adapter, train: torch.Tensor, val: torch.Tensor, record_all: bool):
        self.adapter, self.train, self.val = adapter, train, val
        self.record_all = record_all  # the main run records everything; the peer only the trajectory
        self.model, self.busy, self.initialized = None, False, False
        self.optimizers, self.steps, self.val_passes, self.pending_val = [], [], [], []
        self.pending_losses, self.forward_norms = [], None
        self.out, self.converted = {}, []

    # ---- hooks the script reaches ----
    def on_class(self, name, cls):
        if name == self.adapter.MODEL_CLASS:
            return self._model_class(cls)
        method = self.adapter.RECORD_AFTER.split(".")[1]
        orig = getattr(cls, method)
        recorder = self

        def after(self_, *args, **kwargs):
            result = orig(self_, *args, **kwargs)
            recorder._record_step()
            return result
        setattr(cls, method, after)
        return cls

    def on_optimizer(self, opt):
        self.optimizers.append(opt)

    def _model_class(self, cls):
        recorder = self

        class Model(cls):
            def __init__(self, *args, **kwargs):
                torch.manual_seed(INIT_SEED)
                super().__init__(*args, **kwargs)
                with torch.no_grad():
                    for name, t in [*self.named_parameters(), *self.named_buffers()]:
                        if t.dtype == torch.bfloat16:
                            t.data = t.data.float()
                            recorder.converted.append(name)
                torch.manual_seed(INIT_SEED)
                recorder._attach(self)
        Model.__name__, Model.__qualname__ = cls.__name__, cls.__qualname__
        return Model

    def _attach(self, model):
        if self.model is not None:
            raise SystemExit("the script constructed its model class twice")
        self.model = model
        model.register_forward_pre_hook(self._pre_forward)
        model.register_forward_hook(self._post_forward)
        if self.adapter.RECORD_AFTER == "zero_grad":
            orig = model.zero_grad

            def zero_grad(*args, **kwargs):
                orig(*args, **kwargs)
                if not self.busy and self.pending_losses:
                    self._record_step()
            model.zero_grad = zero_grad

    def _pre_forward(self, module, args):
        if self.busy:
            return
        if not self.initialized:
            self.busy = True
            try:
                self._at_init(module)
            finally:
                self.busy = False
            self.initialized = True
        if module.training and torch.is_grad_enabled() and self.adapter.RECORD_FORWARD_NORMS \
                and not self.pending_losses:
            self.forward_norms = self._norms()

    def _post_forward(self, module, args, output):
        if self.busy:
            return
        if module.training and torch.is_grad_enabled():
            self.pending_losses.append(output.detach().item())
        elif not module.training:
            self.pending_val.append(output.detach().clone())
            if len(self.pending_val) == VAL_TOKENS // (ROWS * SEQ):
                same = [p for p in self.val_passes if p["after_steps"] == len(self.steps)]
                labels = self.adapter.VAL_LABELS
                label = labels[len(same)] if len(same) < len(labels) else f"pass{len(same)}"
                self.val_passes.append({"after_steps": len(self.steps), "label": label,
                                        "loss": self._val_value(self.pending_val)})
                self.pending_val = []

    # ---- what is recorded ----
    def _val_value(self, outputs) -> float:
        total = 0
        for out in outputs:  # as the scripts accumulate: val_loss = 0; val_loss += model(...)
            total += out
        if self.adapter.VAL_DENOMINATOR == "tokens":
            total /= VAL_TOKENS
        else:
            total /= len(outputs)
        return total.item()

    def _batches(self, stream, count):
        out = []
        for i in range(count):
            buf = stream[i * ROWS * SEQ:][:ROWS * SEQ + 1]
            out.append((buf[:-1].to(torch.int32).view(ROWS, SEQ), buf[1:].to(torch.int64).view(ROWS, SEQ)))
        return out

    def _norms(self) -> dict:
        return {n: p.detach().double().norm().item() for n, p in self.model.named_parameters()}

    def _at_init(self, model):
        params = list(model.named_parameters())
        snapshot = [p.detach().clone() for _, p in params]
        grads = [p.grad for _, p in params]
        was_training = model.training
        if self.record_all:
            self.out["init"] = {n: fingerprint(p) for n, p in params}
        # the val loss at init, as the script's validation computes it
        model.eval()
        with torch.no_grad():
            outs = [model(x, y) for x, y in self._batches(self.val, VAL_TOKENS // (ROWS * SEQ))]
        self.out["val_loss_before"] = self._val_value(outs)
        if self.record_all:
            # model-only: loss and gradients at init + seeded noise (every gradient non-zero), step 0's batch
            model.train()
            with torch.no_grad():
                for i, (_, p) in enumerate(params):
                    p.add_(PERTURB_STD * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
                    p.grad = None
            (x, y), = self._batches(self.train, 1)
            with torch.enable_grad():
                loss = model(x, y)
                loss.backward()
            self.out["perturbed"] = {"loss": loss.item(), "grads": {
                name: {"norm": p.grad.double().norm().item(), "probe": probe(i, p.grad)}
                for i, (name, p) in enumerate(params)}}
            with torch.no_grad():
                for (_, p), s, g in zip(params, snapshot, grads):
                    p.copy_(s)
                    p.grad = g
        model.train(was_training)
        self.param_names = {id(p): n for n, p in params}

    def _hparams(self) -> dict:
        flat = {}
        for i, opt in enumerate(self.optimizers):
            tag = f"{type(opt).__name__}#{i}"
            for k, v in _numbers(vars(opt).items()).items():
                if k not in ("defaults", "state"):
                    flat[f"{tag}.{k}"] = v
            for j, group in enumerate(opt.param_groups):
                for k, v in _numbers(group.items()).items():
                    flat[f"{tag}.group{j}.{k}"] = v
        return flat

    def _record_step(self):
        record = {}
        first = next((g for opt in self.optimizers for g in opt.param_groups if "initial_lr" in g), None)
        if first is not None and first["initial_lr"]:
            record["lr_factor"] = first["lr"] / first["initial_lr"]
        loss = self.pending_losses
        record["loss"] = loss[0] if len(loss) == 1 else loss
        record["norms"] = self._norms()
        if self.record_all:
            record["hparams"] = self._hparams()
            if self.forward_norms is not None:
                record["norms_at_forward"] = self.forward_norms
        self.pending_losses, self.forward_norms = [], None
        self.steps.append(record)

    def groups(self) -> list:
        out = []
        for i, opt in enumerate(self.optimizers):
            for j, group in enumerate(opt.param_groups):
                out.append({"optimizer": f"{type(opt).__name__}#{i}", "group": j,
                            "params": [self.param_names.get(id(p), "?") for p in group["params"]]})
        return out


def run_script(script: Script, adapter: Adapter, plan: dict, checkout: Checkout, *, emulate_bf16: bool,
               threads: int, record_all: bool) -> dict:
    """Execute the rewritten script once; return what the recorder saw."""
    steps = plan["steps"]
    train, val = streams(steps)
    workdir = Path(tempfile.mkdtemp(prefix="track3_golden_"))
    added_path = None
    try:
        data = workdir / "data" / "fineweb10B"
        data.mkdir(parents=True)
        write_shard(data / "fineweb_train_000001.bin", train)
        write_shard(data / "fineweb_val_000000.bin", val)
        script_file = workdir / (script.name if script.kind == "py" else Path(script.name).stem + ".py")
        script_file.write_text(script.text)
        if adapter.LIBRARY:  # the script imports from its result folder
            if script.disk_folder is not None:
                added_path = str(Path(script.disk_folder).resolve())
            elif checkout.path and script.folder:
                checkout.export(f"{RESULTS}/{script.folder}", workdir / "lib")
                added_path = str(workdir / "lib" / script.folder)
            else:
                raise SystemExit("this result imports from its folder: name the repository with --checkout")
            sys.path.insert(0, added_path)
        hooks = {adapter.MODEL_CLASS} | ({adapter.RECORD_AFTER.split(".")[0]} if "." in adapter.RECORD_AFTER else set())
        code, applied = rewrite(script.text, str(script_file), plan["assign"], plan["kwargs"], plan["defaults"], hooks)
        recorder = Recorder(adapter, train, val, record_all)
        namespace = {"__name__": "__main__", "__file__": str(script_file), "__builtins__": builtins,
                     "__golden__": recorder}
        mode = CpuMode(emulate_bf16)
        with patched(workdir, str(script_file), plan["env"], threads, recorder.on_optimizer), mode:
            exec(code, namespace)
        if recorder.model is None or not recorder.initialized:
            raise SystemExit("the script never called its model")
        if recorder.pending_losses:  # a step without a record point after it
            recorder._record_step()
        if len(recorder.steps) != steps:
            raise SystemExit(f"recorded {len(recorder.steps)} optimizer steps, expected {steps}")
        finals = [p for p in recorder.val_passes if p["after_steps"] == steps]
        if not finals:
            raise SystemExit(f"the script ran no validation after step {steps}")
        return {"recorder": recorder, "applied": applied, "bf16_matmuls": mode.bf16_matmuls,
                "train_tokens": len(train)}
    finally:
        if added_path:
            sys.path.remove(added_path)
            for name, module in list(sys.modules.items()):
                if str(getattr(module, "__file__", "") or "").startswith(added_path):
                    del sys.modules[name]
        shutil.rmtree(workdir, ignore_errors=True)


def trajectory(steps: list) -> list:
    return [{k: s[k] for k in ("lr_factor", "loss", "norms") if k in s} for s in steps]


PEERS = {  # kind: (key suffix, description)
    "bf16": ("_emulated_bf16", "bf16 GEMMs emulated (fp32 GEMM of the bf16 operands, rounded to bf16)"),
    "threads": ("_threads2", "2 threads instead of 1"),
    "nosimd": ("_nosimd", "the CPU's SIMD kernels off (ATEN_CPU_CAPABILITY=default, a separate process): init "
                          "draws, elementwise kernels, reductions and GEMMs round as on a CPU without SIMD"),
}


def argv_of(args) -> list:
    """The command-line arguments that name the same run (for a peer in another process)."""
    out = ["--reference", args.reference] if args.reference else ["--result", args.result]
    for flag in ("checkout", "commit", "source", "adapter", "steps"):
        if getattr(args, flag) is not None:
            out += [f"--{flag}", str(getattr(args, flag))]
    for flag in ("set", "kwarg", "env"):
        for value in getattr(args, flag):
            out += [f"--{flag}", value]
    return out


def nosimd_peer(args) -> dict:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv_of(args), "--peer", "none"],
                         env=env, stdout=subprocess.PIPE, text=True, check=True)
    run = json.loads(out.stdout)
    if run["meta"]["cpu_capability"] != "DEFAULT":
        raise SystemExit("the no-SIMD peer did not run with ATEN_CPU_CAPABILITY=default")
    return {"steps": trajectory(run["steps"]), "val_passes": run["val_passes"]}


def rel(a: float, b: float) -> float:
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(a), abs(b), 1e-30)


def drift(main: Recorder, peers: dict) -> dict:
    """The largest relative difference between the run and its peers: per step's loss, per parameter's norm over
    the steps, the validation passes; per peer and the maximum over them."""
    by_peer = {}
    for kind, peer in peers.items():
        loss = [rel(a["loss"], b["loss"]) for a, b in zip(main.steps, peer["steps"])]
        norms = {n: max(rel(a["norms"][n], b["norms"][n]) for a, b in zip(main.steps, peer["steps"]))
                 for n in main.steps[0]["norms"]}
        vals = [rel(a["loss"], b["loss"]) for a, b in zip(main.val_passes, peer["val_passes"])]
        by_peer[kind] = {"loss_per_step": loss, "loss": max(loss), "val": max(vals), "norms": norms}
    first = next(iter(by_peer.values()))
    out = {"peers": list(by_peer),
           "loss_per_step": [max(d["loss_per_step"][k] for d in by_peer.values()) for k in range(len(main.steps))],
           "loss": max(d["loss"] for d in by_peer.values()), "val": max(d["val"] for d in by_peer.values()),
           "norms": {n: max(d["norms"][n] for d in by_peer.values()) for n in first["norms"]}}
    out["norms_max"] = max(out["norms"].values())
    if len(by_peer) > 1:
        out["by_peer"] = by_peer
    return out


def static_hparams(steps: list) -> dict:
    """Hyper-parameters that never change over the steps move out of the per-step records."""
    keys = set(steps[0]["hparams"])
    static = {k: steps[0]["hparams"][k] for k in keys if all(s["hparams"].get(k) == steps[0]["hparams"][k]
                                                              for s in steps)}
    for s in steps:
        s["hparams"] = {k: v for k, v in s["hparams"].items() if k not in static}
    return dict(sorted(static.items()))


def parse_setting(text: str, what: str):
    if "=" not in text:
        raise SystemExit(f"{what} {text!r}: expected NAME=VALUE")
    name, value = text.split("=", 1)
    try:
        value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        pass  # a plain string
    return name.strip(), value


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", help="path to records/track_3_optimization/train_gpt_simple.py (the baseline)")
    parser.add_argument("--result", help="a results folder name (read from --checkout) or a folder/script/log path")
    parser.add_argument("--checkout", help="the modded-nanogpt repository: a git directory (bare or not) or a copy")
    parser.add_argument("--commit", help="the commit to read in a git --checkout (default HEAD)")
    parser.add_argument("--source", choices=["py", "log"], help="the folder's .py or a log's script")
    parser.add_argument("--adapter", help="adapter name (default: the result folder's name)")
    parser.add_argument("--steps", type=int, help="optimizer steps to run and record (default: the adapter's)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="rewrite every assignment NAME = ... outside functions (repeatable)")
    parser.add_argument("--kwarg", action="append", default=[], metavar="CALLEE.NAME=VALUE",
                        help="pass NAME=VALUE in every call of CALLEE (repeatable)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="environment for the script")
    parser.add_argument("--peer", choices=["auto", "bf16", "threads", "nosimd", "none"], default="auto",
                        help="the peer run(s): bf16 GEMMs emulated (auto: when the script runs bf16 matmuls), "
                             "2 threads and the CPU's SIMD kernels off (auto: for fp32-only scripts), or none")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the script's source, the rewrites and the environment, run nothing")
    args = parser.parse_args()
    if bool(args.reference) == bool(args.result):
        parser.error("give one of --reference and --result")

    checkout = Checkout(args.checkout, args.commit)
    script = locate(args, checkout)
    adapter = Adapter(args.adapter or script.folder or BASELINE)
    if adapter.RESULT is not None and script.table_row and script.table_row["number"] != adapter.RESULT:
        raise SystemExit(f"adapter {adapter.name} is for result #{adapter.RESULT}; the table says "
                         f"#{script.table_row['number']}")
    steps = args.steps or adapter.STEPS
    plan = {"steps": steps,
            "assign": {**TINY_ASSIGN, "train_steps": steps,
                       **{k: resolve(v, steps) for k, v in adapter.ASSIGN.items()}},
            "kwargs": {c: dict(kw) for c, kw in TINY_KWARGS.items()},
            "defaults": {f: dict(d) for f, d in TINY_DEFAULTS.items()},
            "env": {k: resolve(v, steps) for k, v in adapter.ENV.items()}}
    for callee, kws in adapter.KWARGS.items():
        plan["kwargs"].setdefault(callee, {}).update({k: resolve(v, steps) for k, v in kws.items()})
    for func, ds in adapter.DEFAULTS.items():
        plan["defaults"].setdefault(func, {}).update({k: resolve(v, steps) for k, v in ds.items()})
    for text in args.set:
        name, value = parse_setting(text, "--set")
        plan["assign"][name] = value
    for text in args.kwarg:
        name, value = parse_setting(text, "--kwarg")
        callee, _, kw = name.partition(".")
        plan["kwargs"].setdefault(callee, {})[kw] = value
    for text in args.env:
        name, value = parse_setting(text, "--env")
        plan["env"][name] = value

    if args.dry_run:
        hooks = {adapter.MODEL_CLASS} | ({adapter.RECORD_AFTER.split(".")[0]} if "." in adapter.RECORD_AFTER else set())
        _, applied = rewrite(script.text, script.name, plan["assign"], plan["kwargs"], plan["defaults"], hooks)
        json.dump({"script": script.meta(), "commit": checkout.commit, "result": (script.table_row or {}).get("number"),
                   "adapter": adapter.name if adapter.file else None, "steps": steps, "rewrites": applied,
                   "env": plan["env"]}, sys.stdout, indent=1)
        print()
        return
    torch.set_num_threads(1)
    main_run = run_script(script, adapter, plan, checkout, emulate_bf16=False, threads=1, record_all=True)
    rec = main_run["recorder"]
    kinds = {"auto": ["bf16"] if main_run["bf16_matmuls"] else ["threads", "nosimd"], "none": []}.get(
        args.peer, [args.peer])
    peers = {}
    for kind in kinds:
        if kind == "nosimd":
            peers[kind] = nosimd_peer(args)
        else:
            peer = run_script(script, adapter, plan, checkout, emulate_bf16=kind == "bf16",
                              threads=2 if kind == "threads" else 1, record_all=False)["recorder"]
            peers[kind] = {"steps": trajectory(peer.steps), "val_passes": peer.val_passes}

    out = {"init": rec.out["init"], "perturbed": rec.out["perturbed"], "val_loss_before": rec.out["val_loss_before"],
           "steps": rec.steps, "val_loss_after": next(p["loss"] for p in rec.val_passes
                                                      if p["after_steps"] == steps)}
    for kind, peer in peers.items():
        out["steps" + PEERS[kind][0]] = peer["steps"]
        out["val_loss_after" + PEERS[kind][0]] = next(p["loss"] for p in peer["val_passes"]
                                                      if p["after_steps"] == steps)
    out["val_passes"] = rec.val_passes
    for kind, peer in peers.items():
        out["val_passes" + PEERS[kind][0]] = peer["val_passes"]
    if peers:
        out["self_drift"] = drift(rec, peers)
    out["hparams_static"] = static_hparams(rec.steps)
    out["param_groups"] = rec.groups()

    row = script.table_row or {}
    out["meta"] = {
        "command": " ".join(["python", *("PATH/modded-nanogpt" if args.checkout and a == args.checkout else a
                                          for a in sys.argv)]),
        "result": row.get("number"), "folder": script.folder, "published": {
            k: row.get(k) for k in ("steps", "mean_val_loss", "n", "evidence", "log")} if row else None,
        "commit": checkout.commit, **script.meta(),
        "reference_sha256": hashlib.sha256(script.text.encode()).hexdigest(),
        "reference_git_blob": git_blob(script.text.encode()),
        "adapter": f"scripts/track3_adapters/{adapter.name}.py" if adapter.file else None,
        "adapter_notes": adapter.NOTES.strip() or None,
        "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(), "python": platform.python_version(), "threads": 1,
        "shape": dict(n_layer=N_LAYER, dim=DIM, vocab=VOCAB, rows=ROWS, seq=SEQ), "init_seed": INIT_SEED,
        "steps": steps, "horizon": plan["assign"]["train_steps"], "perturb_std": PERTURB_STD,
        "data_vocab": DATA_VOCAB, "train_seed": TRAIN_SEED, "train_tokens": main_run["train_tokens"],
        "val_seed": VAL_SEED, "val_tokens": VAL_TOKENS,
        "val_denominator": adapter.VAL_DENOMINATOR, "record_after": adapter.RECORD_AFTER,
        "converted_to_fp32": rec.converted, "bf16_matmuls_per_run": main_run["bf16_matmuls"],
        "peers": {kind: PEERS[kind][1] for kind in peers},
        "rewrites": main_run["applied"], "env": plan["env"],
    }
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
