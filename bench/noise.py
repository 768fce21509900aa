"""Where the seed noise of a preset's final val loss comes from: initialization, data order, validation sample.

    python -m bench.noise --preset track3-cpu --optimizer track3-muon --init-seeds 8 --data-orders 8 \
        --val-tokens 32768 --jobs 2 --out out/noise            # the runs, then the study (docs/track3_cpu/noise.md)
    python -m bench.noise --out out/noise --analyze-only       # the study again from the finished runs

One --seed drives a run's initialization; the data order is the preset's (track3-cpu reads its one train shard in
order, as track 3 reads its shards: every seed sees the same batches), and every run is validated on the same
first --val_tokens of the val shard. So a preset's σ (the std of the final val loss over seeds) holds the init's
effect on the weights and, on top, how differently two sets of weights fare on one small val sample. This study
separates them, and adds the data-order term the preset holds fixed:

  init      --init-seeds runs: seeds 1000.., the preset's data. Named and configured as bench.speedrun names the
            preset's seeds (OUT/runs/<preset>-<optimizer>-s<seed>), so its σ calibration can reuse them.
            Each logs the val loss of each 8192-token slice of a --val-tokens val set at every validation
            (--val_slice_tokens): the val curve of a larger val set and, in its first slice, the preset's own.
  data      --data-orders runs: seed 1000, the train stream started k·max_steps windows later (train.py
            --data_offset; k = 0 is the init group's seed-1000 run): disjoint stretches of the same corpus, the
            preset's own val set.
  val       after training, every run's final weights (its checkpoint.pt) are evaluated on every whole slice of
            the val shards (the first slices must equal the ones the run logged, bitwise: checked).

Analysis of the final-step table L[run, slice] (runs of one group × disjoint val slices), a two-way layout without
replication: L = μ + run effect + slice effect + interaction. A slice's effect (an easy or a hard document) is
the same for every run and cancels in any comparison on that slice; the interaction (how this run's weights fare
on this slice beyond both averages) is the validation-sample noise: its variance σ_val² comes from the residual
mean square, and on a val set of k slices it adds σ_val²/k to the run-to-run variance. The run component is
σ_run² = (MS_runs − MS_residual)/slices (init or data, by group). So on the preset's val set (k slices)
σ² ≈ σ_init² + σ_val²/k, which the observed std of the runs' val losses on that set is checked against.
Intervals: 95%, χ² for each std (n−1 degrees of freedom; the residual's for σ_val).

Writes OUT/noise.json (every number, the runs' commands, commit, machine), OUT/noise.md and OUT/noise.png.
"""

import json
import math
import os
import statistics
import sys

from bench import harness, jobs
from speedrun import cli

SLICE_TOKENS = 8192


def run_name(preset: str, optimizer: str, seed: int, data_offset: int = 0) -> str:
    from bench.speedrun import run_label

    return f"{preset}-{run_label(optimizer)}-s{seed}" + (f"-data{data_offset}" if data_offset else "")


def plan(preset: str, optimizer: str, init_seeds: int, data_orders: int, val_tokens: int, out: str,
         extra: list) -> list[jobs.Job]:
    from speedrun.config import resolve

    cfg = resolve([f"--preset={preset}", f"--optimizer={optimizer}", *extra])
    runs_dir = os.path.join(out, "runs")
    common = [f"--preset={preset}", f"--optimizer={optimizer}", f"--out_dir={runs_dir}", *extra,
              "--stop_at_target=False", f"--checkpoint_every={cfg.max_steps}"]  # the final weights, for the slices
    sliced = [f"--val_tokens={val_tokens}", f"--val_slice_tokens={SLICE_TOKENS}"]
    out_jobs = []
    for i in range(max(init_seeds, data_orders)):
        if i < init_seeds:
            seed = 1000 + i
            name = run_name(preset, optimizer, seed)
            out_jobs.append(jobs.Job(f"init seed {seed}", [*common, *sliced, f"--seed={seed}", f"--run_name={name}"],
                                     kind=optimizer, tag=("init", seed, 0)))
        if 0 < i < data_orders:  # the preset's own val set: these runs are compared at their final step only
            offset = i * cfg.max_steps
            name = run_name(preset, optimizer, 1000, offset)
            out_jobs.append(jobs.Job(f"data offset {offset}", [*common, "--seed=1000", f"--data_offset={offset}",
                                                              f"--run_name={name}"],
                                     kind=optimizer, tag=("data", 1000, offset)))
    return out_jobs


# ----------------------------------------------------------------------------------------------- evaluation


def evaluate_final(run_dir: str, val_tokens: int) -> list[float]:
    """The run's final weights (its checkpoint.pt) on every SLICE_TOKENS slice of the first `val_tokens` val
    tokens, evaluated as train.py validates (the same batches, sums and order)."""
    import torch

    import train
    from speedrun.config import resolve

    cfg = resolve([f"--config={os.path.join(run_dir, 'config.json')}", f"--val_tokens={val_tokens}",
                   f"--val_slice_tokens={SLICE_TOKENS}", "--memory_check=False"])
    trainer = train.Trainer(cfg)
    state = torch.load(os.path.join(run_dir, "checkpoint.pt"), map_location="cpu", weights_only=False)
    if state["step"] != cfg.max_steps:
        raise cli.UserError(f"{run_dir}/checkpoint.pt is from step {state['step']}, not the last ({cfg.max_steps})")
    trainer.model.load_state_dict(state["model"])
    trainer.readout.load_state_dict(state["readout"])
    trainer.evaluate()
    return list(trainer.val_slices)


def final_table(outcomes: list[jobs.Outcome], val_tokens: int, cache: str) -> dict:
    """{run label: {"tag", "logged" (final-step slices as logged), "slices" (all, from the checkpoint)}}; the
    evaluations are cached in `cache` (a run's checkpoint does not change)."""
    try:
        with open(cache) as f:
            saved = json.load(f)
    except (OSError, json.JSONDecodeError):
        saved = {}
    table = {}
    for o in outcomes:
        run_dir = o.summary["run_dir"]
        key = f"{run_dir}@{val_tokens}"
        if key not in saved:
            print(f"evaluating the final weights of {o.job.label} on {val_tokens // SLICE_TOKENS} val slices")
            saved[key] = evaluate_final(run_dir, val_tokens)
            with open(cache, "w") as f:
                json.dump(saved, f)
        last = o.summary["curve"][-1]
        logged = last.get("val_slices") or [last["val_loss"]]  # a run validated on one slice logs it as val_loss
        if saved[key][:len(logged)] != logged:
            raise cli.UserError(f"{run_dir}: its final weights give {saved[key][:len(logged)]} on the logged slices, "
                                f"the run logged {logged}: the checkpoint is not the run's last state")
        table[o.job.label] = {"tag": list(o.job.tag), "logged": logged, "slices": saved[key],
                              "curve": o.summary["curve"], "run_dir": run_dir}
    return table


# ----------------------------------------------------------------------------------------------- statistics


def chi2_quantile(p: float, df: int) -> float:
    """The p-quantile of the χ² distribution with `df` degrees of freedom: its CDF, the regularized lower incomplete
    gamma P(df/2, x/2) (torch.special.gammainc, float64), inverted by bisection to float64 resolution."""
    import torch

    if not (0 < p < 1 and df >= 1):
        raise ValueError(f"chi2_quantile needs 0 < p < 1 and df >= 1, got p={p}, df={df}")

    def cdf(x: float) -> float:
        return torch.special.gammainc(torch.tensor(df / 2, dtype=torch.float64),
                                      torch.tensor(x / 2, dtype=torch.float64)).item()

    lo, hi = 0.0, max(1.0, 2.0 * df)
    while cdf(hi) < p:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def chi2_interval(std: float, df: int, level: float = 0.95) -> tuple[float, float]:
    """The χ² confidence interval of a std estimated with `df` degrees of freedom."""
    a = (1 - level) / 2
    return std * math.sqrt(df / chi2_quantile(1 - a, df)), std * math.sqrt(df / chi2_quantile(a, df))


def two_way(table: list[list[float]]) -> dict:
    """Runs × slices without replication: mean squares, σ_run (between runs, slice effects removed) and σ_val (the
    run × slice interaction, per slice), with their degrees of freedom."""
    r, c = len(table), len(table[0])
    grand = statistics.fmean(v for row in table for v in row)
    row_means = [statistics.fmean(row) for row in table]
    col_means = [statistics.fmean(table[i][j] for i in range(r)) for j in range(c)]
    ms_rows = c * sum((m - grand) ** 2 for m in row_means) / (r - 1)
    ss_res = sum((table[i][j] - row_means[i] - col_means[j] + grand) ** 2 for i in range(r) for j in range(c))
    df_res = (r - 1) * (c - 1)
    ms_res = ss_res / df_res
    return {"runs": r, "slices": c, "ms_runs": ms_rows, "ms_residual": ms_res, "df_runs": r - 1, "df_residual": df_res,
            "sigma_val": math.sqrt(ms_res), "sigma_run": math.sqrt(max(0.0, (ms_rows - ms_res) / c)),
            "slice_means": col_means}


def std_row(values: list[float]) -> dict:
    s = statistics.stdev(values)
    lo, hi = chi2_interval(s, len(values) - 1)
    return {"n": len(values), "mean": statistics.fmean(values), "std": s, "ci95": [lo, hi]}


def analyze(table: dict, val_tokens: int) -> dict:
    groups = {g: [row for row in table.values()
                  if row["tag"][0] == g or (g == "data" and row["tag"] == ["init", 1000, 0])] for g in ("init", "data")}
    logged_k = len(next(iter(table.values()))["logged"])
    out = {"slice_tokens": SLICE_TOKENS, "logged_slices": logged_k, "val_tokens_run": val_tokens, "groups": {}}
    for g, rows in groups.items():
        if len(rows) < 2:
            continue
        slices = [row["slices"] for row in rows]
        k_all = len(slices[0])
        by_size = {}
        for k in sorted({1, 2, 4, logged_k, 8, k_all} - {0}):
            if k <= k_all:
                by_size[k * SLICE_TOKENS] = std_row([statistics.fmean(s[:k]) for s in slices])
        anova = two_way(slices)
        anova["ci95_sigma_val"] = list(chi2_interval(anova["sigma_val"], anova["df_residual"]))
        per_slice = [statistics.stdev([s[j] for s in slices]) for j in range(k_all)]
        out["groups"][g] = {"runs": [row["tag"] for row in rows], "final_by_val_tokens": by_size, "anova": anova,
                            "std_on_each_slice": per_slice}
    # the preset's val set (the first slice) decomposed: σ² ≈ σ_init² + σ_val²
    init = out["groups"].get("init")
    if init:
        a = init["anova"]
        out["decomposition"] = {
            "sigma_init": a["sigma_run"], "sigma_val_per_slice": a["sigma_val"],
            "predicted_sigma": {str(k * SLICE_TOKENS): math.sqrt(a["sigma_run"] ** 2 + a["sigma_val"] ** 2 / k)
                                for k in (1, 2, 4, 8, 16)},
            "val_share_of_variance_at_8192": a["sigma_val"] ** 2 / (a["sigma_run"] ** 2 + a["sigma_val"] ** 2)}
    data = out["groups"].get("data")
    if data:
        out.setdefault("decomposition", {})["sigma_data"] = data["anova"]["sigma_run"]
    return out


# ----------------------------------------------------------------------------------------------- report


def report_md(study: dict, where: dict) -> str:
    d = study.get("decomposition", {})
    lines = ["Final val loss of the runs (step max_steps), std over runs with 95% χ² intervals, by how many "
             f"{SLICE_TOKENS}-token val slices are averaged (the preset's val set is the first slice).", "",
             "| group | runs | val tokens | mean | std | 95% interval |", "|---|---|---|---|---|---|"]
    for g, info in study["groups"].items():
        for tokens, r in info["final_by_val_tokens"].items():
            lines.append(f"| {g} | {r['n']} | {int(tokens):,} | {r['mean']:.4f} | {r['std']:.4f} | "
                         f"{r['ci95'][0]:.4f}–{r['ci95'][1]:.4f} |")
    lines += ["", "Two-way table runs × slices (final step, every slice of the val shard):", "",
              "| group | runs × slices | σ between runs (slice effects removed) | σ_val per slice (interaction) "
              "| 95% interval of σ_val |", "|---|---|---|---|---|"]
    for g, info in study["groups"].items():
        a = info["anova"]
        lines.append(f"| {g} | {a['runs']} × {a['slices']} | {a['sigma_run']:.4f} | {a['sigma_val']:.4f} | "
                     f"{a['ci95_sigma_val'][0]:.4f}–{a['ci95_sigma_val'][1]:.4f} |")
    if "sigma_init" in d:
        lines += ["", f"Decomposition on the preset's {SLICE_TOKENS:,}-token val set: σ_init {d['sigma_init']:.4f}, "
                      f"σ_val {d['sigma_val_per_slice']:.4f} (share of the variance "
                      f"{d['val_share_of_variance_at_8192']:.0%})"
                  + (f", σ_data {d['sigma_data']:.4f} (held fixed by the preset)" if "sigma_data" in d else "")
                  + ". Predicted σ by val tokens: "
                  + ", ".join(f"{int(k):,}: {v:.4f}" for k, v in d["predicted_sigma"].items()) + "."]
    lines += ["", f"Runs: {where['command']}", f"Commit {where['commit']}; machine: {where['machine']}"]
    return "\n".join(lines)


def plot(study: dict, table: dict, out: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for g, info in study["groups"].items():
        sizes = sorted(int(t) for t in info["final_by_val_tokens"])
        rows = [info["final_by_val_tokens"][t if t in info["final_by_val_tokens"] else str(t)] for t in sizes]
        a.errorbar(sizes, [r["std"] for r in rows], yerr=[[r["std"] - r["ci95"][0] for r in rows],
                                                           [r["ci95"][1] - r["std"] for r in rows]],
                   marker="o", capsize=3, label=f"{g} ({rows[0]['n']} runs)")
    d = study.get("decomposition", {})
    if "predicted_sigma" in d:
        ks = sorted(int(k) for k in d["predicted_sigma"])
        a.plot(ks, [d["predicted_sigma"][str(k)] for k in ks], "k--", lw=1, label="σ_init² + σ_val²/k (init group)")
    a.set(xscale="log", xlabel="val tokens (first k slices)", ylabel="std of the final val loss over runs",
          title="seed noise by val set size (95% χ² intervals)")
    a.legend(fontsize=8)
    for label, row in table.items():
        color = "C0" if row["tag"][0] == "init" else "C1"
        b.plot(range(len(row["slices"])), row["slices"], color=color, alpha=0.6, lw=1)
    b.plot([], [], "C0", label="init seeds (data fixed)")
    b.plot([], [], "C1", label="data orders (init fixed)")
    b.set(xlabel=f"val slice ({SLICE_TOKENS} tokens each)", ylabel="final val loss",
          title="each run's final val loss on each val slice")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "noise.png"), dpi=120)
    plt.close(fig)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = cli.ArgumentParser(prog="python -m bench.noise", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="track3-cpu")
    parser.add_argument("--optimizer", default="track3-muon")
    parser.add_argument("--init-seeds", type=int, default=8)
    parser.add_argument("--data-orders", type=int, default=8)
    parser.add_argument("--val-tokens", type=int, default=32768,
                        help=f"the runs' val set, logged in {SLICE_TOKENS}-token slices (its first slice is the "
                             "preset's val set when that is 8192 tokens)")
    parser.add_argument("--eval-tokens", type=int, default=0,
                        help="evaluate the final weights on this many val tokens (default: every whole slice of "
                             "the val shards)")
    parser.add_argument("--jobs", type=int, default=2, help="train.py processes at a time (one thread each)")
    parser.add_argument("--analyze-only", action="store_true", help="no training: the study from finished runs")
    parser.add_argument("--out", default="out/noise")
    args, extra = parser.parse_known_args(argv)
    if args.init_seeds < 2 or args.data_orders < 0:
        parser.error("--init-seeds must be >= 2 and --data-orders >= 0")
    if args.val_tokens % SLICE_TOKENS:
        parser.error(f"--val-tokens must be a multiple of {SLICE_TOKENS}")
    if not any(a.startswith("--threads=") for a in extra):
        extra = [*extra, "--threads=1"]
    planned = plan(args.preset, args.optimizer, args.init_seeds, args.data_orders, args.val_tokens, args.out, extra)
    os.makedirs(args.out, exist_ok=True)
    if args.analyze_only:
        outcomes = []
        for job in planned:
            summary = jobs.finished_run(job.args)
            if summary is not None:
                outcomes.append(jobs.Outcome(job, jobs.with_curve(summary), reused=True))
        print(f"{len(outcomes)} of {len(planned)} runs finished")
    else:
        to_train = [j for j in planned if jobs.finished_run(j.args) is None]
        if to_train:
            estimate = jobs.calibrate(to_train[:1], args.out)
            print("estimate: " + jobs.cpu_hours_line(to_train, estimate, args.jobs))
        else:
            estimate = None
        outcomes = jobs.Runner(args.jobs, os.path.join(args.out, "logs")).run(planned, estimate=estimate)
        failed = [o for o in outcomes if not o.ok]
        if failed:
            raise cli.UserError("; ".join(f"{o.job.label}: {o.error}" for o in failed) + " (run again to retry)")
    outcomes = [o for o in outcomes if o.ok]
    if len([o for o in outcomes if o.job.tag[0] == "init"]) < 2:
        raise cli.UserError("fewer than 2 init-seed runs have finished: nothing to analyze yet")
    from speedrun.config import resolve

    cfg = resolve([f"--preset={args.preset}"])
    val_available = _val_available(cfg)
    eval_tokens = args.eval_tokens or (val_available - 1) // SLICE_TOKENS * SLICE_TOKENS
    table = final_table(outcomes, eval_tokens, os.path.join(args.out, "final_slices.json"))
    study = analyze(table, args.val_tokens)
    where = {"command": " ".join(["python", "-m", "bench.noise", *argv]), "commit": harness.git_commit(),
             "machine": harness.machine_line(harness.machine() | {"threads": 1})}
    with open(os.path.join(args.out, "noise.json"), "w") as f:
        json.dump({"study": study, "runs": table, "where": where, "eval_tokens": eval_tokens}, f, indent=1)
    text = report_md(study, where)
    with open(os.path.join(args.out, "noise.md"), "w") as f:
        f.write(text + "\n")
    plot(study, table, args.out)
    print(text)
    return study


def _val_available(cfg) -> int:
    from data.shards import list_shards, read_header

    return sum(read_header(f).num_tokens for f in list_shards(cfg.data_dir, cfg.val_pattern))


if __name__ == "__main__":
    cli.run_main(main)
