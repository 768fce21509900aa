"""Time to a loss beside karpathy/nanoGPT: its own train.py with its AdamW, and our recipes, at one shape on the CPU.

    git clone https://github.com/karpathy/nanoGPT /tmp/nanoGPT
    python -m bench.vs_nanogpt --nanogpt /tmp/nanoGPT --out out/vs_nanogpt                 # track3-cpu's shape
    python -m bench.vs_nanogpt --nanogpt /tmp/nanoGPT --recipes track3-muon,track3-normuon --lrs 3e-3,6e-3,1.2e-2

The data. One split for both: nanoGPT's own data/pydocs/{train,val}.bin when the checkout has them (uint16 tokens,
its format), else this project's shards of --preset (python -m data.prepare pydocs) written in that format. Our
trainer reads the same tokens as shards (OUT/data); nanoGPT runs in a work folder (OUT/nanogpt, holding its
configurator.py's link, data/pydocs and its out_dir; the checkout is only read) whose val.bin is the first
--val-tokens tokens of the val split, the same tokens our runs validate on.

The shape: --preset's (track3-cpu: 4 layers, one 128-wide head, 4 × 256 tokens a step, vocab 50304), fp32, 2 torch
threads on both sides (--threads), no torch.compile. nanoGPT: `python -u train.py --dataset=pydocs --device=cpu
--dtype=float32 --compile=False` with that shape, dropout 0, no bias, its AdamW (weight decay 0.1, betas (0.9,
0.95), clipping at 1.0), --steps iterations (default: the preset's step budget, so both sides get the same
tokens) with its cosine schedule (lr_decay_iters = --steps, min_lr = lr/10, warmup_iters --warmup), evaluated every
--eval-every steps on --eval-iters random batches of val.bin. Its learning rate is the tuned parameter: the grid
--lrs, widened by factors of 2 on the side of the best point until the best point is interior (at most --widen
times; the report says if it stayed at an edge). Ours: `python train.py --preset PRESET --optimizer RECIPE` per
--recipes, as published (each recipe's own step budget), validated on the first --val-tokens of the val split.

The common loss level. Each nanoGPT setting's final weights (its out_dir/ckpt.pt, written at its last
evaluation) are evaluated here on exactly the val windows our runs validate on, with nanoGPT's own model.py;
the best learning rate is the one with the lowest such loss, and that loss is the level L. nanoGPT's time is its
training seconds to its last step; ours, each recipe's training seconds until its val loss first reaches L
(linear between the two validations around it; the next logged validation is given too). Ratio = ours / nanoGPT's.

Seconds. Training only, on both sides: our trainer's clock (validation and the warm-up step excluded). nanoGPT's
from its printed lines, timestamped here as they arrive (python -u): a step runs from the line before it (the
previous "iter" line, or the evaluation's and checkpoint's lines) to its own "iter" line; evaluations and
checkpoint writes are not counted (a write follows its "saving checkpoint" line, so the time of writing that
checkpoint, measured here afterwards, is taken off the next step); its first iteration (first-call allocations,
which our warm-up excludes) counts as the median iteration. One run at a time; before each the 1-minute load must
be below --max-load (waiting up to --wait seconds; --allow-load runs anyway and labels the figures), and every run
records the cores other processes used while it ran (bench.harness.OtherCpuUse), the load before and after, and
the machine.
"""

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

from bench import harness
from speedrun import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NANOGPT_FILES = ("train.py", "model.py", "configurator.py")
STEP_LINE = re.compile(r"^step (\d+): train loss ([\d.naninf]+), val loss ([\d.naninf]+)")
ITER_LINE = re.compile(r"^iter (\d+): loss ([\d.naninf-]+), time ([\d.]+)ms")


class NanoGPTMissing(cli.UserError):
    """--nanogpt is not a nanoGPT checkout."""


def check_checkout(path: str) -> str:
    path = os.path.abspath(os.path.expanduser(path))
    missing = [f for f in NANOGPT_FILES if not os.path.isfile(os.path.join(path, f))]
    if missing:
        raise NanoGPTMissing(f"--nanogpt {path}: no {', '.join(missing)} there; pass a karpathy/nanoGPT checkout "
                             "(git clone https://github.com/karpathy/nanoGPT)")
    return path


# ----------------------------------------------------------------------------------------------- data


def prepare_data(nanogpt: str, cfg, out: str, val_tokens: int) -> dict:
    """The one split both trainers read: OUT/data (our shards) and OUT/nanogpt/data/pydocs (nanoGPT's .bin files),
    from nanoGPT's data/pydocs when it has them, else from our shards in cfg.data_dir."""
    from data.shards import list_shards, load_shard, write_shard

    ours = os.path.join(out, "data")
    theirs = os.path.join(out, "nanogpt", "data", "pydocs")
    os.makedirs(ours, exist_ok=True)
    os.makedirs(theirs, exist_ok=True)
    given = os.path.join(nanogpt, "data", "pydocs")
    if all(os.path.isfile(os.path.join(given, f"{s}.bin")) for s in ("train", "val")):
        source = f"nanoGPT's {given}/{{train,val}}.bin"
        train = np.memmap(os.path.join(given, "train.bin"), dtype=np.uint16, mode="r")
        val = np.memmap(os.path.join(given, "val.bin"), dtype=np.uint16, mode="r")
    else:
        try:
            train_files = list_shards(cfg.data_dir, cfg.train_pattern)
            val_files = list_shards(cfg.data_dir, cfg.val_pattern)
        except cli.UserError as e:
            raise cli.UserError(f"{e} (or put nanoGPT-format data/pydocs/{{train,val}}.bin in the checkout)") from e
        source = f"this project's shards in {cfg.data_dir}"
        train = np.concatenate([load_shard(f) for f in train_files])
        val = np.concatenate([load_shard(f) for f in val_files])
    if len(val) < val_tokens + 1:
        raise cli.UserError(f"the val split holds {len(val)} tokens; --val-tokens {val_tokens} needs {val_tokens + 1}")
    write_shard(os.path.join(ours, "pydocs_train_000000.bin"), np.asarray(train))
    write_shard(os.path.join(ours, "pydocs_val_000000.bin"), np.asarray(val[:val_tokens + 1]))
    np.asarray(train, dtype=np.uint16).tofile(os.path.join(theirs, "train.bin"))
    np.asarray(val[:val_tokens + 1], dtype=np.uint16).tofile(os.path.join(theirs, "val.bin"))
    return {"source": source, "train_tokens": int(len(train)), "val_tokens": val_tokens, "our_data_dir": ours,
            "nanogpt_data_dir": theirs}


# ----------------------------------------------------------------------------------------------- quiet


def wait_quiet(max_load: float, wait_s: float, allow_load: bool, what: str) -> float:
    """The 1-minute load once it is below max_load (polling up to wait_s); above it after the wait: an error, or
    with allow_load a warning (the figures are then labelled)."""
    deadline = time.monotonic() + wait_s
    while True:
        load = os.getloadavg()[0]
        if load < max_load:
            return load
        if time.monotonic() >= deadline:
            if not allow_load:
                raise cli.UserError(f"the machine is busy (1-minute load {load:.2f} >= --max-load {max_load}) before "
                                    f"{what}: timings would measure the other jobs. Wait (--wait SECONDS), or pass "
                                    "--allow-load to time anyway with the figures labelled")
            print(f"warning: timing {what} under load {load:.2f} (--allow-load): its seconds are disturbed",
                  flush=True)
            return load
        time.sleep(min(15.0, max(0.0, deadline - time.monotonic())))


def _timed(what: str, argv: list, cwd: str, env: dict, log_path: str, max_load, wait_s, allow_load) -> dict:
    """Run one command after waiting for a quiet machine; every output line timestamped as it arrives."""
    load_before = wait_quiet(max_load, wait_s, allow_load, what)
    lines = []
    with harness.OtherCpuUse() as other, open(log_path, "w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1)
        for line in proc.stdout:
            now = time.perf_counter() - start
            lines.append((now, line.rstrip("\n")))
            log.write(f"{now:10.3f} {line}")
        proc.wait()
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n    ".join(text for _, text in lines[-12:])
        raise cli.UserError(f"{what} failed (exit {proc.returncode}); its log {log_path} ends:\n    {tail}")
    return {"lines": lines, "wall_s": wall, "load_before": round(load_before, 2),
            "load_after": round(os.getloadavg()[0], 2), "other_cores": other.cores}


# ----------------------------------------------------------------------------------------------- nanoGPT


def nanogpt_seconds(lines: list, save_s: float = 0.0) -> dict:
    """nanoGPT's training seconds from its timestamped lines: the val curve [(step, val loss, seconds)] and the
    iterations' seconds. A step's time runs from the last line before it to its "iter" line, less `save_s` after a
    "saving checkpoint" line (the write follows that line); the first one counts as the median of the others."""
    curve, iters, last, saved = [], {}, None, False
    for t, text in lines:
        m = ITER_LINE.match(text)
        if m:
            if last is not None:
                iters[int(m.group(1))] = max(0.0, t - last - (save_s if saved else 0.0))
            last, saved = t, False
            continue
        saved = saved or text.startswith("saving checkpoint")
        m = STEP_LINE.match(text)
        if m:
            curve.append([int(m.group(1)), float(m.group(3))])
        last = t  # evaluation and checkpoint lines end the time that is not training
    if not iters:
        raise cli.UserError("nanoGPT printed no 'iter N: loss ..., time ...ms' lines: is this its train.py?")
    median = statistics.median(v for k, v in iters.items() if k > 0) if len(iters) > 1 else iters[min(iters)]
    iters[min(iters)] = median
    cumulative, total = {}, 0.0
    for k in sorted(iters):
        total += iters[k]
        cumulative[k + 1] = total  # seconds after k + 1 steps
    for row in curve:
        row.append(cumulative.get(row[0], 0.0))
    return {"curve": curve, "step_s": statistics.median(iters.values()), "train_seconds": cumulative}


def eval_checkpoint(nanogpt: str, ckpt: str, val_files, val_tokens: int, batch_size: int, seq_len: int) -> dict:
    """nanoGPT's weights in `ckpt` on the first val_tokens of the val split, in our val batches (windows laid end to
    end), with its own model.py: the mean loss per token and the step the checkpoint holds."""
    import torch

    from bench.cpu_step import load_nanogpt
    from data.loader import val_batches

    module = load_nanogpt(nanogpt)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    model = module.GPT(module.GPTConfig(**state["model_args"]))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in state["model"].items()})
    model.eval()
    losses = []
    with torch.no_grad():
        for x, y in val_batches(val_files, n_tokens=val_tokens, batch_size=batch_size, seq_len=seq_len):
            _, loss = model(x, y)
            losses.append(float(loss))
    return {"val_loss": statistics.fmean(losses), "step": int(state["iter_num"])}


def run_nanogpt(nanogpt: str, work: str, lr: float, shape: dict, args, logs: str) -> dict:
    os.makedirs(work, exist_ok=True)
    link = os.path.join(work, "configurator.py")
    if not os.path.exists(link):
        os.symlink(os.path.join(nanogpt, "configurator.py"), link)
    out_dir = os.path.join(work, f"lr{lr:g}")
    shutil.rmtree(out_dir, ignore_errors=True)
    overrides = {"out_dir": out_dir, "dataset": "pydocs", "device": "cpu", "dtype": "float32", "compile": False,
                 "n_layer": shape["n_layer"], "n_head": shape["n_head"], "n_embd": shape["n_embd"],
                 "block_size": shape["seq_len"], "batch_size": shape["batch_size"], "gradient_accumulation_steps": 1,
                 "dropout": 0.0, "bias": False, "learning_rate": lr, "min_lr": lr / 10, "max_iters": args.steps,
                 "lr_decay_iters": args.steps, "warmup_iters": args.warmup, "eval_interval": args.eval_every,
                 "eval_iters": args.eval_iters, "log_interval": 1, "always_save_checkpoint": True,
                 "wandb_log": False}
    argv = [sys.executable, "-u", os.path.join(nanogpt, "train.py"),
            *[f"--{k}={v!r}" if isinstance(v, str) else f"--{k}={v}" for k, v in overrides.items()]]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    run = _timed(f"nanoGPT at lr {lr:g}", argv, work, env, os.path.join(logs, f"nanogpt-lr{lr:g}.log"),
                 args.max_load, args.wait, args.allow_load)
    ckpt = os.path.join(out_dir, "ckpt.pt")
    if not os.path.isfile(ckpt):
        raise cli.UserError(f"nanoGPT at lr {lr:g} wrote no {ckpt}")
    save_s = checkpoint_write_seconds(ckpt)
    timing = nanogpt_seconds(run.pop("lines"), save_s)
    return {"lr": lr, **run, **timing, "checkpoint_write_s": save_s, "ckpt": ckpt, "command": " ".join(argv[1:]),
            "cwd": work}


def checkpoint_write_seconds(ckpt: str, repeats: int = 3) -> float:
    """Seconds to write nanoGPT's checkpoint (torch.save of the same content beside it, the median of `repeats`):
    its train.py writes one after each evaluation, inside the time of the next step, which this subtracts."""
    import torch

    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    probe = ckpt + ".timing"
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.save(state, probe)
        times.append(time.perf_counter() - start)
    os.remove(probe)
    return statistics.median(times)


# ----------------------------------------------------------------------------------------------- ours


def run_ours(recipe: str, preset: str, data_dir: str, val_tokens: int, out: str, extra: list, args,
             logs: str) -> dict:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", recipe.rsplit(":", 1)[-1])
    run_dir = os.path.join(out, "ours", name)
    shutil.rmtree(run_dir, ignore_errors=True)
    argv = [sys.executable, "-u", os.path.join(REPO, "train.py"), f"--preset={preset}", f"--optimizer={recipe}",
            f"--data_dir={data_dir}", f"--val_tokens={val_tokens}", f"--threads={args.threads}",
            "--stop_at_target=False", f"--out_dir={os.path.join(out, 'ours')}", f"--run_name={name}", *extra]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    run = _timed(f"our {recipe}", argv, os.getcwd(), env, os.path.join(logs, f"ours-{name}.log"), args.max_load,
                 args.wait, args.allow_load)
    run.pop("lines")
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        curve = [[r["step"], r["val_loss"], r["train_time_s"]] for r in map(json.loads, f) if "val_loss" in r]
    return {"recipe": recipe, **run, "curve": curve, "step_s": summary["step_avg_ms"] / 1e3,
            "steps": summary["steps"], "final_val_loss": summary["final_val_loss"],
            "command": " ".join(argv[2:]), "threads": summary["threads"]}


def time_to(curve: list, level: float) -> dict | None:
    """When a [step, val loss, seconds] curve first reaches `level`: seconds and step linear between the two
    validations around it, and the first validation at or below it. None if it never does."""
    for i, (step, loss, seconds) in enumerate(curve):
        if loss <= level:
            if i == 0:
                return {"seconds": seconds, "step": step, "logged_step": step, "logged_seconds": seconds}
            s0, l0, t0 = curve[i - 1]
            f = (l0 - level) / (l0 - loss) if l0 != loss else 1.0
            return {"seconds": t0 + f * (seconds - t0), "step": s0 + f * (step - s0), "logged_step": step,
                    "logged_seconds": seconds}
    return None


# ----------------------------------------------------------------------------------------------- report


def report_md(r: dict) -> str:
    lines = [f"Shape: {r['shape']}; fp32, {r['threads']} threads, no compile. Data: {r['data']['source']} "
             f"({r['data']['train_tokens']:,} train tokens; val: the first {r['data']['val_tokens']:,} val tokens).",
             f"Machine: {r['machine_line']}; commit {r['commit']}.", "",
             "| side | setting | steps | train s | ms/step | final val loss (same val tokens) | load before/after "
             "| other cores |", "|---|---|---|---|---|---|---|---|"]
    for n in r["nanogpt"]:
        best = " **(best)**" if n["lr"] == r["best_lr"] else ""
        lines.append(f"| nanoGPT AdamW | lr {n['lr']:g}{best} | {n['exact']['step']} | "
                     f"{n['train_seconds'][str(n['exact']['step'])]:.1f} | {n['step_s'] * 1e3:.0f} | "
                     f"{n['exact']['val_loss']:.4f} | {n['load_before']:.2f}/{n['load_after']:.2f} | {_cores(n)} |")
    for o in r["ours"]:
        lines.append(f"| ours | {o['recipe']} | {o['steps']} | {o['curve'][-1][2]:.1f} | {o['step_s'] * 1e3:.0f} | "
                     f"{o['final_val_loss']:.4f} | {o['load_before']:.2f}/{o['load_after']:.2f} | {_cores(o)} |")
    lines += ["", f"Common level L = {r['level']:.4f}: nanoGPT's best setting (lr {r['best_lr']:g}) after "
                  f"{r['nanogpt_steps']} steps, {r['nanogpt_seconds']:.1f} s of training.", "",
              "| ours | reaches L at step | after s (training) | next validation (step, s) | ratio to nanoGPT |",
              "|---|---|---|---|---|"]
    for o in r["ours"]:
        t = o["to_level"]
        if t is None:
            lines.append(f"| {o['recipe']} | not reached | — | — | — |")
        else:
            lines.append(f"| {o['recipe']} | {t['step']:.1f} | {t['seconds']:.1f} | {t['logged_step']}, "
                         f"{t['logged_seconds']:.1f} | **{t['ratio']:.3f}** |")
    if r["edge"]:
        lines += ["", f"The best nanoGPT lr is at the edge of the grid after {r['widened']} widenings: widen --lrs."]
    if not r["quiet"]:
        lines += ["", "NOT QUIET: at least one run started above --max-load or shared the cores with other processes "
                      "(other cores ≥ 0.1): the seconds are disturbed."]
    lines += ["", f"Command: `{r['command']}`"]
    return "\n".join(lines)


def _cores(run: dict) -> str:
    return "?" if run.get("other_cores") is None else f"{run['other_cores']:.2f}"


def plot(r: dict, out: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for n in r["nanogpt"]:
        style = "-" if n["lr"] == r["best_lr"] else ":"
        ax.plot([c[2] for c in n["curve"]], [c[1] for c in n["curve"]], style, color="C3", alpha=0.8,
                label=f"nanoGPT AdamW lr {n['lr']:g}" + (" (best)" if n["lr"] == r["best_lr"] else ""))
    for i, o in enumerate(r["ours"]):
        ax.plot([c[2] for c in o["curve"]], [c[1] for c in o["curve"]], "-o", ms=3, color=f"C{i}",
                label=f"ours {o['recipe']}")
    ax.axhline(r["level"], color="k", ls="--", lw=1, label=f"L = {r['level']:.3f}")
    ax.set(xlabel="training seconds", ylabel="val loss", title="val loss against training time (nanoGPT: its "
           "sampled estimate)", ylim=(r["level"] - 1.0, r["level"] + 3.0))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "vs_nanogpt.png"), dpi=120)
    plt.close(fig)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = cli.ArgumentParser(prog="python -m bench.vs_nanogpt", description=__doc__.splitlines()[0])
    parser.add_argument("--nanogpt", required=True, help="a karpathy/nanoGPT checkout (read only)")
    parser.add_argument("--preset", default="track3-cpu")
    parser.add_argument("--recipes", default="track3-muon,track3-adam")
    parser.add_argument("--lrs", default="1.5e-3,3e-3,6e-3", help="nanoGPT's learning-rate grid (comma list)")
    parser.add_argument("--widen", type=int, default=3, help="times the grid may grow by x2 at an edge")
    parser.add_argument("--steps", type=int, default=0, help="nanoGPT's iterations (default: the preset's budget)")
    parser.add_argument("--warmup", type=int, default=0, help="nanoGPT's warmup_iters (default: steps // 20)")
    parser.add_argument("--eval-every", type=int, default=0, help="nanoGPT's eval_interval (default: the preset's)")
    parser.add_argument("--eval-iters", type=int, default=20, help="nanoGPT's eval_iters (random val batches)")
    parser.add_argument("--val-tokens", type=int, default=32768, help="the val tokens both sides are judged on")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-load", type=float, default=0.5, help="1-minute load below which a run may start")
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to wait for a quiet machine before a run")
    parser.add_argument("--allow-load", action="store_true", help="time on a busy machine (figures labelled)")
    parser.add_argument("--out", default="out/vs_nanogpt")
    args, extra = parser.parse_known_args(argv)
    nanogpt = check_checkout(args.nanogpt)
    from speedrun.config import resolve

    cfg = resolve([f"--preset={args.preset}", *extra])
    try:
        lrs = sorted(float(x) for x in args.lrs.split(","))
    except ValueError:
        parser.error(f"--lrs {args.lrs!r} is not a comma list of numbers")
    args.steps = args.steps or cfg.max_steps
    args.warmup = args.warmup or max(1, args.steps // 20)
    args.eval_every = args.eval_every or cfg.val_every
    if args.steps % args.eval_every:
        parser.error(f"--steps {args.steps} must be a multiple of --eval-every {args.eval_every} (nanoGPT evaluates "
                     "the last step only then)")
    per_batch = cfg.batch_size * cfg.seq_len
    if args.val_tokens % per_batch:
        parser.error(f"--val-tokens must be a multiple of batch_size × seq_len = {per_batch}")
    shape = {"n_layer": cfg.model.n_layer, "n_head": cfg.model.n_head, "n_embd": cfg.model.n_embd,
             "seq_len": cfg.seq_len, "batch_size": cfg.batch_size, "vocab": cfg.model.vocab_size}
    os.makedirs(args.out, exist_ok=True)
    logs = os.path.join(args.out, "logs")
    os.makedirs(logs, exist_ok=True)
    data = prepare_data(nanogpt, cfg, args.out, args.val_tokens)
    from data.shards import list_shards

    val_files = list_shards(data["our_data_dir"], "*_val_*.bin")
    machine = harness.machine() | {"threads": args.threads}

    def nano(lr):
        print(f"nanoGPT, lr {lr:g}: {args.steps} steps", flush=True)
        result = run_nanogpt(nanogpt, os.path.join(args.out, "nanogpt"), lr, shape, args, logs)
        result["exact"] = eval_checkpoint(nanogpt, result["ckpt"], val_files, args.val_tokens, cfg.batch_size,
                                          cfg.seq_len)
        if result["exact"]["step"] != args.steps:
            print(f"note: nanoGPT lr {lr:g}'s checkpoint is from step {result['exact']['step']} (its val loss did not "
                  f"improve at its last evaluation)")
        print(f"  final val loss on the common val tokens {result['exact']['val_loss']:.4f}; "
              f"{result['step_s'] * 1e3:.0f} ms/step; load {result['load_before']:.2f}", flush=True)
        return result

    sweep = {lr: nano(lr) for lr in lrs}
    widened = 0
    while True:
        best = min(sweep, key=lambda lr: sweep[lr]["exact"]["val_loss"])
        grid = sorted(sweep)
        edge = best in (grid[0], grid[-1])
        if not edge or widened >= args.widen:
            break
        new = best * 2 if best == grid[-1] else best / 2
        widened += 1
        print(f"best lr {best:g} at the edge of the grid: adding {new:g}")
        sweep[new] = nano(new)
    best_run = sweep[best]
    level = best_run["exact"]["val_loss"]
    nano_steps = best_run["exact"]["step"]
    nano_seconds = best_run["train_seconds"][nano_steps]
    ours = []
    for recipe in args.recipes.split(","):
        print(f"ours, {recipe}", flush=True)
        o = run_ours(recipe, args.preset, data["our_data_dir"], args.val_tokens, args.out, extra, args, logs)
        o["to_level"] = time_to(o["curve"], level)
        if o["to_level"] is not None:
            o["to_level"]["ratio"] = o["to_level"]["seconds"] / nano_seconds
        ours.append(o)
    runs = list(sweep.values()) + ours
    quiet = all(r["load_before"] < args.max_load and r["other_cores"] is not None and r["other_cores"] < 0.1
                for r in runs)
    result = {"command": " ".join(["python", "-m", "bench.vs_nanogpt", *argv]), "commit": harness.git_commit(),
              "machine": machine, "machine_line": harness.machine_line(machine), "threads": args.threads,
              "shape": f"{shape['n_layer']} layers, {shape['n_head']} head(s), d={shape['n_embd']}, "
                       f"{shape['batch_size']} × {shape['seq_len']} tokens a step, vocab {shape['vocab']}",
              "data": data, "nanogpt": [sweep[lr] for lr in sorted(sweep)], "best_lr": best, "edge": edge,
              "widened": widened, "level": level, "nanogpt_steps": nano_steps, "nanogpt_seconds": nano_seconds,
              "ours": ours, "quiet": quiet}
    reached = [o for o in ours if o["to_level"] is not None]
    if reached:
        top = min(reached, key=lambda o: o["to_level"]["seconds"])
        result["best_ours"] = {"recipe": top["recipe"], "ratio": top["to_level"]["ratio"]}
    for n in result["nanogpt"]:
        n["train_seconds"] = {str(k): v for k, v in n["train_seconds"].items()}
    with open(os.path.join(args.out, "vs_nanogpt.json"), "w") as f:
        json.dump(result, f, indent=1)
    text = report_md(result)
    with open(os.path.join(args.out, "vs_nanogpt.md"), "w") as f:
        f.write(text + "\n")
    plot(result, args.out)
    print(text)
    return result


if __name__ == "__main__":
    cli.run_main(main)
