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
import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the harness package beside it, however this file is loaded
from track3_harness import (
    BASELINE,
    DATA_VOCAB,
    DIM,
    INIT_SEED,
    N_LAYER,
    PERTURB_STD,
    ROWS,
    SEQ,
    TINY_ASSIGN,
    TINY_DEFAULTS,
    TINY_KWARGS,
    TRAIN_SEED,
    VAL_SEED,
    VAL_TOKENS,
    VOCAB,
)
from track3_harness.adapt import Adapter, resolve, rewrite
from track3_harness.record import Recorder, run_script, trajectory
from track3_harness.source import Checkout, git_blob, locate

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
