"""Run a script bench.export_track3 wrote where this repository cannot be imported: a fresh interpreter
(`python -I`) whose import system refuses every top-level name of the checkout, so a script that still needed one
of its modules fails here rather than in a modded-nanogpt checkout. check() is `--check`: two steps of a tiny
model on the CPU over random shards; run_isolated() also records the losses, parameter norms and val losses for
the tests that compare the script with the trainer.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from speedrun.cli import UserError

REPO = Path(__file__).resolve().parents[1]


DRIVER = '''"""Run an exported script where the repository's modules cannot be imported (bench.export_track3)."""
import importlib.abc
import importlib.util
import json
import os
import sys

BLOCKED = set({blocked!r})


class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{{name}} is part of the repository: the exported script must not import it",
                                      name=name)
        return None


sys.meta_path.insert(0, Blocked())
script, record, options = sys.argv[1], sys.argv[2], sys.argv[3:]


class Recorder:
    def __init__(self):
        self.losses, self.norms, self.vals = [], [], []

    def after_step(self, step, loss, model):
        self.losses.append(loss.item())
        self.norms.append({{n: p.detach().double().norm().item() for n, p in model.named_parameters()}})

    def after_validation(self, step, val_loss):
        self.vals.append(val_loss)


spec = importlib.util.spec_from_file_location("exported_track3_script", script)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
recorder = Recorder()
module.main(options, hooks=recorder)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
if leaked:
    raise SystemExit(f"the exported script imported the repository's {{leaked}}")
if record != "-" and int(os.environ.get("RANK", "0")) == 0:
    with open(record, "w") as f:
        json.dump({{"losses": recorder.losses, "norms": recorder.norms, "vals": recorder.vals}}, f)
'''


def write_driver(directory: Path) -> Path:
    """The driver that runs a script with every top-level name of this repository unimportable (the venv's
    editable install would otherwise serve them from anywhere) and checks none was imported."""
    from bench.flatten import repository_top_names

    path = Path(directory) / "run_isolated.py"
    path.write_text(DRIVER.format(blocked=sorted(repository_top_names(REPO))))
    return path


def run_isolated(script: Path, options: list[str], *, cwd: Path, record: Path | None = None, nproc: int = 1,
                 timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `script` with `options` in a fresh interpreter (`python -I`, working directory `cwd`, the repository
    blocked) on `nproc` processes (torchrun, gloo on the CPU); with `record`, rank 0 writes the losses, every
    parameter's norm after each step and the val losses there as JSON."""
    driver = write_driver(cwd)
    args = [str(driver), str(script), str(record) if record else "-", *options]
    if nproc > 1:
        command = [sys.executable, "-I", "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   *args]
    else:
        command = [sys.executable, "-I", *args]
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    environment.update(OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)


def tiny_options(cfg, data_dir: Path, log_dir: Path, *, steps: int = 2) -> list[str]:
    """Options of a tiny CPU run of an exported script over shards in data_dir (see write_tiny_shards)."""
    return ["--device=cpu", "--dtype=fp32", "--compile=off", "--threads=1", f"--data_dir={data_dir}",
            "--train_pattern=tiny_train_*.bin", "--val_pattern=tiny_val_*.bin", "--batch_size=2", "--seq_len=32",
            "--reference_world_size=1", "--grad_accum=1", f"--max_steps={steps}", "--val_every=1",
            "--val_tokens=64", "--log_every=1", f"--log_dir={log_dir}", "--model.n_layer=1", "--model.n_head=1",
            f"--model.n_embd={cfg.model.head_dim}", "--model.vocab_size=128", "--model.max_seq_len=32"]


def write_tiny_shards(directory: Path, seed: int = 0):
    """A train and a val shard of random tokens below 128, in the FineWeb shard format (data.shards)."""
    import numpy as np

    from data.shards import write_shard

    rng = np.random.default_rng(seed)
    Path(directory).mkdir(parents=True, exist_ok=True)
    write_shard(Path(directory) / "tiny_train_000000.bin", rng.integers(0, 128, 4096))
    write_shard(Path(directory) / "tiny_val_000000.bin", rng.integers(0, 128, 1024))


def check(script: Path, cfg) -> str:
    """Run the written script for two steps of a tiny model on the CPU where the repository cannot be imported;
    returns its last log line, or raises UserError with the end of its output."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_tiny_shards(tmp / "data")
        done = run_isolated(Path(script).resolve(), tiny_options(cfg, tmp / "data", tmp / "logs"), cwd=tmp)
        if done.returncode:
            tail = (done.stdout + done.stderr).strip().splitlines()[-12:]
            raise UserError(f"{script}: the check failed (exit status {done.returncode}) running it where the "
                            "repository cannot be imported:\n" + "\n".join(tail))
        return done.stdout.strip().splitlines()[-1]
