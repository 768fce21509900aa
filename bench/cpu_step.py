"""CPU training-step time against karpathy/nanoGPT at the same shape, side by side in one process.

    git clone https://github.com/karpathy/nanoGPT /tmp/nanoGPT
    python -m bench.cpu_step --nanogpt /tmp/nanoGPT                                  # 4L 4H d256, 16 × 256
    python -m bench.cpu_step --nanogpt /tmp/nanoGPT --model.value_embeds=False       # overrides go to ours

(a) nanoGPT: GPT and GPTConfig imported from the checkout's model.py (never copied here), bias=False and
    dropout 0 as its train.py defaults, and the step its train.py runs: forward (logits, loss), backward,
    clip_grad_norm_ at 1.0, the AdamW of its configure_optimizers (wd 0.1 on the 2-D tensors, lr 6e-4,
    betas (0.9, 0.95); fused only on CUDA, so torch's default foreach AdamW here), zero_grad(set_to_none).
(b) ours: train.Trainer.train_step of --preset at the same layers, heads, width, rows × tokens and vocab,
    fp32 (no autocast, fp32 Newton-Schulz), eager (nanoGPT's compile is off too; the CPU's loss compiles its own
    row pass, kernels/linear_cross_entropy_chunked.py), --optimizer (default track3-muon, the preset's baseline recipe;
    track3-adam puts AdamW beside AdamW). Other `--key=value` arguments are overrides of our config.

Both read batches of the same train shards (--data_dir, default the preset's) through data.loader.TokenLoader
and run under the same torch thread count. The two steps alternate, one each, so drifting load hits both
alike; each figure is the median (p20-p80) over --steps timed steps after --warmup untimed ones. Each step
is split by hooks into forward (model forward incl. the loss), backward (to the last gradient accumulated),
optimizer (optimizer.step) and the rest (batch, loss sync, grad norm and clipping, zero_grad); --profile N
adds torch.profiler's top operators over N more steps of ours.

Timings mean something only on a quiet machine. The script waits (up to --wait seconds) for a 1-minute load
below --max-load before it starts, prints the load, and measures how many cores *other* processes used
during the timing (bench.provenance.OtherCpuUse); figures taken on a busy machine are labelled NOT QUIET.
"""

import argparse
import contextlib
import dataclasses
import importlib.util
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from bench import command_help, harness, provenance
from data.loader import TokenLoader
from speedrun.config import TrainConfig, resolve

NANOGPT_OPTIM = dict(weight_decay=0.1, learning_rate=6e-4, betas=(0.9, 0.95))  # nanoGPT train.py defaults
NANOGPT_GRAD_CLIP = 1.0


class NanoGPTError(RuntimeError):
    """The --nanogpt path holds no usable nanoGPT model.py."""


def load_nanogpt(path) -> object:
    """Import model.py from a nanoGPT checkout (a folder, or the file itself) as module `nanogpt_model`
    (not `model`: that name is this repository's package)."""
    path = Path(path)
    file = path / "model.py" if path.is_dir() else path
    if not file.is_file():
        raise NanoGPTError(f"--nanogpt {path}: no model.py there (git clone https://github.com/karpathy/nanoGPT)")
    spec = importlib.util.spec_from_file_location("nanogpt_model", file)
    module = importlib.util.module_from_spec(spec)
    sys.modules["nanogpt_model"] = module  # dataclasses resolve the module by name while the file runs
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules["nanogpt_model"]
        raise NanoGPTError(f"{file}: import failed: {type(e).__name__}: {e}") from e
    missing = [n for n in ("GPT", "GPTConfig") if not hasattr(module, n)]
    if missing or not hasattr(getattr(module, "GPT", None), "configure_optimizers"):
        raise NanoGPTError(f"{file} is not nanoGPT's model.py: no {missing or ['GPT.configure_optimizers']}")
    return module


@dataclasses.dataclass
class Shape:
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    batch_size: int = 16
    seq_len: int = 256
    threads: int = 2


def our_config(preset: str, shape: Shape, optimizer: str, overrides: list[str]) -> TrainConfig:
    """Our TrainConfig at `shape`: fp32, eager, CPU, one micro-batch, a one-batch val set (never evaluated)."""
    return resolve([
        f"--preset={preset}", f"--optimizer={optimizer}", f"--model.n_layer={shape.n_layer}",
        f"--model.n_head={shape.n_head}", f"--model.n_embd={shape.n_embd}", f"--model.max_seq_len={shape.seq_len}",
        f"--batch_size={shape.batch_size}", f"--seq_len={shape.seq_len}", "--grad_accum=1",
        "--reference_world_size=0", f"--val_tokens={shape.batch_size * shape.seq_len}",
        f"--threads={shape.threads}", "--device=cpu", "--compile=off", "--dtype=fp32", "--optim.ns_dtype=fp32",
        *overrides,
    ])


class NanoGPTStep:
    """nanoGPT's model, optimizer and training step at `shape`, fed from TokenLoader over `files`."""

    def __init__(self, module, shape: Shape, vocab_size: int, files, seed: int = 0):
        torch.manual_seed(seed)
        config = module.GPTConfig(block_size=shape.seq_len, vocab_size=vocab_size, n_layer=shape.n_layer,
                                  n_head=shape.n_head, n_embd=shape.n_embd, dropout=0.0, bias=False)
        with contextlib.redirect_stdout(io.StringIO()):  # it prints parameter counts
            self.model = module.GPT(config)
            self.optimizer = self.model.configure_optimizers(device_type="cpu", **NANOGPT_OPTIM)
        self.params = sum(p.numel() for p in self.model.parameters())  # the tied head counted once
        self.loader = TokenLoader(files, batch_size=shape.batch_size, seq_len=shape.seq_len)

    def __call__(self) -> float:
        x, y = self.loader.next_batch()
        _, loss = self.model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), NANOGPT_GRAD_CLIP)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()


class PhaseTimer:
    """Wall-clock marks inside our step from hooks, so Trainer.train_step itself is what gets timed."""

    PHASES = ("forward", "backward", "optimizer", "rest")

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.marks = {}
        model.register_forward_pre_hook(lambda *_: self._mark("forward_start"))
        model.register_forward_hook(lambda *_: self._mark("forward_end"))
        for p in model.parameters():
            if p.requires_grad:  # the last one to fire ends the backward
                p.register_post_accumulate_grad_hook(lambda _: self._mark("backward_end"))
        optimizer.register_step_pre_hook(lambda *_: self._mark("optimizer_start"))
        optimizer.register_step_post_hook(lambda *_: self._mark("optimizer_end"))

    def _mark(self, name):
        self.marks[name] = time.perf_counter()

    def phases(self, total_s: float) -> dict:
        m = self.marks
        out = {"forward": m["forward_end"] - m["forward_start"],
               "backward": m["backward_end"] - m["forward_end"],
               "optimizer": m["optimizer_end"] - m["optimizer_start"]}
        out["rest"] = total_s - sum(out.values())
        self.marks = {}
        return out


def quantiles_ms(seconds: list[float]) -> dict:
    median, p20, p80 = harness.quantiles_ms(seconds, harness.QUANTILES)
    return {"median": median, "p20": p20, "p80": p80}


def wait_for_quiet(max_load: float, wait_s: float) -> tuple[float, bool]:
    """Poll the 1-minute load average until it drops below max_load or wait_s passes: (load, quiet)."""
    deadline = time.monotonic() + wait_s
    while True:
        load = os.getloadavg()[0]
        if load < max_load:
            return load, True
        if time.monotonic() >= deadline:
            return load, False
        print(f"waiting for a quiet machine: 1-min load {load:.2f} >= {max_load}", flush=True)
        time.sleep(min(15.0, max(0.0, deadline - time.monotonic())))


def measure(nanogpt_step, trainer, *, steps: int, warmup: int) -> dict:
    """Alternate one nanoGPT step and one of ours; warm-up steps are run and dropped."""
    timers = {"nanogpt": PhaseTimer(nanogpt_step.model, nanogpt_step.optimizer),
              "ours": PhaseTimer(trainer.model, trainer.optimizer)}
    seconds = {"nanogpt": [], "ours": []}
    phases = {"nanogpt": [], "ours": []}
    steps_of = {"nanogpt": lambda i: nanogpt_step(), "ours": trainer.train_step}
    for i in range(warmup + steps):
        for side in ("nanogpt", "ours"):
            start = time.perf_counter()
            steps_of[side](i)
            elapsed = time.perf_counter() - start
            split = timers[side].phases(elapsed)
            if i >= warmup:
                seconds[side].append(elapsed)
                phases[side].append(split)
    out = {}
    for side in ("nanogpt", "ours"):
        out[f"{side}_s"] = seconds[side]
        out[f"{side}_phases_ms"] = {k: 1e3 * statistics.median(p[k] for p in phases[side]) for k in PhaseTimer.PHASES}
    return out


def profile_ours(trainer, steps: int, first_step: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            trainer.train_step(first_step + i)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)


def report(r: dict) -> str:
    s, m = r["shape"], r["machine"]
    label = "" if r["quiet"] else "  [NOT QUIET: other processes were running; figures disturbed]"

    def row(name, params, t):
        return (f"{name:<34} {params / 1e6:>7.2f}M {t['median']:>10.1f} ({t['p20']:.1f}-{t['p80']:.1f})"
                f" {r['tokens_per_step'] / t['median'] * 1e3:>10,.0f}")

    def phases(side):
        ph = r[f"{side}_phases_ms"]
        return ", ".join(f"{k} {ph[k]:.1f}" for k in PhaseTimer.PHASES)

    lines = [
        f"machine: {provenance.machine_line(m)} (before timing); {m['platform']}, torch {m['torch']}{label}",
        f"shape: {s['n_layer']} layers, {s['n_head']} heads, d={s['n_embd']}, {s['batch_size']} rows × "
        f"{s['seq_len']} tokens, vocab {r['vocab_size']}, fp32, eager, {s['threads']} threads; "
        f"median of {r['steps']} steps after {r['warmup']} warm-up, alternating",
        f"{'':<34} {'params':>8} {'ms/step (p20-p80)':>24} {'tokens/s':>10}",
        row("nanoGPT (AdamW, its train.py step)", r["nanogpt_params"], r["nanogpt_ms"]),
        row(f"ours ({r['preset']}, {r['optimizer']})", r["ours_params"], r["ours_ms"]),
        f"ratio ours / nanoGPT: {r['ratio']:.2f}",
        f"by phase (median ms)  nanoGPT: {phases('nanogpt')}",
        f"                      ours:    {phases('ours')}",
        f"other processes used {r['other_cores']:.2f} cores on average during the timing "
        f"({s['threads']} threads here); 1-min load {m['loadavg_1m']:.2f} before, {r['loadavg_1m_after']:.2f} "
        f"after (the latter includes this run)",
    ]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_step", **command_help(__doc__))
    parser.add_argument("--nanogpt", required=True, help="a nanoGPT checkout (or its model.py)")
    parser.add_argument("--preset", default="track3-cpu", help="our config preset the shape overrides apply to")
    parser.add_argument("--optimizer", default="track3-muon",
                        help="our optimizer or recipe (nanoGPT always runs its AdamW)")
    for f in dataclasses.fields(Shape):
        parser.add_argument(f"--{f.name}", type=int, default=f.default)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    parser.add_argument("--profile", type=int, default=0, help="then N steps of ours under torch.profiler")
    parser.add_argument("--max-load", type=float, default=0.5, help="1-min load below which the machine is quiet")
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to wait for a quiet machine")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args, overrides = parser.parse_known_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
    shape = Shape(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Shape)})
    try:
        module = load_nanogpt(args.nanogpt)
    except NanoGPTError as e:
        raise SystemExit(f"error: {e}") from e

    import train  # after argument checks: importing the trainer pulls in the kernels

    cfg = our_config(args.preset, shape, args.optimizer, overrides)
    trainer = train.Trainer(cfg)  # sets the thread count
    theirs = NanoGPTStep(module, shape, cfg.model.vocab_size, trainer.train_files)
    load_before, quiet = wait_for_quiet(args.max_load, args.wait)
    machine = provenance.machine()
    with provenance.OtherCpuUse() as other:
        times = measure(theirs, trainer, steps=args.steps, warmup=args.warmup)
    # Another job holding a tenth of a core or more disturbed the figures, whatever the load said before.
    quiet = quiet and other.cores is not None and other.cores < 0.1
    result = {
        "command": [sys.executable, "-m", "bench.cpu_step", *(sys.argv[1:] if argv is None else argv)],
        "commit": provenance.git_commit(), "machine": machine, "quiet": quiet, "load_before": load_before,
        "other_cores": other.cores if other.cores is not None else float("nan"),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
        "shape": dataclasses.asdict(shape), "vocab_size": cfg.model.vocab_size, "preset": args.preset,
        "optimizer": args.optimizer, "overrides": overrides, "nanogpt": str(args.nanogpt),
        "steps": args.steps, "warmup": args.warmup, "tokens_per_step": shape.batch_size * shape.seq_len,
        "nanogpt_params": theirs.params, "ours_params": trainer.model.num_params(),
        "nanogpt_ms": quantiles_ms(times["nanogpt_s"]), "ours_ms": quantiles_ms(times["ours_s"]),
        **times,
    }
    result["ratio"] = result["ours_ms"]["median"] / result["nanogpt_ms"]["median"]
    print(report(result))
    if args.profile:
        result["profile"] = profile_ours(trainer, args.profile, args.warmup + args.steps)
        print(result["profile"])
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
