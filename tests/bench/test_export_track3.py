"""bench.export_track3 and bench.flatten: the exported track-3 script stands alone and trains as train.py does.

The exported file runs in a fresh interpreter (`python -I`, working directory a temporary folder) where every
top-level name of this repository is blocked (the venv's editable install would otherwise serve them from anywhere),
on local shards written by data.shards.write_shard, at the tiny size of tests/test_track3_golden.py (2 layers, d=256,
2 heads of 128, 2 rows of 64 tokens, fp32, one thread; vocab 512 here), and is compared with train.py's Trainer on
the same shards with the same options: the per-token training loss of each step, every parameter's norm after each
step and the val losses, as test_track3_golden compares them. Same code, same machine, same thread count: the
figures must be equal bit for bit (the one exception, named where it occurs, is a sum over ranks in another order).
"""

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import train
from bench import export_check, export_track3
from bench.flatten import Flattener, FlattenError, repository_top_names
from data.shards import write_shard
from optim import registry
from speedrun import cli
from speedrun.config import resolve

REPO = Path(__file__).resolve().parents[2]
LION = REPO / "docs" / "examples" / "lion.py"

# The run both sides take: the golden test's tiny track-3 model and batch, 5 steps, validation every 2 steps.
TINY = ["--model.n_layer=2", "--model.n_embd=256", "--model.n_head=2", "--model.vocab_size=512",
        "--model.max_seq_len=64", "--model.linear_cross_entropy_impl=eager", "--batch_size=2", "--seq_len=64",
        "--reference_world_size=1", "--max_steps=5", "--val_every=2", "--val_tokens=256", "--dtype=fp32",
        "--log_every=1"]

# A wrapper (before_forward and step) and a readout (update after each step, weights() around validation) of our
# own, in a file outside the repository, as a researcher writes them.
PARTS = '''
"""A lookahead wrapper and an EMA readout, for the export's test."""

import contextlib
from dataclasses import dataclass

import torch

from optim.readouts import Readout
from optim.registry import readout, wrapper
from optim.wrappers import Wrapper


@dataclass(frozen=True)
class LookaheadConfig:
    every: int = 2
    """Steps between two syncs of the slow weights."""
    alpha: float = 0.5
    """The slow weights' step toward the fast ones at a sync."""


class Lookahead(Wrapper):
    """Before the forward of every `every`-th step: slow <- slow + alpha (fast - slow), fast <- slow."""

    def __init__(self, cfg, inner, model):
        super().__init__(inner, model.parameters())
        self.cfg = cfg

    @torch.no_grad()
    def before_forward(self, step):
        for p in self.params:
            state = self.state.setdefault(p, {})
            if "slow" not in state:
                state["slow"] = p.detach().clone()
            elif step % self.cfg.every == 0:
                state["slow"].lerp_(p, self.cfg.alpha)
                p.copy_(state["slow"])


@wrapper("test-lookahead", LookaheadConfig)
def lookahead(cfg, optimizer, model):
    return Lookahead(cfg, optimizer, model)


@dataclass(frozen=True)
class EmaConfig:
    beta: float = 0.6
    """EMA coefficient of the weights validation reads."""


class Ema(Readout):
    def __init__(self, cfg, model):
        super().__init__(model)
        self.beta, self.average = cfg.beta, None

    @torch.no_grad()
    def update(self, step):
        params = list(self.model.parameters())
        if self.average is None:
            self.average = [p.detach().clone() for p in params]
        else:
            torch._foreach_lerp_(self.average, [p.detach() for p in params], 1 - self.beta)

    @contextlib.contextmanager
    def weights(self):
        params = list(self.model.parameters())
        if self.average is None:
            yield
            return
        trained = [p.detach().clone() for p in params]
        with torch.no_grad():
            torch._foreach_copy_(params, self.average)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, trained)

    def state_dict(self):
        return {} if self.average is None else {"average": [t.clone() for t in self.average]}

    def load_state_dict(self, state):
        self.average = [t.clone() for t in state["average"]] if "average" in state else None


@readout("test-ema", EmaConfig)
def ema(cfg, model):
    return Ema(cfg, model)
'''

# Runs exported with these options and compared with train.py given the same ones (the tiny size at run time of the
# script for the first, at export for the others). The current record's recipe joins with one line here once it is
# registered:  "track3-record": ["--optimizer=track3-record"],
CASES = {
    "track3-muon": ["--optimizer=track3-muon"],
    "parts": ["--optimizer=track3-muon", "--wrapper={parts}:test-lookahead", "--wrapper.every=2",
              "--readout={parts}:test-ema", "--schedule=power_cool", "--schedule.end=6",
              "--schedule.flat_until=1.5", "--schedule.aux_flat_until=3.0", "--schedule.power=1.5",
              "--schedule.momentum.warmup_steps=2", "--schedule.momentum.start=0.8",
              "--schedule.momentum.cooldown_steps=2", "--schedule.momentum.end=0.9"],
    "track3-normuon": ["--optimizer=track3-normuon", "--schedule.aux_cooldown_frac=0.4", "--schedule_steps=7"],
    # the record with its schedule points moved into the 5 steps: momentum ramp, the trust gate's fade, the
    # look-ahead window and the Tail-EMA readout all act
    "track3-record": ["--optimizer=track3-record", "--schedule_steps=7", "--schedule.momentum.warmup_steps=2",
                      "--schedule.momentum.cooldown_steps=2", "--optim.trust_floor_end=2", "--optim.trust_fade_end=4",
                      "--wrapper.prefill_steps=1", "--wrapper.rest_steps=4", "--readout.start=3", "--readout.end=7",
                      "--readout.tau=2"],
}
RUNTIME_SIZE = {"track3-muon"}  # exported at the track's size, made tiny by the script's own options


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A train and a val shard of the golden test's kind: a unigram over the first 64 ids (so the loss moves)."""
    folder = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(1000)
    write_shard(folder / "g_train_000000.bin", rng.integers(0, 64, 2048))
    write_shard(folder / "g_val_000000.bin", rng.integers(0, 64, 1025))
    return folder


@pytest.fixture(scope="module")
def parts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("elsewhere") / "my_parts.py"
    path.write_text(PARTS)
    yield path
    registry.unload_file(str(path))


def data_options(shards) -> list[str]:
    return [f"--data_dir={shards}", "--train_pattern=g_train_*.bin", "--val_pattern=g_val_*.bin"]


def trainer_figures(options: list[str], tmp_path: Path) -> dict:
    """train.py's Trainer (track3 preset, CPU, one thread, no compile): the loss per token of each step, every
    parameter's norm after each step, the val losses."""
    cfg = resolve(["--preset=track3", *options, f"--out_dir={tmp_path / 'runs'}", "--compile=False",
                   "--threads=1", "--device=cpu"])
    trainer = train.Trainer(cfg)
    norms, step = [], trainer.parallel.step

    def step_and_record():
        step()
        norms.append({n: p.detach().double().norm().item() for n, p in trainer.model.named_parameters()})

    trainer.parallel.step = step_and_record
    summary = trainer.run()
    log = [json.loads(line) for line in open(Path(summary["run_dir"]) / "log.jsonl")]
    assert len(norms) == cfg.max_steps + 1  # the warm-up step (undone), then the run's
    return {"losses": [r["train_loss"] for r in log if "train_loss" in r], "norms": norms[1:],
            "vals": [r["val_loss"] for r in log if "val_loss" in r]}


def exported_figures(script: Path, options: list[str], tmp_path: Path, nproc: int = 1) -> dict:
    record = tmp_path / "figures.json"
    done = export_check.run_isolated(script, ["--device=cpu", "--threads=1", f"--log_dir={tmp_path / 'logs'}",
                                               *options], cwd=tmp_path, record=record, nproc=nproc)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads(record.read_text())


def write_export(options: list[str], path: Path) -> tuple[str, object]:
    text, cfg = export_track3.export(options, str(path))
    path.write_text(text)
    return text, cfg


# --- the exported script trains as train.py does --------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_exported_script_reproduces_the_trainer(case, shards, parts_file, tmp_path):
    options = [o.format(parts=parts_file) for o in CASES[case]]
    script = tmp_path / "exported" / f"train_{case}.py"
    script.parent.mkdir()
    if case in RUNTIME_SIZE:
        write_export(options, script)  # the track's run as the user exports it; tiny through its own options
        runtime = [*TINY, *data_options(shards), "--compile=off"]
    else:
        write_export([*options, *TINY, *data_options(shards)], script)
        runtime = ["--compile=off"]
    theirs = exported_figures(script, runtime, tmp_path)
    ours = trainer_figures([*options, *TINY, *data_options(shards)], tmp_path)
    assert len(ours["losses"]) == len(ours["norms"]) == 5 and len(ours["vals"]) == 4  # steps 0, 2, 4, 5
    assert theirs["losses"] == ours["losses"]
    for k, (a, b) in enumerate(zip(theirs["norms"], ours["norms"], strict=True)):
        assert a == b, f"step {k + 1}: " + ", ".join(n for n in a if a[n] != b.get(n))
    assert theirs["vals"] == ours["vals"]


def test_two_ranks_read_the_windows_one_rank_accumulates(shards, tmp_path):
    """torchrun with 2 gloo processes, each a micro-batch of the step's window, against the trainer on one process
    accumulating both: the same losses and weights bit for bit (2 addends sum the same in any order); the val loss
    sums its batches per rank first, so it agrees to fp32 rounding."""
    script = tmp_path / "train.py"
    write_export(["--optimizer=track3-muon"], script)
    options = [*TINY, *data_options(shards), "--reference_world_size=2", "--batch_size=1"]
    theirs = exported_figures(script, [*options, "--compile=off"], tmp_path, nproc=2)
    ours = trainer_figures(options, tmp_path)
    assert theirs["losses"] == ours["losses"]
    assert theirs["norms"] == ours["norms"]
    assert theirs["vals"] == pytest.approx(ours["vals"], rel=1e-6)


# --- every recipe, and a file of one's own, exports and runs alone ------------------------------------------------


@pytest.mark.parametrize("optimizer", [*sorted(registry.entries("recipe")), f"{LION}:lion-track3"])
def test_every_recipe_exports_and_runs_where_the_repository_cannot_be_imported(optimizer, tmp_path):
    script = tmp_path / "train.py"
    try:
        text, cfg = write_export([f"--optimizer={optimizer}"], script)
    finally:
        if ":" in optimizer:
            registry.unload_file(optimizer.rsplit(":", 1)[0])
    imports = {(n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
               for n in ast.walk(ast.parse(text)) if isinstance(n, (ast.Import, ast.ImportFrom))
               for a in (n.names if isinstance(n, ast.Import) else [None])}
    assert imports <= {"torch", "numpy"} | set(sys.stdlib_module_names)
    assert "optim" not in imports and "triton" not in imports
    assert export_check.check(script, cfg).startswith("final val_loss:")


def test_the_log_holds_the_source_then_a_line_of_equals(shards, tmp_path):
    script = tmp_path / "train.py"
    text, _ = write_export(["--optimizer=track3-adam"], script)
    exported_figures(script, [*TINY, *data_options(shards), "--max_steps=1", "--compile=off"], tmp_path)
    (log,) = (tmp_path / "logs").glob("*.txt")
    content = log.read_text()
    assert content.startswith(text + "=" * 100 + "\n")
    assert "step:1/1 val_loss:" in content and "final val_loss:" in content


def test_the_written_values_are_the_resolved_configuration(tmp_path):
    text, cfg = write_export(["--optimizer=track3-normuon", "--optim.lr=0.031"], tmp_path / "train.py")
    assert cfg.optim.lr == 0.031 and cfg.optim.axis == "longer" and cfg.optim.newton_schulz_impl == "eager"
    assert "    lr=0.031,\n" in text and '    axis="longer",\n' in text and "    schedule_steps=3300,\n" in text
    assert "OPTIMIZER = NorMuonConfig(\n" in text and "BUILD_OPTIMIZER = build\n" in text
    assert 'data_dir="data/fineweb10B"' in text  # the track's quickstart folder
    # "auto": plain PyTorch
    assert '    attention_impl="sdpa",\n' in text and '    linear_cross_entropy_impl="eager",\n' in text
    assert "@optimizer(" not in text and "@recipe(" not in text and "def track3_normuon" not in text
    assert "kernels/triton" not in text and "import triton" not in text


def test_a_triton_implementation_is_inlined_with_its_custom_op(tmp_path):
    """Asked for, the Triton Newton-Schulz comes with its kernels, its torch.library custom op and the op's fake
    implementation; the file imports triton and loads where the repository cannot be imported (running it needs a
    GPU or Triton's interpreter: minutes on the CPU, so the run is the slow test below)."""
    script = tmp_path / "train.py"
    text, _ = write_export(["--optimizer=track3-muon", "--optim.newton_schulz_impl=triton"], script)
    assert "import triton\n" in text and "@triton.jit\n" in text
    assert "@torch.library.custom_op(" in text and ".register_fake\n" in text
    assert '"newton_schulz": {"triton": ' in text
    loader = tmp_path / "load.py"
    loader.write_text(textwrap.dedent(f"""
        import importlib.util, sys
        sys.meta_path.insert(0, type("Blocked", (), {{"find_spec": staticmethod(
            lambda name, path=None, target=None: (_ for _ in ()).throw(ModuleNotFoundError(name))
            if name.split(".")[0] in {sorted(repository_top_names())!r} else None)}})())
        spec = importlib.util.spec_from_file_location("exported", {str(script)!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        print(sorted(module.OPS))
    """))
    done = subprocess.run([sys.executable, "-I", str(loader)], cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "TRITON_INTERPRET": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "newton_schulz" in done.stdout


@pytest.mark.slow
def test_the_triton_export_trains_under_the_interpreter(tmp_path):
    script = tmp_path / "train.py"
    _, cfg = write_export(["--optimizer=track3-muon", "--optim.newton_schulz_impl=triton",
                           "--model.relu2_mlp_impl=triton", "--model.linear_cross_entropy_impl=triton"], script)
    export_check.write_tiny_shards(tmp_path / "data")
    done = export_check.run_isolated(script, export_check.tiny_options(cfg, tmp_path / "data", tmp_path / "logs"),
                                      cwd=tmp_path, env={"TRITON_INTERPRET": "1"}, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]


# --- one-line errors --------------------------------------------------------------------------------------------


def run_cli(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(export_track3.main, argv)
    return exit_info.value.code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("argv, status, message", [
    (["--optimizer=track3-muon"], 2, "error: --out FILE.py: where to write the script"),
    (["--preset=cpu", "--out=x.py"], 2, "error: --preset: the export is track 3's"),
    (["--optimizer=no-such-thing", "--out=x.py"], 2, "error: unknown optimizer or recipe 'no-such-thing'"),
    (["--optimizer=track3-muon", "--model.attention_impl=fa3", "--out=x.py"], 2,
     "error: --model.attention_impl=fa3: the "),
])
def test_bad_options_end_in_one_line(argv, status, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(argv, capsys)
    assert code == status and err.startswith(message) and "\n" not in err
    assert not (tmp_path / "x.py").exists()


def test_a_third_party_import_is_refused_naming_its_file(tmp_path, capsys):
    mine = tmp_path / "third_party_opt.py"
    mine.write_text(LION.read_text().replace("import torch\n", "import torch\nimport tqdm\n").replace(
        "    return Lion(", "    assert tqdm.__name__\n    return Lion(").replace('"lion', '"tqdm-lion'))
    try:
        code, err = run_cli([f"--optimizer={mine}:tqdm-lion-track3", f"--out={tmp_path / 'x.py'}"], capsys)
    finally:
        registry.unload_file(str(mine))
    assert code == 1 and "\n" not in err
    assert err.startswith(f"error: {mine} imports tqdm: a track-3 script may import torch, numpy and the standard")
    assert not (tmp_path / "x.py").exists()


# --- the flattener ------------------------------------------------------------------------------------------------


def make_package(root: Path, files: dict[str, str]):
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))


def flatten(repo: Path, root: str, **kwargs) -> str:
    flat = Flattener(textwrap.dedent(root), root_path="root.py", repo=repo, **kwargs)
    return flat.render('"""flat"""', lambda m: f"# {m.display}\n")


def run_flat(text: str):
    namespace = {"__name__": "flat"}
    exec(compile(text, "flat.py", "exec"), namespace)
    return namespace["main"]()


def test_flattening_keeps_what_is_reached_and_renames_what_clashes(tmp_path):
    make_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/b.py": """
            def helper(x):
                return x + 1


            def build(x):
                return x
            """,
        "pkg/a.py": """
            import math
            from pkg import b

            SCALE = 2.0


            def build(x):
                return b.helper(x) * SCALE


            def twice(helper):  # its parameter is named like b.helper, which it calls
                return b.helper(helper) + 1


            def unused():
                return math.pi
            """,
    })
    text = flatten(tmp_path, """
        from pkg.a import build, twice
        from pkg.b import build as identity


        def main():
            return build(1), identity(2), twice(3)
        """)
    assert run_flat(text) == (4.0, 2, 5)
    assert "def a_build(x):" in text and "def b_build(x):" in text  # two modules' `build`, kept apart
    assert "def b_helper(x):" in text and "return b_helper(helper) + 1" in text  # not hidden by the parameter
    assert "unused" not in text and "import math" not in text and "from pkg" not in text
    assert text.index("# pkg/b.py") < text.index("# pkg/a.py") < text.index("def main")


def test_a_function_local_import_of_the_repository_goes_and_its_names_stay(tmp_path):
    make_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/b.py": "def helper(x):\n    return x + 1\n",
        "pkg/c.py": """
            def make(x):
                from pkg.b import helper
                from pkg import b as module_b

                return helper(x) + module_b.helper(x)
            """,
    })
    text = flatten(tmp_path, "from pkg.c import make\n\n\ndef main():\n    return make(1)\n")
    assert run_flat(text) == 4
    assert "import" not in text.split("# pkg/c.py")[1] and "return helper(x) + helper(x)" in text


def test_registration_decorators_go_and_attached_side_effects_stay(tmp_path):
    make_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/reg.py": """
            NAMES = []


            def part(name):
                def decorator(fn):
                    NAMES.append(name)
                    return fn
                return decorator
            """,
        "pkg/ops.py": """
            from pkg.reg import part


            class Op:
                def __init__(self):
                    self.hooks = []

                def register(self, fn):
                    self.hooks.append(fn)
                    return fn


            op = Op()


            @op.register
            def _(x):
                return 10 * x


            op.register(lambda x: x + 1)
            print("a side effect of importing the module")


            @part("thing")
            def thing(x):
                return sum(hook(x) for hook in op.hooks)
            """,
    })
    text = flatten(tmp_path, """
        from pkg.ops import thing


        def main():
            return thing(1)
        """, strip_decorators={("pkg.reg", "part")})
    assert run_flat(text) == 12
    assert "@part" not in text and "def part" not in text and "NAMES" not in text
    assert "a side effect" not in text and "@op.register\ndef _(x):" in text


@pytest.mark.parametrize("source, message", [
    ("from pkg.b import *\n\ndef main():\n    return helper(1)\n", "root.py:1: `from pkg.b import *`"),
    ("from pkg import b\n\ndef main():\n    return b\n", "root.py:4: the module pkg.b is used as a value"),
    ("def main():\n    return nowhere\n", "root.py:2: 'nowhere' is not defined"),
])
def test_what_one_namespace_cannot_hold_is_an_error_naming_the_line(source, message, tmp_path):
    make_package(tmp_path, {"pkg/__init__.py": "", "pkg/b.py": "def helper(x):\n    return x\n"})
    with pytest.raises(FlattenError, match="^" + message.replace("*", r"\*").replace("(", r"\(")):
        flatten(tmp_path, source)
