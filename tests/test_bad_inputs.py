"""Every public entry point rejects bad input with an error that names the problem.

Each row: what is called, the exception type (or, for a command line, the exit status), and a pattern the
message must contain. The per-module tests go deeper; these tables are the one place that shows the whole
surface at a glance. A command line's rows also check that stderr is one line, "error: ...", and that no file
was written or changed.
"""

import hashlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from bench import speedrun, summary
from data import prepare, shards, tokenizer
from data.loader import TokenLoader, val_batches
from kernels import registry
from speedrun import checkpoint, cli
from speedrun.cli import ConfigError
from speedrun.config import PRESETS, resolve

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ns(*args, **kwargs):
    return registry.get("newton_schulz", "triton")(*args, **kwargs)


def ce(*args, **kwargs):
    return registry.get("linear_cross_entropy", "triton")(*args, **kwargs)


def mlp(*args, **kwargs):
    return registry.get("relu2_mlp", "triton")(*args, **kwargs)


def attention(backend, *args, **kwargs):
    return registry.get("attention", backend)(*args, **kwargs)


h, w, t = torch.randn(5, 8), torch.randn(11, 8), torch.randint(0, 11, (5,))
w_fc, w_proj = torch.randn(12, 8), torch.randn(8, 12)
q = torch.randn(1, 4, 2, 8)

KERNEL_CASES = [
    ("ns: 1-D", lambda: ns(torch.randn(5)), ValueError, "2 or 3 dims"),
    ("ns: integer dtype", lambda: ns(torch.ones(4, 4, dtype=torch.int32)), TypeError, "dtype torch.int32"),
    ("ns: empty", lambda: ns(torch.randn(0, 4)), ValueError, "empty"),
    ("ns: unknown coefficients", lambda: ns(torch.randn(4, 4), coefficients="quartic"), ValueError, "quartic"),
    ("ce: hidden dim", lambda: ce(h, torch.randn(11, 7), t), ValueError, "hidden dim H"),
    ("ce: mixed dtypes", lambda: ce(h.half(), w, t), TypeError, "share one dtype"),
    ("ce: target out of range (the opt-in check)", lambda: ce(h, w, torch.tensor([0, 1, 2, 3, 11]),
                                                              validate_targets=True), ValueError,
     r"targets\[4\] = 11 is outside \[0, V=11\)"),
    ("ce: non-contiguous", lambda: ce(torch.randn(8, 5).T, w, t), ValueError, "contiguous"),
    ("ce: empty", lambda: ce(h[:0], w, t[:0]), ValueError, "empty"),
    ("ce: target count", lambda: ce(h, w, t[:4]), ValueError, "4 entries but hidden has N=5"),
    ("mlp: dtype", lambda: mlp(h, w_fc.double(), w_proj), TypeError, "float64"),
    ("mlp: shape", lambda: mlp(h, torch.randn(12, 7), w_proj), ValueError, "H = 8 columns"),
    ("mlp: non-contiguous", lambda: mlp(torch.randn(8, 5).T, torch.randn(12, 5), torch.randn(5, 12)), ValueError,
     "contiguous"),
    ("attention: shapes", lambda: attention("sdpa", q, torch.randn(1, 5, 2, 8), q), ValueError, r"\(B, T, H, D\)"),
    ("attention: missing backend", lambda: attention("fa3", q.bfloat16(), q.bfloat16(), q.bfloat16()),
     RuntimeError, "fa3"),
]


@pytest.mark.parametrize("call, error, pattern", [c[1:] for c in KERNEL_CASES], ids=[c[0] for c in KERNEL_CASES])
def test_kernel_launchers(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def _shard(tmp_path, name="s.bin", tokens=(1, 2, 3)):
    path = tmp_path / name
    shards.write_shard(path, np.array(tokens))
    return path


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-2])
    return path


def _foreign(path):
    path.write_bytes(b"PK\x03\x04" + bytes(2000))
    return path


def _bad_tokenizer_dir(tmp_path):
    (tmp_path / "vocab.bpe").write_text("not the GPT-2 merges")
    (tmp_path / "encoder.json").write_text("{}")
    return tmp_path


DATA_CASES = [
    ("shard: truncated", lambda p: shards.load_shard(_truncate(_shard(p))), shards.ShardError, "truncated"),
    ("shard: foreign file", lambda p: shards.load_shard(_foreign(p / "x.bin")), shards.ShardError,
     "not a speedrun token shard"),
    ("shard: token out of range", lambda p: shards.write_shard(p / "y.bin", np.array([70000])), ValueError, "70000"),
    ("shards: none match", lambda p: shards.list_shards(p, "*_train_*.bin"), FileNotFoundError, "data.prepare"),
    ("tokenizer: wrong hash", lambda p: tokenizer.offline_gpt2_encoding(_bad_tokenizer_dir(p)),
     tokenizer.TokenizerFileError, "sha256 mismatch"),
    ("loader: rank outside world", lambda p: TokenLoader([_shard(p)], batch_size=1, seq_len=1, rank=2, world_size=2),
     ValueError, "rank 2"),
    ("val: too few tokens", lambda p: val_batches([_shard(p)], n_tokens=8, batch_size=1, seq_len=4), ValueError,
     "hold 3 tokens"),
    ("config: unknown option", lambda p: resolve(["--lr=1"]), ValueError, "unknown option --lr"),
    ("checkpoint: damaged", lambda p: checkpoint.load(str(_foreign(p / "c.pt"))), RuntimeError, "could not be read"),
]


@pytest.mark.parametrize("call, error, pattern", [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_data_config_and_checkpoint_readers(tmp_path, call, error, pattern):
    with pytest.raises(error, match=pattern):
        call(tmp_path)


# --- the command lines: one line on stderr, the right exit status, nothing written or lost ---------------------


@pytest.fixture(scope="module")
def finished_run(text_shards, tmp_path_factory):
    """A finished 2-step run with its checkpoint: the rows that resume it must leave every file of it as it is."""
    out = tmp_path_factory.mktemp("finished")
    train.main([*_train_args(text_shards, out), "--max_steps=2", "--checkpoint_every=2"])
    return out


def _train_args(data, out):
    return ["--preset=tiny", f"--data_dir={data}", f"--out_dir={out}", "--run_name=r", "--threads=1"]


class Ctx:
    """What a row's argv is built from: a fresh folder, the real shards, the finished run, processes to end."""

    def __init__(self, tmp, data, done):
        self.tmp, self.data, self.done, self.procs = tmp, data, done, []
        self.unset_env = []  # environment variables the row runs without

    def without_interpreter(self, *args):
        """train.py args, run without Triton's interpreter (TRITON_INTERPRET unset), as on a plain CPU machine."""
        self.unset_env.append("TRITON_INTERPRET")
        return self.train(*args)

    def earlier_run(self, *names, config: bytes | None = None):
        """tmp/runs/r holding the finished run's files `names` (its config.json replaced by `config`): an
        interrupted run (checkpoint, config, log), one that died before a checkpoint (config, log), an edited one."""
        run = self.tmp / "runs" / "r"
        run.mkdir(parents=True)
        for name in names:
            shutil.copy(self.done / "r" / name, run / name)
        if config is not None:
            (run / "config.json").write_bytes(config)
        return run

    def edited_config(self, edit) -> bytes:
        """The finished run's config.json with edit(config) applied, as a user's editor would save it."""
        config = json.loads((self.done / "r" / "config.json").read_text())
        edit(config)
        return json.dumps(config, indent=1).encode()

    def resume_edited(self, edit, *args):
        """--resume of a copy of the finished run whose config.json was edited."""
        self.earlier_run("checkpoint.pt", "config.json", "log.jsonl", config=self.edited_config(edit))
        return self.train("--max_steps=2", "--resume=True", *args)

    def train(self, *args):
        return [*_train_args(self.data, self.tmp / "runs"), *args]

    def resume(self, *args):
        return [*_train_args(self.data, self.done), "--max_steps=2", "--resume=True", *args]

    def file(self, name, content: bytes):
        path = self.tmp / name
        path.write_bytes(content)
        return path

    def data_copy(self, damage):
        """The shards copied to a new folder, `damage(train_shard_path)` applied to the train shard."""
        copy = self.tmp / "data"
        shutil.copytree(self.data, copy)
        damage(next(copy.glob("*_train_*.bin")))
        return copy

    def train_into_locked_dir(self):
        """A run into tmp/runs/r while another live process holds its lock."""
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        self.procs.append(proc)
        (self.tmp / "runs" / "r").mkdir(parents=True)
        (self.tmp / "runs" / "r" / "lock").write_text(f"{proc.pid} {socket.gethostname()}\n")
        return self.train()

    def resume_damaged(self):
        """--resume of tmp/runs/r, whose checkpoint.pt is not a checkpoint."""
        (self.tmp / "runs" / "r").mkdir(parents=True)
        (self.tmp / "runs" / "r" / "checkpoint.pt").write_bytes(b"junk")
        return self.train("--resume=True")


def _snapshot(*roots) -> dict:
    """Every file (its bytes' hash) and folder under the roots."""
    return {str(p): hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for root in roots for p in sorted(Path(root).rglob("*"))}


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: --device=cuda is valid here")
TRAIN, SPEEDRUN, SUMMARY, PREPARE = train.main, speedrun.main, summary.main, prepare.main
SUMMARY_JSON = json.dumps({"benchmarks": [{"name": "x", "extra_info": {}}]}).encode()

# (id, entry point, argv from a Ctx, exit status, pattern the one stderr line must contain after "error: ")
CLI_CASES = [
    # train.py: the configuration (status 2)
    ("train: unknown option", TRAIN, lambda c: c.train("--lr=1"), 2, "unknown option --lr"),
    ("train: negative max_steps", TRAIN, lambda c: c.train("--max_steps=-1"), 2, "--max_steps=-1 must be >= 0"),
    ("train: val_every 0", TRAIN, lambda c: c.train("--val_every=0"), 2, "--val_every=0 must be >= 1"),
    ("train: lr 0", TRAIN, lambda c: c.train("--optim.lr=0"), 2, r"--optim.lr=0.0 must be a number > 0"),
    ("train: negative adam lr", TRAIN, lambda c: c.train("--optimizer=muon", "--optim.aux_lr=-1"), 2,
     "--optim.aux_lr=-1.0"),
    ("train: lr inf", TRAIN, lambda c: c.train("--optim.lr=1e999"), 2, "--optim.lr=inf must be a number > 0"),
    ("train: no layers", TRAIN, lambda c: c.train("--model.n_layer=0"), 2, "--model.n_layer=0 must be >= 1"),
    ("train: window 0", TRAIN, lambda c: c.train("--model.window=0"), 2, "--model.window=0 must be > 0"),
    ("train: batch 0", TRAIN, lambda c: c.train("--batch_size=0"), 2, "--batch_size=0 must be >= 1"),
    ("train: seq_len 0", TRAIN, lambda c: c.train("--seq_len=0"), 2, "--seq_len=0 must be >= 1"),
    ("train: seq_len over the model's", TRAIN, lambda c: c.train("--seq_len=65"), 2, "exceeds --model.max_seq_len=64"),
    ("train: grad_accum 0", TRAIN, lambda c: c.train("--grad_accum=0"), 2, "--grad_accum=0 must be >= 1"),
    ("train: val_tokens 0", TRAIN, lambda c: c.train("--val_tokens=0"), 2, "--val_tokens=0 must be >= 1"),
    ("train: negative warm-up", TRAIN, lambda c: c.train("--schedule.warmup_steps=-1"), 2,
     "--schedule.warmup_steps=-1"),
    ("train: cooldown over 1", TRAIN, lambda c: c.train("--schedule.cooldown_frac=2"), 2,
     r"--schedule.cooldown_frac=2.0 must lie in"),
    ("train: beta of 1.5", TRAIN, lambda c: c.train("--optim.betas=(0.9,1.5)"), 2, r"--optim.betas=\(0.9, 1.5\)"),
    ("train: momentum 1", TRAIN, lambda c: c.train("--optimizer=muon", "--optim.momentum=1.0"), 2,
     r"--optim.momentum=1.0 must lie"),
    ("train: schedule shorter than the run", TRAIN, lambda c: c.train("--max_steps=10", "--schedule_steps=5"), 2,
     "schedule_steps=5 < max_steps=10"),
    ("train: heads do not divide the width", TRAIN, lambda c: c.train("--model.n_embd=33"), 2,
     "n_embd=33 is not divisible by n_head=2"),
    ("train: unknown preset", TRAIN, lambda c: c.train("--preset=huge"), 2, "unknown preset 'huge'"),
    ("train: unknown optimizer", TRAIN, lambda c: c.train("--optimizer=adam"), 2,
     r"unknown optimizer or recipe 'adam'; optimizers: (\w+, )*adamw, .*; recipes: .*track3-muon"),
    ("train: unknown kernel", TRAIN, lambda c: c.train("--model.relu2_mlp_impl=cuda"), 2,
     "--model.relu2_mlp_impl='cuda'"),
    ("train: unknown coefficients", TRAIN, lambda c: c.train("--optimizer=muon",
                                                                               "--optim.ns_coefficients=quartic"), 2,
     "--optim.ns_coefficients='quartic'; choose from"),
    ("train: unknown dtype", TRAIN, lambda c: c.train("--dtype=fp16"), 2, "dtype='fp16'; choose from"),
    ("train: unknown device", TRAIN, lambda c: c.train("--device=tpu"), 2, "--device='tpu'; choose from"),
    ("train: compile maybe", TRAIN, lambda c: c.train("--compile=maybe"), 2, "compile='maybe'"),
    ("train: not a literal", TRAIN, lambda c: c.train("--max_steps=ten"), 2, "--max_steps=ten: not a Python literal"),
    ("train: wrong type", TRAIN, lambda c: c.train("--max_steps=1.5"), 2, "expected int, got float"),
    ("train: bare word", TRAIN, lambda c: c.train("steps"), 2, "unexpected argument 'steps'"),
    ("train: option without a value", TRAIN, lambda c: c.train("--max_steps"), 2, "--max_steps needs a value"),
    ("train: run_name with a path", TRAIN, lambda c: c.train("--run_name=../x"), 2, "must be a plain folder name"),
    ("train: val_tokens not whole steps", TRAIN, lambda c: c.train("--val_tokens=100"), 2,
     "--val_tokens=100 must be a positive multiple"),
    # train.py: the data, the checkpoint, the machine (status 1)
    ("train: no data", TRAIN, lambda c: c.train(f"--data_dir={c.tmp / 'none'}"), 1, "no shards matching.*data.prepare"),
    ("train: val set too small", TRAIN, lambda c: c.train("--val_tokens=1280000"), 1,
     "--val_tokens=1280000 needs 1280001.*Lower --val_tokens"),
    ("train: more steps than data", TRAIN, lambda c: c.train("--max_steps=1000000"), 1,
     "--max_steps=1000000 needs 1000000 windows"),
    ("train: token id outside the vocabulary", TRAIN, lambda c: c.train("--model.vocab_size=256"), 1,
     r"_val_000000.bin: token id \d+ at offset \d+ .*outside the model's vocabulary \[0, 256\)"),
    ("train: truncated shard", TRAIN, lambda c: c.train(f"--data_dir={c.data_copy(_truncate)}"), 1, "truncated"),
    ("train: foreign shard", TRAIN, lambda c: c.train(f"--data_dir={c.data_copy(_foreign)}"), 1,
     "not a speedrun token shard"),
    ("train: attention backend missing", TRAIN, lambda c: c.train("--attention=fa3"), 1, "'fa3' is not available"),
    ("train: cuda without a GPU", TRAIN, lambda c: c.train("--device=cuda"), 1, "no CUDA GPU"),
    ("train: run directory in use", TRAIN, lambda c: c.train_into_locked_dir(), 1, r"runs/r is in use by PID \d+"),
    ("train: out_dir is a file", TRAIN, lambda c: [*c.train(), f"--out_dir={c.file('f', b'x')}"], 1,
     "cannot create the run directory"),
    ("train: resume without a checkpoint", TRAIN, lambda c: [*c.resume(), "--run_name=other"], 1, "nothing to resume"),
    ("train: resume a damaged checkpoint", TRAIN, lambda c: c.resume_damaged(), 1, "could not be read"),
    ("train: resume with another lr", TRAIN, lambda c: c.resume("--optim.lr=0.5"), 2,
     r"change the trajectory: --optim.lr: 0.003 in the checkpoint, 0.5 now"),
    ("train: resume with another seed", TRAIN, lambda c: c.resume("--seed=7"), 2, "--seed: 1337 in the checkpoint"),
    ("train: resume on other data", TRAIN, lambda c: c.resume(f"--data_dir={c.data_copy(_shorter)}"), 2,
     "was written for other data"),
    # train.py: a run directory holding an earlier run is never overwritten unasked (its files stay byte-identical)
    ("train: into a finished run", TRAIN, lambda c: [*_train_args(c.data, c.done), "--max_steps=2"], 1,
     r"r already holds a finished run with its checkpoint; continue it with --resume=True, start another run beside "
     "it with a new --run_name, or replace it with --overwrite"),
    ("train: into an interrupted run", TRAIN, lambda c: c.earlier_run("checkpoint.pt", "config.json", "log.jsonl")
     and c.train(), 1, "holds an interrupted run with its checkpoint; continue it with --resume=True"),
    ("train: into a run that died before a checkpoint", TRAIN, lambda c: c.earlier_run("config.json", "log.jsonl")
     and c.train(), 1, "holds an unfinished run without a checkpoint .* it cannot be continued with --resume=True "
     r"\(no checkpoint\), start another run beside it with a new --run_name, or replace it with --overwrite"),
    ("train: --overwrite and --resume", TRAIN, lambda c: c.resume("--overwrite"), 2, "contradict each other"),
    ("train: --overwrite with a value", TRAIN, lambda c: c.train("--overwrite=yes"), 2,
     "--overwrite takes no value, or True/False"),
    # train.py: resume honours what it can and refuses the rest, with both values; config.json stays as it is
    ("train: resume with an lr edited in config.json", TRAIN,
     lambda c: c.resume_edited(lambda cfg: cfg["optim"].update(lr=0.01)), 2,
     r"change the trajectory: --optim.lr: 0.003 in the checkpoint, 0.01 in \S+/runs/r/config.json.*undo the edits"),
    ("train: resume with an unknown option in config.json", TRAIN,
     lambda c: c.resume_edited(lambda cfg: cfg.update(max_step=30)), 2, "config.json has options the run does not: "
     "max_step"),
    ("train: resume with a mistyped value in config.json", TRAIN,
     lambda c: c.resume_edited(lambda cfg: cfg.update(max_steps="30")), 2,
     r"max_steps is '30' \(str\), where the checkpoint has 2 \(int\)"),
    ("train: resume with config.json and the command line disagreeing", TRAIN,
     lambda c: c.resume_edited(lambda cfg: cfg.update(val_every=3), "--val_every=4"), 2,
     "--val_every is 4 on the command line but 3 in the edited"),
    ("train: resume whose config.json is not JSON", TRAIN, lambda c: c.earlier_run(
        "checkpoint.pt", "log.jsonl", config=b"{") and c.train("--max_steps=2", "--resume=True"), 1, "is not JSON"),
    ("train: resume with fewer steps than taken", TRAIN, lambda c: c.resume("--max_steps=1"), 2,
     "--max_steps=1 is below the checkpoint's step 2"),
    ("train: resume with a schedule that changes the steps taken", TRAIN,
     lambda c: c.resume("--schedule.warmup_steps=2"), 2,
     r"--schedule.warmup_steps: 1 in the checkpoint, 2 now: this changes the schedule of step 0, which the "
     r"checkpoint has already taken \(lr factor 1 then, 0.5 now\)"),
    ("train: resume with another val set", TRAIN, lambda c: c.resume("--val_tokens=256"), 2,
     "change what the run's records measure: --val_tokens: 512 in the checkpoint, 256 now"),
    # train.py: implementations checked for the device before anything is built
    ("train: triton MLP on a CPU without the interpreter", TRAIN,
     lambda c: c.without_interpreter("--model.relu2_mlp_impl=triton"), 2,
     r"--model.relu2_mlp_impl=triton cannot run on cpu: "
     "Triton kernels run on CUDA GPUs, or on the CPU under Triton's interpreter.*TRITON_INTERPRET=1"),
    # bench.speedrun
    ("speedrun: --seed is not --seeds", SPEEDRUN, lambda c: ["--seed", "5", f"--out={c.tmp / 'o'}"], 2,
     "--seed: the seeds are chosen here"),
    ("speedrun: no seeds", SPEEDRUN, lambda c: ["--seeds=0", "--target=4", f"--out={c.tmp / 'o'}"], 2,
     "--seeds must be >= 1"),
    ("speedrun: seeds not a number", SPEEDRUN, lambda c: ["--seeds=x", f"--out={c.tmp / 'o'}"], 2,
     "argument --seeds: invalid int value"),
    ("speedrun: unknown optimizer", SPEEDRUN, lambda c: ["--optimizers=adamw,adam", "--target=4",
                                                         f"--out={c.tmp / 'o'}"], 2,
     r"unknown optimizer or recipe 'adam'; optimizers: (\w+, )*adamw, .*; recipes: "),
    ("speedrun: target not a number", SPEEDRUN, lambda c: ["--target=low", f"--out={c.tmp / 'o'}"], 2,
     "--target 'low' is neither"),
    ("speedrun: z of 0", SPEEDRUN, lambda c: ["--target=4", "--z=0", f"--out={c.tmp / 'o'}"], 2,
     "z must be a positive number"),
    ("speedrun: tune one not run", SPEEDRUN, lambda c: ["--optimizers=adamw", "--tune=sgd", "--target=4",
                                                        f"--out={c.tmp / 'o'}"], 2, "--tune sgd: sgd not in"),
    ("speedrun: its own option passed to train", SPEEDRUN, lambda c: ["--target=4", f"--out_dir={c.tmp}",
                                                                       f"--out={c.tmp / 'o'}"], 2, "use --out"),
    ("speedrun: bad train option", SPEEDRUN, lambda c: ["--target=4", "--max_steps=-5", f"--out={c.tmp / 'o'}"], 2,
     "--max_steps=-5 must be >= 0"),
    ("speedrun: results missing", SPEEDRUN, lambda c: [f"--from-results={c.tmp / 'no.json'}", f"--out={c.tmp / 'o'}"],
     1, "cannot read --from-results"),
    ("speedrun: results not JSON", SPEEDRUN, lambda c: [f"--from-results={c.file('r.json', b'{')}",
                                                        f"--out={c.tmp / 'o'}"], 1, "is not JSON"),
    ("speedrun: results without runs", SPEEDRUN, lambda c: [f"--from-results={c.file('r.json', b'{}')}",
                                                            f"--out={c.tmp / 'o'}"], 1, "holds no runs to judge"),
    ("speedrun: results of another preset", SPEEDRUN, lambda c: [f"--from-results={c.file('r.json', TINY_RESULTS)}",
                                                                 "--preset=track3-cpu", f"--out={c.tmp / 'o'}"], 2,
     r"--preset track3-cpu disagrees with the runs' preset 'tiny' \(recorded in \S+r.json\); leave --preset out to "
     "judge them with the rule they recorded"),
    # bench.summary
    ("summary: no file given", SUMMARY, lambda c: [], 2, "the following arguments are required: RUN"),
    ("summary: unknown flag", SUMMARY, lambda c: [f"{c.file('b.json', SUMMARY_JSON)}", "--wide"], 2,
     "unrecognized arguments: --wide"),
    ("summary: missing file", SUMMARY, lambda c: [str(c.tmp / "none.json")], 1,
     "none.json: no such file, and no run saved under"),
    ("summary: not JSON", SUMMARY, lambda c: [str(c.file("b.json", b"\x00\x01"))], 1, "is not JSON"),
    ("summary: not a benchmark file", SUMMARY, lambda c: [str(c.file("b.json", b"[1, 2]"))], 1,
     "no 'benchmarks' list"),
    ("summary: record without a name", SUMMARY, lambda c: [str(c.file("b.json", b'{"benchmarks": [{}]}'))], 1,
     r"benchmarks\[0\] has no 'name'"),
    # data.prepare
    ("prepare: no command", PREPARE, lambda c: [], 2, "the following arguments are required: command"),
    ("prepare: abbreviated option", PREPARE, lambda c: ["text", str(c.data), "--out", str(c.tmp / "o"), "--val",
                                                        "0.1"], 2, "unrecognized arguments: --val"),
    ("prepare: workers 0", PREPARE, lambda c: ["text", str(c.data), "--out", str(c.tmp / "o"), "--workers", "0"], 2,
     "--workers must be >= 1"),
    ("prepare: val fraction 1.5", PREPARE, lambda c: ["text", str(c.data), "--out", str(c.tmp / "o"),
                                                      "--val-fraction", "1.5"], 2, r"--val-fraction must lie in"),
    ("prepare: shard tokens 0", PREPARE, lambda c: ["text", str(c.data), "--out", str(c.tmp / "o"), "--shard-tokens",
                                                    "0"], 2, "--shard-tokens must be >= 1"),
    ("prepare: name with a space", PREPARE, lambda c: ["text", str(c.data), "--out", str(c.tmp / "o"), "--name",
                                                       "a b"], 2, "--name 'a b' must be"),
    ("prepare: limit-files 0", PREPARE, lambda c: ["text", str(c.data), "--out", str(c.tmp / "o"), "--limit-files",
                                                   "0"], 2, "--limit-files must be >= 1"),
    ("prepare: no train shards", PREPARE, lambda c: ["fineweb", "--train-shards", "0", "--out", str(c.tmp / "o")], 2,
     "--train-shards must be >= 1"),
    ("prepare: missing input", PREPARE, lambda c: ["text", str(c.tmp / "nope"), "--out", str(c.tmp / "o")], 1,
     "no such file or folder"),
    ("prepare: docs dir missing", PREPARE, lambda c: ["pydocs", "--out", str(c.tmp / "o"), "--docs-dir",
                                                      str(c.tmp / "nodocs")], 1,
     r"--docs-dir \S+/nodocs: no such folder"),
    ("prepare: an empty file", PREPARE, lambda c: ["text", str(c.file("e.txt", b"")), "--out", str(c.tmp / "o" / "p")],
     1, r"e.txt is empty \(0 bytes\): there is no text to tokenize"),
    ("prepare: a binary file", PREPARE, lambda c: ["text", str(c.file("b.txt", bytes(range(256)))), "--out",
                                                   str(c.tmp / "o" / "p"), "--workers", "1"], 1,
     r"b.txt is not UTF-8 text \(byte 0x80 at offset 128: a binary file\?\); data.prepare text reads UTF-8 text"),
    ("prepare: .jsonl without records", PREPARE, lambda c: ["text", str(c.file("r.jsonl", b"\n\n")), "--out",
                                                             str(c.tmp / "o" / "p")], 1, "no documents in .*r.jsonl"),
    ("prepare: one document too short to hold out val", PREPARE, lambda c: [
        "text", str(c.file("a.txt", b"a")), "--out", str(c.tmp / "o" / "p"), "--workers", "1"], 1,
     "holds 1 token.*too few to hold out 0.05 of them as val"),
    ("prepare: hub out of reach", PREPARE, lambda c: ["fineweb", "--train-shards", "1", "--out", str(c.tmp / "o"),
                                                      "--source", _closed_port_url()], 1,
     r"cannot reach http://127.0.0.1:\d+ .*--source FOLDER"),
    ("prepare: hub source neither URL nor folder", PREPARE, lambda c: ["fineweb", "--train-shards", "1", "--out",
                                                                       str(c.tmp / "o"), "--source", "ftp:x"], 1,
     "neither an http"),
]


TINY_RESULTS = json.dumps({"preset": "tiny", "rule_params": {"target": 10.8},
                           "runs": {"adamw": [{"curve": [{"step": 0, "val_loss": 10.9}]}]}}).encode()


def _closed_port_url():
    """An http URL of a local port nothing listens on: as unreachable as the hub is offline, and as fast to fail."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _shorter(path):
    """The same shard name with other contents: a run resumed on it would read other tokens."""
    shards.write_shard(path, shards.load_shard(path)[:-1000])
    return path


@pytest.mark.parametrize("main, argv, status, pattern", [
    pytest.param(*c[1:], id=c[0], marks=[NO_GPU] if "without a GPU" in c[0] else []) for c in CLI_CASES])
def test_command_lines(main, argv, status, pattern, text_shards, finished_run, tmp_path, capsys, monkeypatch):
    ctx = Ctx(tmp_path, text_shards, finished_run)
    try:
        args = argv(ctx)
        for name in ctx.unset_env:
            monkeypatch.delenv(name, raising=False)
        before = _snapshot(tmp_path, text_shards, finished_run)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            cli.run_main(main, args)
        err = capsys.readouterr().err
        lines = err.splitlines()
        assert exc.value.code == status, err
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert re.search(pattern, lines[0]), lines[0]
        assert _snapshot(tmp_path, text_shards, finished_run) == before  # nothing written, nothing lost
    finally:
        for proc in ctx.procs:
            proc.kill()
            proc.wait()


def test_the_table_covers_every_entry_point():
    counts = {m: sum(1 for c in CLI_CASES if c[1] is m) for m in (TRAIN, SPEEDRUN, SUMMARY, PREPARE)}
    assert len(CLI_CASES) + len(KERNEL_CASES) >= 50 and min(counts.values()) >= 5, counts


def test_a_stale_lock_is_taken_over_with_a_note(text_shards, tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "lock").write_text(f"{dead.pid} {socket.gethostname()}\n")
    summary = train.main([*_train_args(text_shards, tmp_path), "--max_steps=1", "--val_every=1"])
    assert summary["steps"] == 1
    assert f"taking over the stale lock {tmp_path / 'r' / 'lock'} of PID {dead.pid}" in capsys.readouterr().err
    assert not (tmp_path / "r" / "lock").exists()  # released at the end


def _python(*args):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_a_process_shows_one_line_and_a_traceback_only_with_debug():
    """Through the real process boundary: the exit status, one stderr line, --debug and SPEEDRUN_DEBUG."""
    plain = _python("train.py", "--max_steps=-1")
    assert plain.returncode == 2 and plain.stderr == "error: --max_steps=-1 must be >= 0\n", plain.stderr
    debug = _python("train.py", "--max_steps=-1", "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr
    prepare_bad = _python("-m", "data.prepare", "text", "x", "--out", "o", "--workers", "0")
    assert prepare_bad.returncode == 2 and prepare_bad.stderr.count("\n") == 1 and "--workers" in prepare_bad.stderr


def test_help_lists_every_option_with_its_default():
    proc = _python("train.py", "--help")
    assert proc.returncode == 0 and not proc.stderr
    for option in ("--max_steps=100", "--optim.lr=0.003", "--model.n_layer=4", "--model.attention_impl=eager",
                   "--val_tokens=16384", "--resume=False"):
        assert option in proc.stdout, option
    assert "Rows per micro-batch per rank." in proc.stdout  # the fields' docstrings are their help


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_no_preset_can_loop_forever(preset, text_shards, tmp_path):
    """A negative step count is refused; a 0-step run of every preset (at a tiny size) returns."""
    with pytest.raises(ConfigError, match="max_steps=-1"):
        resolve([f"--preset={preset}", "--max_steps=-1"])
    summary = train.main([f"--preset={preset}", f"--data_dir={text_shards}", f"--out_dir={tmp_path}",
                          "--train_pattern=*_train_*.bin", "--val_pattern=*_val_*.bin", "--max_steps=0",
                          "--model.n_layer=1", "--model.n_head=1", "--model.n_embd=32", "--batch_size=1",
                          "--seq_len=16", "--val_tokens=16", "--grad_accum=1", "--reference_world_size=0",
                          "--compile=off", "--dtype=fp32", "--threads=1"])
    assert summary["steps"] == 0 and math.isfinite(summary["final_val_loss"])
