"""Training curves of train.py runs, overlaid in one PNG: validation loss (solid, dots) and training loss (dashed).

    python -m bench.plot runs/tiny-adamw-s1 runs/tiny-muon-s1 --out out/curves.png
    python -m bench.plot out/speedrun/runs --x seconds --out out/curves.png     # every run under a folder

Each RUN is a run folder train.py wrote (config.json, log.jsonl), or a folder holding run folders. The legend
names each run from its config.json: preset, optimizer and seed (plus the run name where two would read the
same). --x chooses the axis: steps (default), tokens, or seconds of training time (the trainer's clock, paused
during validation). Needs matplotlib.
"""

import json
import os

from bench import command_help
from speedrun import cli

X_AXES = {"steps": ("step", "step"), "tokens": ("tokens", "tokens"), "seconds": ("train_time_s", "training time (s)")}


def run_dirs(paths) -> list[str]:
    """The run folders named by `paths`: each a run folder (it has log.jsonl) or a folder of them."""
    out = []
    for path in paths:
        if os.path.isfile(os.path.join(path, "log.jsonl")):
            out.append(path)
            continue
        inside = sorted(os.path.join(path, d) for d in os.listdir(path)) if os.path.isdir(path) else []
        found = [d for d in inside if os.path.isfile(os.path.join(d, "log.jsonl"))]
        if not found:
            raise cli.UserError(f"{path}: no train.py run there (a run folder has log.jsonl and config.json)")
        out += found
    return out


def load_run(path: str) -> dict:
    """A run's label parts (from config.json), its validation and training records (from log.jsonl)."""
    config_path = os.path.join(path, "config.json")
    config = cli.read_json(config_path, what="the run's config", hint="pass a folder train.py wrote") \
        if os.path.exists(config_path) else {}
    val, train = [], []
    with open(os.path.join(path, "log.jsonl")) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise cli.UserError(f"{path}/log.jsonl line {n} is not JSON ({e})") from e
            if "val_loss" in record:
                val.append(record)
            elif "train_loss" in record:
                train.append(record)
    optim = config.get("optim") or {}
    return {"path": path, "preset": config.get("preset") or "?", "optimizer": optim.get("name") or "?",
            "seed": config.get("seed"), "run_name": config.get("run_name") or os.path.basename(path.rstrip("/")),
            "val": val, "train": train}


def labels(runs: list[dict]) -> list[str]:
    """preset / optimizer / seed for each run, with the run name added where two labels would be equal."""
    base = [f"{r['preset']} {r['optimizer']} seed {r['seed']}" for r in runs]
    return [f"{b} ({r['run_name']})" if base.count(b) > 1 else b for b, r in zip(base, runs)]


def figure(runs: list[dict], x: str = "steps"):
    """The matplotlib figure: one colour per run, val solid with dots, train dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key, xlabel = X_AXES[x]
    fig, ax = plt.subplots(figsize=(8, 5))
    for run, label in zip(runs, labels(runs)):
        color = None
        if run["val"]:
            line, = ax.plot([r[key] for r in run["val"]], [r["val_loss"] for r in run["val"]], "o-", ms=3,
                            label=f"{label} val")
            color = line.get_color()
        if run["train"]:
            ax.plot([r[key] for r in run["train"]], [r["train_loss"] for r in run["train"]], "--", lw=1,
                    color=color, alpha=0.8, label=f"{label} train")
    ax.set(xlabel=xlabel, ylabel="loss", title="train.py runs: validation (solid) and training (dashed) loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv=None) -> str:
    parser = cli.ArgumentParser(prog="python -m bench.plot", **command_help(__doc__))
    parser.add_argument("runs", nargs="+", metavar="RUN", help="a run folder, or a folder of run folders")
    parser.add_argument("--out", default="curves.png", help="the PNG to write (default curves.png)")
    parser.add_argument("--x", choices=list(X_AXES), default="steps", help="the x axis (default steps)")
    args = parser.parse_args(argv)
    runs = [load_run(d) for d in run_dirs(args.runs)]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise cli.UserError("bench.plot needs matplotlib: pip install matplotlib") from None
    fig = figure(runs, args.x)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    print(f"{len(runs)} run(s) -> {args.out}")
    return args.out


if __name__ == "__main__":
    cli.run_main(main)
