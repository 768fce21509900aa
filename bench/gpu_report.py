"""GPU report: what only a GPU shows, measured in one command within a time budget, always leaving a report.

    python -m bench.gpu_report --out out/gpu_report --budget-s 420      # one H100/H200 (after scripts/setup_gpu.sh)
    python -m bench.gpu_report --out out/gpu_dry --dry-run              # any CPU: the same plan on tiny shapes

Stages, in priority order (each one a section of the report):

1. environment   GPU name, SMs, clocks, torch/triton/CUDA versions, which of FA3 / FA2 / FA4 / Liger import (and
                 why not), and the measured bf16 matmul peak (8192³, median of triton.testing.do_bench): the
                 denominator of every "% of peak" below.
2. correctness   `pytest -m gpu tests/kernels -x -q` in a subprocess: pass / fail / skip counts, first failure.
3. microbench    Newton-Schulz over the model's weight shapes, fused linear cross-entropy, the ReLU² MLP (forward
                 and backward) and the attention backends (causal, windowed, document-masked), at the gpt2-124m and
                 track-3 shapes; providers eager, torch.compile, triton and a peer (torch.optim.Muon's
                 Newton-Schulz, Liger). One timer: triton.testing.do_bench quantiles (median, p20, p80). A row
                 whose implementation does not exist yet is "not available", not a failure.
4. e2e           the training step of the track3 and gpt2-124m presets on one GPU at the preset's micro-batch (the
                 configs.TrainConfig the preset resolves to, built by train.Trainer on synthetic token shards):
                 ms/step, tokens/s, peak memory, and the projected full run on 8 GPUs, beside the step times
                 published in track 3's logs.
5. codegen       the sm_90 ahead-of-time predictions of bench.codegen (registers, spills, shared memory) next to
                 the registers/spills of the kernels the JIT compiled for stage 3's launches.

Budget: every stage gets a time box derived from what is left of --budget-s (its cap, less the minimum the later
stages need); a stage that would not fit is skipped with the reason. Each stage runs in a forked child process
(a hung kernel, compile or OOM cannot take the run down) that streams its rows to stages/<name>.jsonl; the parent
rewrites report.json and report.md atomically as rows arrive and after every stage, on SIGTERM/SIGINT and when a
time box runs out. A run cut short therefore leaves everything measured so far, each stage marked done, partial,
skipped (with the reason), failed (with the error), interrupted, or — after a SIGKILL — running/pending as the
last write left it. Children die with the parent (PR_SET_PDEATHSIG).

--dry-run runs the whole plan on the CPU: tiny shapes, the eager paths and the Triton interpreter
(TRITON_INTERPRET=1) for triton rows, a CPU timer instead of do_bench, torch.compile with the "eager" backend,
a tiny model for stage 4 and a fast pytest subset for stage 2. It writes a report with the same stages and the
same row keys; CI runs it (tests/bench/test_gpu_report.py).

The parent process imports no torch and no triton: children are forked from a clean interpreter, so each decides
TRITON_INTERPRET for itself before triton is imported (stage 5 compiles for sm_90 and must not interpret).
"""

import argparse
import datetime
import inspect
import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Callable

from speedrun.atomic import atomic_write

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA = 1

# ---------------------------------------------------------------------------------------------------
# Published track-3 step times (KellerJordan/modded-nanogpt @ f411b3d3, records/track_3_optimization/results/).
# Each log's last line "step:N/N val_loss:… train_time:Ts" gives the run's training time with the clock paused
# during validation; ms/step = 1000·T/N (the first interval includes torch.compile). GPU and torch from each log's
# "Running PyTorch … on <GPU> with world_size 8" header line.
# ---------------------------------------------------------------------------------------------------

_T3 = "records/track_3_optimization/results/"
_H100 = "NVIDIA H100 80GB HBM3"
TRACK3_PUBLISHED = [
    # result #36: tuned baseline, Muon + aux AdamW, 3250 steps (the track's baseline; n=10)
    *({"result": "#36 tuned baseline (Muon + aux AdamW)", "file": _T3 + "20260610_tuned_baseline_3250/" + name,
       "gpu": _H100, "world_size": 8, "torch": "2.10.0+cu128", "steps": 3250, "train_time_s": seconds}
      for name, seconds in [("263ea3c4-2b13-4adf-8a71-0410386b20e1.txt", 503.169),
                            ("556e61b9-efe1-44af-a16c-58e4a3371aea.txt", 503.323),
                            ("55cb8434-a6e6-4056-aeca-e105682c8ff7.txt", 503.556),
                            ("629ead24-9ba5-4853-b60f-2fc4344fe066.txt", 503.104),
                            ("78db13a0-5ec8-46bd-871c-8a19e9f61015.txt", 503.854),
                            ("a7c375e8-c0f3-404b-8522-7b1fd91c7236.txt", 503.825),
                            ("b199590f-f4a3-47a6-bc5a-aeef94b92000.txt", 504.208),
                            ("c67512ee-2070-4733-9769-573116e14ad5.txt", 504.109),
                            ("f0bcca7d-a146-4cf8-a7c3-ba36733928f4.txt", 503.021),
                            ("fc5b73a0-d67d-4b00-a5dc-934fa01c1505.txt", 503.059)]),
    # result #10: NorMuon, horizon 3300 steps (read at 3250); two logs, one on each GPU model
    {"result": "#10 NorMuon", "file": _T3 + "20260503_normuon/08ffadff-3576-496b-9795-2dc5cf8f4f46.txt",
     "gpu": _H100, "world_size": 8, "torch": "2.11.0+cu128", "steps": 3300, "train_time_s": 485.043},
    {"result": "#10 NorMuon", "file": _T3 + "20260503_normuon/e0d0185f-ccb8-426d-8265-a4e762ec69f6.txt",
     "gpu": "NVIDIA H200", "world_size": 8, "torch": "2.10.0+cu128", "steps": 3300, "train_time_s": 475.241},
    # result #2: AdamW, 5625 steps; its header line names no GPU
    {"result": "#2 AdamW", "file": _T3 + "a63a68d1-24aa-4a22-af9a-224e43209ea4.txt",
     "gpu": None, "world_size": None, "torch": "2.10.0+cu128", "steps": 5625, "train_time_s": 833.211},
]
TRACK3_SOURCE = "KellerJordan/modded-nanogpt @ f411b3d3"


def published_track3() -> list[dict]:
    """One summary per published result: mean/min/max ms per step over its logs, the GPUs and files."""
    out = {}
    for log in TRACK3_PUBLISHED:
        ms = 1000.0 * log["train_time_s"] / log["steps"]
        entry = out.setdefault(log["result"], {"result": log["result"], "steps": log["steps"], "ms": [], "gpus": set(),
                                               "files": []})
        entry["ms"].append(ms)
        entry["gpus"].add(log["gpu"] or "not named in the log header")
        entry["files"].append(log["file"])
    return [{"result": e["result"], "steps": e["steps"], "logs": len(e["ms"]),
             "ms_per_step_mean": sum(e["ms"]) / len(e["ms"]), "ms_per_step_min": min(e["ms"]),
             "ms_per_step_max": max(e["ms"]), "gpus": sorted(e["gpus"]), "files": e["files"],
             "source": TRACK3_SOURCE} for e in out.values()]


# ---------------------------------------------------------------------------------------------------
# Track-3 definition (used for shapes while configs.PRESETS has no "track3"), and the keyword arguments the
# track-3 kernel variants are expected to take. A row whose implementation does not accept them is "not available".
# ---------------------------------------------------------------------------------------------------

TRACK3_PRESET = "track3"
TRACK3_FALLBACK = dict(n_embd=768, n_head=6, vocab_size=50304, mlp_ratio=4, batch_size=64, seq_len=1024,
                       ns_steps=12, attn_scale=0.12, softcap=15.0, max_steps=3250)
# Head: a bias and the algebraic softcap 15·z·rsqrt(z² + 225); MLP: biases on both projections.
TRACK3_HEAD_KWARGS = ("bias", "softcap_kind")
TRACK3_SOFTCAP_KIND = "algebraic"
TRACK3_MLP_KWARGS = ("b_fc", "b_proj")

# ---------------------------------------------------------------------------------------------------
# Imports from the rest of the project, gathered here (modules being refactored: one place to repoint).
# ---------------------------------------------------------------------------------------------------


def _flop_models():
    """The FLOP models of each op (today in the kernel files)."""
    from types import SimpleNamespace

    from bench.cases.attention import attention_flops
    from bench.cases.linear_cross_entropy import lce_flops
    from bench.cases.newton_schulz import ns_flops
    from bench.cases.relu2_mlp import mlp_flops

    return SimpleNamespace(ns=ns_flops, flce=lce_flops, mlp=mlp_flops, attention=attention_flops)


def _codegen_api():
    """bench.codegen's case list, sm_90 compiler and module list."""
    from bench import codegen

    return codegen.all_cases, codegen.compile_sm90, codegen.KERNEL_MODULES


def _harness():
    from bench import harness

    return harness


# ---------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _short_error(exc: BaseException, limit: int = 600) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= limit else text[:limit] + " …"


def _json_safe(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_json_safe(v) for v in value]
    return repr(value)


def write_atomic(path: str, text: str):
    """Write text to path so that a reader (or a kill at any instant) sees the old file or the new one, whole."""
    with atomic_write(path, "w") as f:
        f.write(text)


def _die_with_parent(parent_pid: int | None = None):
    """Ask Linux to SIGKILL this process when its parent dies (so a killed report leaves no GPU job behind)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux/glibc: the parent still kills children on SIGTERM and timeouts
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # the parent died before the request took effect


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (out.stdout.strip() or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def quantiles_ms(samples_s: list[float], qs) -> list[float]:
    """Quantiles (linear interpolation, as torch.quantile) of samples in seconds, returned in ms."""
    xs = sorted(samples_s)
    out = []
    for q in qs:
        pos = q * (len(xs) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        out.append(1e3 * (xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)))
    return out


# ---------------------------------------------------------------------------------------------------
# Stage registry and time boxes
# ---------------------------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    title: str
    run: Callable  # run(ctx: StageContext) in the child process
    min_s: float  # below this a time box is useless: the stage is skipped
    cap_s: float  # the most it may take of the budget
    dry_min_s: float = 5.0


STAGES: dict[str, Stage] = {}


def stage(name, title, *, min_s, cap_s, dry_min_s=5.0):
    def register(fn):
        STAGES[name] = Stage(name, title, fn, min_s, cap_s, dry_min_s)
        return fn

    return register


def time_box(stage_obj: Stage, later: list[Stage], remaining_s: float, dry_run: bool) -> tuple[float | None, str]:
    """(seconds this stage may run, why) or (None, why it is skipped).

    The box is the stage's cap, shrunk so that the later stages keep their minimum; earlier stages have priority,
    so the reserve for later ones shrinks first, never this stage's minimum."""
    need = stage_obj.dry_min_s if dry_run else stage_obj.min_s
    if remaining_s < need:
        return None, f"needs at least {need:.0f} s, {max(remaining_s, 0):.0f} s of the budget left"
    reserve = sum((s.dry_min_s if dry_run else s.min_s) for s in later)
    box = min(stage_obj.cap_s, max(remaining_s - reserve, need))
    return box, f"cap {stage_obj.cap_s:.0f} s, {remaining_s:.0f} s left, {reserve:.0f} s kept for later stages"


# ---------------------------------------------------------------------------------------------------
# Child side: the context a stage function writes its rows through
# ---------------------------------------------------------------------------------------------------


class StageContext:
    """What a stage function sees: options, its deadline, earlier stages' results, and the row stream."""

    def __init__(self, name: str, payload: dict, rows_path: str):
        self.name = name
        self.dry_run = payload["dry_run"]
        self.deadline = payload["deadline"]
        self.out = payload["out"]
        self.options = payload["options"]
        self.previous = payload["previous"]  # stage name -> its entry in the report so far
        self.device = "cpu" if self.dry_run else "cuda"
        self._f = open(rows_path, "a", buffering=1)
        self.ended = False

    def remaining(self) -> float:
        return self.deadline - time.time()

    def _write(self, record: dict):
        self._f.write(json.dumps(_json_safe(record)) + "\n")
        self._f.flush()

    def row(self, key: str, status: str = "ok", **fields):
        self._write({"row": {"key": key, "status": status, **fields}})
        self.log(f"{key}: {status}" + (f" ({fields['reason']})" if fields.get("reason") else "")
                 + (f" {fields['ms']:.3f} ms" if isinstance(fields.get("ms"), float) else ""))

    def info(self, **fields):
        self._write({"info": fields})

    def end(self, status: str, reason: str | None = None, summary: str | None = None):
        self._write({"end": {"status": status, "reason": reason, "summary": summary}})
        self.ended = True

    def log(self, text: str):
        print(f"[gpu_report:{self.name}] {text}", flush=True)

    def previous_info(self, stage_name: str) -> dict:
        return (self.previous.get(stage_name) or {}).get("info") or {}


def _child_main(name: str, payload: dict, rows_path: str):
    _die_with_parent(payload["parent_pid"])
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what an interrupt does
    os.chdir(REPO)
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    # Triton reads TRITON_INTERPRET at import: decided here, before anything imports it. The codegen stage
    # compiles for sm_90 and must see real JIT functions; on a GPU nothing is interpreted.
    if payload["dry_run"] and name != "codegen":
        os.environ["TRITON_INTERPRET"] = "1"
    else:
        os.environ.pop("TRITON_INTERPRET", None)
    ctx = StageContext(name, payload, rows_path)
    try:
        STAGES[name].run(ctx)
        if not ctx.ended:
            ctx.end("done")
    except BaseException as exc:  # noqa: BLE001 - everything a stage raises is reported, nothing escapes
        ctx._write({"error": _short_error(exc, 2000), "traceback": traceback.format_exc()[-4000:]})
        ctx._f.close()
        sys.stdout.flush()
        os._exit(1)
    ctx._f.close()
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------------
# Parent side: the report and the run loop
# ---------------------------------------------------------------------------------------------------


class Interrupted(Exception):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Report:
    """report.json (the data) and report.md (the same, for people), rewritten atomically on every change."""

    def __init__(self, out: str, argv: list[str], budget_s: float, dry_run: bool, stage_names: list[str]):
        self.out = out
        self.t0 = time.time()
        self.data = {
            "schema": SCHEMA,
            "command": "python -m bench.gpu_report " + " ".join(argv),
            "dry_run": dry_run,
            "budget_s": budget_s,
            "started_at": _now(),
            "updated_at": _now(),
            "elapsed_s": 0.0,
            "state": "running",  # running | finished | interrupted
            "interrupted_by": None,
            "host": {"hostname": os.uname().nodename, "cpus": os.cpu_count(), "python": sys.version.split()[0],
                     "loadavg_1m": round(os.getloadavg()[0], 2), "commit": _git_commit()},
            "stages": [{"name": n, "title": STAGES[n].title, "status": "pending", "reason": None, "error": None,
                        "summary": None, "box_s": None, "started_at": None, "elapsed_s": None, "pid": None,
                        "rows": [], "info": {}} for n in stage_names],
        }

    def stage(self, name: str) -> dict:
        return next(s for s in self.data["stages"] if s["name"] == name)

    def write(self):
        self.data["updated_at"] = _now()
        self.data["elapsed_s"] = round(time.time() - self.t0, 1)
        try:
            annotate(self.data)
        except Exception as exc:  # noqa: BLE001 - a derived figure must never cost the report
            self.data["render_error"] = f"annotate: {_short_error(exc)}"
        # default=repr: an odd value in a row is written as text rather than losing the report
        write_atomic(os.path.join(self.out, "report.json"), json.dumps(self.data, indent=1, default=repr) + "\n")
        try:
            markdown = render_markdown(self.data)
        except Exception as exc:  # noqa: BLE001 - the JSON is written; the markdown says why it is short
            markdown = (f"# GPU report\n\nThe markdown rendering failed ({_short_error(exc)}); report.json beside "
                        f"this file has every result. Stages: " + ", ".join(
                            f"{s['name']} {s['status']}" for s in self.data["stages"]) + "\n")
        write_atomic(os.path.join(self.out, "report.md"), markdown)


class _RowStream:
    """Reads the complete lines a child has appended to its JSONL file since the last call."""

    def __init__(self, path: str):
        self.path, self.offset, self.partial = path, 0, ""

    def read(self) -> list[dict]:
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            f.seek(self.offset)
            chunk = f.read()
            self.offset = f.tell()
        text = self.partial + chunk
        lines = text.split("\n")
        self.partial = lines.pop()  # an unfinished last line waits for the next read
        out = []
        for line in lines:
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    out.append({"error": f"unreadable line from the stage: {line[:200]!r}"})
        return out


def _apply(entry: dict, records: list[dict]) -> dict | None:
    """Fold child records into the stage entry; returns the child's end record if it came."""
    end = None
    for rec in records:
        if "row" in rec:
            row = rec["row"]
            rows = entry["rows"]
            idx = next((i for i, r in enumerate(rows) if r["key"] == row["key"]), None)
            if idx is None:
                rows.append(row)
            else:
                rows[idx] = row  # a row re-emitted with its result replaces its placeholder
        elif "info" in rec:
            entry["info"].update(rec["info"])
        elif "error" in rec:
            entry["error"] = rec["error"]
            if rec.get("traceback"):
                entry["info"]["traceback"] = rec["traceback"]
        elif "end" in rec:
            end = rec["end"]
    return end


def _kill(proc, grace_s: float = 5.0):
    """SIGTERM, then SIGKILL after grace_s, a child process that is still alive."""
    if proc.is_alive():
        proc.terminate()
        proc.join(grace_s)
    if proc.is_alive():
        proc.kill()
        proc.join(5)


def _close_pending(entry: dict, why: str):
    """Rows of a stopped stage: those never reached are skipped, one in progress is interrupted; both say why."""
    for row in entry["rows"]:
        if row.get("status") == "pending":
            row.update(status="skipped", reason=f"not reached: {why}")
        elif row.get("status") == "running":
            row.update(status="interrupted", reason=f"{why} during: {row.get('reason') or 'this row'}")


def _ok_rows(entry) -> int:
    return sum(1 for r in entry["rows"] if r.get("status") == "ok")


def run_stage(report: Report, name: str, box_s: float, payload: dict) -> None:
    entry = report.stage(name)
    os.makedirs(os.path.join(report.out, "stages"), exist_ok=True)
    rows_path = os.path.join(report.out, "stages", f"{name}.jsonl")
    open(rows_path, "w").close()
    start = time.time()
    payload = {**payload, "deadline": start + max(box_s - 3.0, 1.0)}  # the child stops itself a little early
    entry.update(status="running", box_s=round(box_s, 1), started_at=_now())
    # Not a daemon: torch.compile's workers may use multiprocessing, which a daemonic process may not. Every way
    # out of this function below kills the child instead.
    proc = multiprocessing.get_context("fork").Process(target=_child_main, args=(name, payload, rows_path),
                                                       name=f"gpu_report:{name}")
    stream = _RowStream(rows_path)
    end = None
    try:
        proc.start()
        entry["pid"] = proc.pid
        report.write()
        while True:
            proc.join(0.25)
            records = stream.read()
            if records:
                end = _apply(entry, records) or end
                entry["elapsed_s"] = round(time.time() - start, 1)
                report.write()
            if not proc.is_alive():
                break
            if time.time() - start > box_s:
                _kill(proc)
                end = _apply(entry, stream.read()) or end
                ok = _ok_rows(entry)
                entry["status"] = "partial" if ok else "failed"
                entry["reason"] = f"time box of {box_s:.0f} s reached; the stage was stopped after {ok} result(s)"
                _close_pending(entry, "the stage's time box ran out")
                return
        end = _apply(entry, stream.read()) or end
        if end is not None and proc.exitcode == 0:
            entry["status"], entry["reason"], entry["summary"] = end["status"], end.get("reason"), end.get("summary")
        else:
            how = (f"killed by {signal.Signals(-proc.exitcode).name}" if proc.exitcode and proc.exitcode < 0
                   else f"exit code {proc.exitcode}")
            entry["status"] = "failed"
            entry["error"] = entry["error"] or f"the stage process ended without a result ({how})"
            _close_pending(entry, "the stage failed")
    except Interrupted:
        _kill(proc, grace_s=2.0)
        _apply(entry, stream.read())
        entry["status"] = "interrupted"
        _close_pending(entry, "the run was interrupted")
        raise
    except BaseException as exc:  # the parent's own failure (e.g. a full disk): no stage process outlives it
        _kill(proc, grace_s=2.0)
        entry["status"], entry["error"] = "failed", f"report process error: {_short_error(exc)}"
        raise
    finally:
        entry["elapsed_s"] = round(time.time() - start, 1)
        report.write()


def run(args, argv: list[str]) -> int:
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    selected = list(STAGES) if not args.stages else [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in selected if s not in STAGES]
    if unknown:
        raise SystemExit(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    report = Report(out, argv, args.budget_s, args.dry_run, list(STAGES))
    options = {"e2e_steps": args.e2e_steps, "e2e_set": args.e2e_set or []}

    def on_signal(signum, frame):
        for s in (signal.SIGTERM, signal.SIGINT):  # the first signal stops the run; cleanup is not interrupted
            signal.signal(s, signal.SIG_IGN)
        raise Interrupted(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    code = 0
    try:
        report.write()
        deadline = time.time() + args.budget_s
        names = list(STAGES)
        for i, name in enumerate(names):
            entry = report.stage(name)
            if name not in selected:
                entry.update(status="skipped", reason="not selected (--stages)")
                continue
            abort = next((s["info"].get("abort") for s in report.data["stages"] if s["info"].get("abort")), None)
            if abort:
                entry.update(status="skipped", reason=f"not run: {abort}")
                continue
            later = [STAGES[n] for n in names[i + 1:] if n in selected]
            box, why = time_box(STAGES[name], later, deadline - time.time(), args.dry_run)
            if box is None:
                entry.update(status="skipped", reason=f"would not fit: {why}")
                report.write()
                continue
            print(f"[gpu_report] stage {name}: time box {box:.0f} s ({why})", flush=True)
            previous = {s["name"]: s for s in report.data["stages"] if s["status"] not in ("pending", "running")}
            run_stage(report, name, box, {"dry_run": args.dry_run, "out": out, "options": options,
                                          "previous": previous, "parent_pid": os.getpid()})
            entry = report.stage(name)
            print(f"[gpu_report] stage {name}: {entry['status']}"
                  + (f" — {entry['reason'] or entry['error']}" if (entry['reason'] or entry['error']) else ""),
                  flush=True)
        report.data["state"] = "finished"
    except Interrupted as exc:
        report.data["state"] = "interrupted"
        report.data["interrupted_by"] = str(exc)
        for entry in report.data["stages"]:
            if entry["status"] == "running":
                entry["status"] = "interrupted"
            if entry["status"] == "interrupted":
                entry["reason"] = f"the run received {exc} during this stage; results so far are kept"
            elif entry["status"] == "pending":
                entry.update(status="skipped", reason=f"not reached: the run received {exc}")
        code = 128 + exc.signum
    finally:
        for child in multiprocessing.active_children():  # never leave a stage process behind (nor wait for one)
            _kill(child, grace_s=2.0)
        report.write()
        if not code:  # interrupted: stay deaf to further signals until exit, so the exit code names the first
            for s, handler in old.items():
                signal.signal(s, handler)
    print(f"[gpu_report] report: {os.path.join(out, 'report.md')}", flush=True)
    return code


# ---------------------------------------------------------------------------------------------------
# Derived figures and markdown
# ---------------------------------------------------------------------------------------------------


def annotate(data: dict):
    """Fill in % of the measured peak and the speedup over eager on every microbenchmark row."""
    env = next((s for s in data["stages"] if s["name"] == "environment"), {})
    peak = (env.get("info") or {}).get("peak_tflops")
    micro = next((s for s in data["stages"] if s["name"] == "microbench"), None)
    if micro is None:
        return
    eager = {(r.get("kernel"), r.get("case"), r.get("variant")): r.get("ms") for r in micro["rows"]
             if r.get("provider") == "eager" and r.get("status") == "ok"}
    for r in micro["rows"]:
        if r.get("status") != "ok":
            continue
        r["pct_peak"] = 100.0 * r["tflops"] / peak if peak and r.get("tflops") else None
        base = eager.get((r.get("kernel"), r.get("case"), r.get("variant")))
        r["speedup_vs_eager"] = base / r["ms"] if base and r.get("ms") else None


def _fmt(value, spec=".3g", none="—"):
    if value is None:
        return none
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def _status_text(row: dict, limit: int = 200) -> str:
    """status: reason (shortened for the table; report.json has it whole)."""
    status = row.get("status", "")
    note = str(row.get("reason") or row.get("error") or row.get("note") or "")
    if len(note) > limit:
        note = note[:limit] + " …"
    return f"{status}: {note}" if note else status


def _table(header: list[str], rows: list[list]) -> list[str]:
    def cell(v):
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return lines


def render_markdown(data: dict) -> str:
    env = next(s for s in data["stages"] if s["name"] == "environment")
    device = next((r for r in env["rows"] if r["key"] == "device"), {})
    dry = " (dry run: CPU, tiny shapes — no figure here is a GPU measurement)" if data["dry_run"] else ""
    lines = [f"# GPU report{dry}",
             "",
             f"- command: `{data['command']}`",
             f"- device: {device.get('name', 'not measured')}; commit {data['host']['commit']}; "
             f"host {data['host']['hostname']} ({data['host']['cpus']} CPUs, load {data['host']['loadavg_1m']})",
             f"- started {data['started_at']}, updated {data['updated_at']}, {data['elapsed_s']} s of the "
             f"{data['budget_s']} s budget; state: **{data['state']}**"
             + (f" (by {data['interrupted_by']})" if data["interrupted_by"] else ""),
             ""]
    if data["state"] == "running":
        lines += ["> This report is being written. If no process is writing it any more, the run was cut short "
                  "(e.g. SIGKILL) during the stage marked running: its rows are what it had measured.", ""]
    lines += ["## Stages", ""]
    lines += _table(["stage", "status", "time box s", "elapsed s", "rows ok / all", "summary / reason / error"],
                    [[f"{i + 1}. {s['name']}", f"**{s['status']}**", _fmt(s["box_s"]), _fmt(s["elapsed_s"]),
                      f"{_ok_rows(s)} / {len(s['rows'])}", s["summary"] or s["reason"] or s["error"] or ""]
                     for i, s in enumerate(data["stages"])])
    renderers = {"environment": _md_environment, "correctness": _md_correctness, "microbench": _md_microbench,
                 "e2e": _md_e2e, "codegen": _md_codegen}
    for i, s in enumerate(data["stages"]):
        lines += ["", f"## Stage {i + 1}: {s['name']} — {s['title']}", "",
                  f"Status: **{s['status']}**" + (f" — {s['reason']}" if s["reason"] else "")]
        if s["error"]:
            lines += ["", f"Error: `{s['error']}`"]
        if s["rows"]:
            lines += [""] + renderers[s["name"]](s, data)
    return "\n".join(lines) + "\n"


def _md_environment(s, data):
    out = []
    for r in s["rows"]:
        fields = {k: v for k, v in r.items() if k not in ("key", "status")}
        out.append(f"- **{r['key']}** ({r['status']}): "
                   + "; ".join(f"{k} {_fmt(v, '.4g')}" for k, v in fields.items() if v is not None))
    return out


def _md_correctness(s, data):
    out = []
    for r in s["rows"]:
        out.append(f"- `{r.get('command')}` → exit {r.get('exit_code')}: {r.get('counts')}")
        if r.get("first_failure"):
            out += ["", "First failure:", "", "```", str(r["first_failure"])[:3000], "```"]
    return out


def _md_microbench(s, data):
    rows = []
    for r in s["rows"]:
        ms, p20, p80 = r.get("ms"), r.get("ms_p20"), r.get("ms_p80")
        timing = _fmt(ms, ".4g") + (f" ({p20:.4g}–{p80:.4g})" if p20 is not None and p80 is not None else "")
        rows.append([r.get("kernel") or r["key"], r.get("case"), r.get("variant"), r.get("provider"), timing,
                     _fmt(r.get("tflops"), ".3g"), _fmt(r.get("pct_peak"), ".3g"),
                     _fmt(r.get("speedup_vs_eager"), ".2f"), _fmt(r.get("peak_mem_mb"), ".0f"),
                     _status_text(r)])
    peak = (next(x for x in data["stages"] if x["name"] == "environment").get("info") or {}).get("peak_tflops")
    head = [f"Timer: {s['info'].get('timer', '—')}. % of peak: of the measured bf16 matmul peak "
            f"({_fmt(peak, '.1f')} TFLOP/s, stage 1). × eager: eager's median / this median.", ""]
    return head + _table(["kernel", "case", "variant", "provider", "ms median (p20–p80)", "TFLOP/s", "% peak",
                          "× eager", "peak MB", "status"], rows)


def _md_e2e(s, data):
    rows = []
    for r in s["rows"]:
        proj = r.get("projection_8gpu") or {}
        rows.append([r["key"], _fmt(r.get("impls")), _fmt(r.get("micro_batch")), _fmt(r.get("accum_steps")),
                     _fmt(r.get("warmup_s"), ".1f"), _fmt(r.get("steps_timed")), _fmt(r.get("ms_per_step"), ".1f"),
                     _fmt(r.get("tokens_per_s"), ".0f"), _fmt(r.get("peak_mem_gb"), ".1f"),
                     _fmt(proj.get("ms_per_step"), ".1f"), _fmt(proj.get("full_run_s"), ".0f"), _status_text(r)])
    out = _table(["preset", "impls", "micro-batch", "accum", "warm-up s", "steps", "ms/step (1 GPU)", "tokens/s",
                  "peak GB", "projected ms/step on 8 GPUs", "projected full run s", "status"], rows)
    out += ["", "Projection: the 1-GPU step (all micro-batches of the global batch accumulated) divided by 8, times "
            "the preset's max_steps; it assumes perfect scaling (no communication) and is not a measurement.", "",
            f"Published track-3 step times ({TRACK3_SOURCE}; train_time / steps of each log, 8 GPUs):", ""]
    out += _table(["result", "steps", "logs", "ms/step mean (min–max)", "GPU (log header)", "first log"],
                  [[p["result"], p["steps"], p["logs"],
                    f"{p['ms_per_step_mean']:.1f} ({p['ms_per_step_min']:.1f}–{p['ms_per_step_max']:.1f})",
                    ", ".join(p["gpus"]), p["files"][0]] for p in s["info"].get("published", published_track3())])
    return out


def _md_codegen(s, data):
    rows = []
    for r in s["rows"]:
        rows.append([r.get("kernel"), r.get("config"), r.get("num_warps"), r.get("num_stages"),
                     _fmt(r.get("aot_registers")), _fmt(r.get("aot_spill_bytes")), _fmt(r.get("aot_shared_bytes")),
                     _fmt(r.get("jit_registers")), _fmt(r.get("jit_spill_bytes")), _fmt(r.get("agree")),
                     _status_text(r)])
    return ["AOT: bench.codegen's sm_90 compile at the 124M shape. JIT: the kernels stage 3 launched "
            "(CompiledKernel.n_regs; spill bytes = n_spills × 4).", ""] + _table(
        ["kernel", "config", "warps", "stages", "AOT regs", "AOT spill B", "AOT smem B", "JIT regs", "JIT spill B",
         "agree", "status"], rows)


# ---------------------------------------------------------------------------------------------------
# Timing (child side)
# ---------------------------------------------------------------------------------------------------


def _timer(ctx):
    """timer(fn) -> (median, p20, p80) in ms: do_bench on a GPU, a CPU loop in a dry run (same quantiles)."""
    qs = _harness().QUANTILES
    if not ctx.dry_run:
        import triton.testing

        def gpu(fn):
            return tuple(float(v) for v in triton.testing.do_bench(fn, quantiles=qs))

        return gpu, f"triton.testing.do_bench, quantiles {qs}"

    def cpu(fn, reps=2):
        samples = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t)
        return tuple(quantiles_ms(samples, qs))

    return cpu, f"CPU wall clock, 2 calls, quantiles {qs} (dry run)"


def _peak_mem_mb(fn, device: str):
    """MB one call allocates at its peak beyond what was allocated before it (CUDA only; None on the CPU)."""
    if device != "cuda":
        return None
    import torch

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _sync(device: str):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _free(device: str, collect: bool = False):
    """Return a row's memory before the next one. A full gc pass costs ~0.3 s with torch loaded, so only after a
    failure (whose traceback may hold large tensors in a reference cycle); plain refcounting frees the rest."""
    import gc

    if collect:
        gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------
# Stage 1: environment
# ---------------------------------------------------------------------------------------------------

IMPORT_PROBES = {  # backend -> module it needs
    "fa3": "flash_attn_interface",
    "fa2": "flash_attn",
    "fa4": "flash_attn.cute",
    "liger": "liger_kernel.transformers.functional",
}
NVIDIA_SMI_FIELDS = ["name", "driver_version", "clocks.sm", "clocks.max.sm", "clocks.mem", "clocks.max.mem",
                     "power.draw", "power.limit", "temperature.gpu", "pstate"]


NVIDIA_SMI_MINIMAL = ["name", "driver_version", "clocks.sm", "clocks.max.sm"]


def nvidia_smi() -> dict:
    """Clocks, power and driver of GPU 0 from nvidia-smi; a driver that rejects a field name fails the whole query,
    so a minimal field set is tried next."""
    errors = []
    for fields in (NVIDIA_SMI_FIELDS, NVIDIA_SMI_MINIMAL):
        try:
            proc = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                                  capture_output=True, text=True, timeout=15)
        except (OSError, subprocess.SubprocessError) as exc:
            return {"nvidia_smi": f"not run: {_short_error(exc, 200)}"}
        if proc.returncode == 0 and proc.stdout.strip():
            values = [v.strip() for v in proc.stdout.splitlines()[0].split(",")]
            return {f"smi_{k.replace('.', '_')}": v for k, v in zip(fields, values)}
        errors.append(f"exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[:200]}")
    return {"nvidia_smi": "; ".join(errors)}


def _probe_import(module: str) -> str | None:
    import importlib

    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - ImportError or an ABI error from a C extension: both say "not usable"
        return _short_error(exc, 300)
    return None


@stage("environment", "device, versions, optional packages, measured bf16 matmul peak", min_s=20, cap_s=60,
       dry_min_s=5)
def stage_environment(ctx: StageContext):
    import torch

    if not ctx.dry_run and not torch.cuda.is_available():
        ctx.info(abort="no CUDA device (torch.cuda.is_available() is False); use --dry-run on a CPU")
        raise RuntimeError("no CUDA device (torch.cuda.is_available() is False); use --dry-run on a CPU")
    harness = _harness()
    name = harness.device_name(ctx.device)
    device = {"name": name}
    if ctx.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        device.update(capability=f"sm_{props.major}{props.minor}", sm_count=props.multi_processor_count,
                      memory_gb=round(props.total_memory / 2**30, 1))
        for attr, key, scale in (("clock_rate", "sm_clock_max_mhz", 1e-3), ("memory_clock_rate", "mem_clock_mhz", 1e-3),
                                 ("L2_cache_size", "l2_mb", 2**-20)):
            value = getattr(props, attr, None)  # not in every torch version
            device[key] = round(value * scale, 1) if value else None
        device.update(nvidia_smi())
    else:
        device.update(capability=None, sm_count=None, memory_gb=None, threads=torch.get_num_threads())
    ctx.row("device", **device)

    import numpy
    import triton

    ctx.row("versions", python=sys.version.split()[0], torch=torch.__version__, triton=triton.__version__,
            cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if ctx.device == "cuda" else None,
            numpy=numpy.__version__, triton_interpret=os.environ.get("TRITON_INTERPRET"))

    from kernels.attention_select import backend_unavailable_reason

    for backend, module in IMPORT_PROBES.items():
        why = _probe_import(module)
        usable = why is None
        fields = {"module": module, "imports": usable, "why_not": why}
        if backend != "liger":
            reason = backend_unavailable_reason(backend, ctx.device)
            fields["usable_by_kernels_attention"] = reason is None
            if reason and usable:
                fields["why_not"] = reason
        ctx.row(f"import/{backend}", status="ok" if usable else "not available", **fields)

    # The measured peak: one square bf16 matmul, the denominator of every "% of peak" in the report.
    n = 8192 if ctx.device == "cuda" else 512
    from kernels.device import native_bf16

    dtype = torch.bfloat16 if native_bf16(ctx.device) else torch.float32
    a = torch.randn(n, n, device=ctx.device, dtype=dtype)
    b = torch.randn(n, n, device=ctx.device, dtype=dtype)
    c = torch.empty(n, n, device=ctx.device, dtype=dtype)
    timer, how = _timer(ctx)
    torch.matmul(a, b, out=c)
    _sync(ctx.device)
    med, p20, p80 = timer(lambda: torch.matmul(a, b, out=c))
    tflops = 2.0 * n**3 / (med * 1e-3) / 1e12
    sheet = harness.roofline(name)
    ctx.row("matmul_peak", shape=f"{n}x{n}x{n}", dtype=str(dtype).removeprefix("torch."), ms=med, ms_p20=p20,
            ms_p80=p80, tflops=tflops, datasheet_tflops=sheet[0] / 1e12 if sheet else None,
            pct_datasheet=100 * tflops / (sheet[0] / 1e12) if sheet else None, timer=how)
    ctx.info(peak_tflops=tflops, device_name=name)
    ctx.end("done", summary=f"{name}; bf16 matmul peak {tflops:.1f} TFLOP/s" if ctx.device == "cuda"
            else f"{name}; {dtype} matmul {tflops * 1e3:.1f} GFLOP/s (dry run)")


# ---------------------------------------------------------------------------------------------------
# Stage 2: correctness
# ---------------------------------------------------------------------------------------------------

PYTEST_GPU = ["-m", "gpu", "tests/kernels", "-x", "-q"]
PYTEST_DRY = ["tests/kernels/test_registry.py", "-x", "-q"]  # fast and real: passes on any machine


def parse_junit(path: str) -> tuple[dict, str | None]:
    """({passed, failed, errors, skipped, total}, first failure text or None) from a pytest JUnit XML file."""
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "total": 0}
    first = None
    for case in root.iter("testcase"):
        counts["total"] += 1
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "errors", "skipped": "skipped"}[child.tag]
                if child.tag != "skipped" and first is None:
                    message = child.get("message") or ""
                    first = f"{case.get('classname')}::{case.get('name')}\n{message}\n{(child.text or '')[-2500:]}"
                break
        counts[outcome] += 1
    return counts, first


def parse_progress(text: str) -> dict:
    """Counts from pytest -q progress lines ('..s.F  [ 40%]'), for a run stopped before its summary."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "total": 0}
    symbols = {".": "passed", "F": "failed", "E": "errors", "s": "skipped", "x": "skipped", "X": "passed"}
    for line in text.splitlines():
        stripped = line.split("[")[0].strip() if line.rstrip().endswith("%]") else line.strip()
        if stripped and set(stripped) <= set(symbols):
            for ch in stripped:
                counts[symbols[ch]] += 1
                counts["total"] += 1
    return counts


@stage("correctness", "gpu-marked kernel tests on the device", min_s=30, cap_s=120, dry_min_s=10)
def stage_correctness(ctx: StageContext):
    args = PYTEST_DRY if ctx.dry_run else PYTEST_GPU
    xml = os.path.join(ctx.out, "stages", "correctness.junit.xml")
    log = os.path.join(ctx.out, "stages", "correctness.log")
    if os.path.exists(xml):
        os.unlink(xml)
    cmd = [sys.executable, "-m", "pytest", *args, "-p", "no:cacheprovider", f"--junitxml={xml}"]
    env = dict(os.environ)
    if not ctx.dry_run:
        env.pop("TRITON_INTERPRET", None)
    start = time.time()
    timeout = max(ctx.remaining() - 2.0, 1.0)
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent)
        try:
            code = proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
            timed_out = True
    with open(log) as f:
        text = f.read()
    shown = "python -m pytest " + " ".join(args)
    if not timed_out and os.path.exists(xml):
        counts, first = parse_junit(xml)
    else:
        counts, first = parse_progress(text), None
    tail = "\n".join(text.splitlines()[-25:])
    fields = dict(command=shown, exit_code=code, counts=counts, first_failure=first, seconds=time.time() - start,
                  log="stages/correctness.log", log_tail=tail)
    summary = (f"{counts['passed']} passed, {counts['failed'] + counts['errors']} failed, {counts['skipped']} skipped"
               + (f"; first failure: {first.splitlines()[0]}" if first else ""))
    if timed_out:
        ctx.row("pytest", status="partial", reason=f"stopped at the time box after {timeout:.0f} s", **fields)
        ctx.end("partial", reason=f"pytest stopped at the time box ({timeout:.0f} s)", summary=summary)
    elif code in (0, 1, 5):  # all passed / some failed / nothing collected: pytest ran to its end
        ctx.row("pytest", status="ok", **fields)
        ctx.end("done", summary=summary)
    else:
        ctx.row("pytest", status="failed", error=f"pytest exit code {code} (usage or internal error)", **fields)
        ctx.end("failed", reason=f"pytest exit code {code}", summary=summary)


# ---------------------------------------------------------------------------------------------------
# Stage 3: microbenchmarks
# ---------------------------------------------------------------------------------------------------


class NotAvailable(Exception):
    """This implementation does not exist (yet) or cannot run here: recorded as 'not available'."""


@dataclass
class Case:
    """The shapes of one benchmark case (the gpt2-124m or the track-3 model at its training micro-batch)."""

    name: str
    source: str  # where the shapes come from
    d: int
    n_head: int
    head_dim: int
    vocab: int
    mlp: int
    batch: int
    seq: int
    softcap: float | None
    ns_steps: int
    ns_coefficients: str
    hidden_shapes: list  # [(label, count, rows, cols)]
    attn_scale: float | None = None
    track3: bool = False

    @property
    def tokens(self) -> int:
        return self.batch * self.seq


DRY_VOCAB = 256
DRY_NS_BATCH = 2  # dry run: matrices per Newton-Schulz call (the model has more of each shape)


def _hidden_shapes(model_cfg) -> list[tuple[str, int, int, int]]:
    """The Muon matrices of the model, grouped by shape as the optimizer batches them: (label, count, rows, cols);
    the label names the parameters of that shape ('attn.{c_k,c_proj,c_q,c_v}'), the same at every model size."""
    import torch

    from model.gpt import GPT
    from optim import param_groups

    with torch.device("meta"):
        model = GPT(model_cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    by_shape: dict[tuple, list[str]] = {}
    for p in param_groups(model)["hidden"]:
        leaf = names[id(p)].split(".", 2)[-1].removesuffix(".weight")  # blocks.3.attn.c_q.weight -> attn.c_q
        by_shape.setdefault(tuple(p.shape), []).append(leaf)
    out = []
    for (rows, cols), leaves in by_shape.items():
        unique = sorted(set(leaves))
        prefix = os.path.commonprefix(unique)
        prefix = prefix[: prefix.rfind(".") + 1] if "." in prefix else ""
        label = unique[0] if len(unique) == 1 else prefix + "{" + ",".join(u[len(prefix):] for u in unique) + "}"
        out.append((label, len(leaves), rows, cols))
    return out


def benchmark_cases(dry_run: bool) -> list[Case]:
    """The gpt2-124m case and the track-3 case, from configs.PRESETS (track 3 from its definition while the preset
    is absent). A dry run keeps each case's structure and shrinks the dimensions to the tiny model's."""
    from model.config import model_preset
    from speedrun.config import PRESETS, resolve, resolve_auto

    cases = []
    for name in ("124m", "track3"):
        preset_name = "gpt2-124m" if name == "124m" else TRACK3_PRESET
        preset = PRESETS[preset_name]() if preset_name in PRESETS else None
        if preset is not None:
            # the optimizer settings may come from a recipe; "auto" implementation names resolved (as on the CPU:
            # only the shapes of the model built from it are read)
            resolved = resolve_auto(resolve([f"--preset={preset_name}"]), "cpu")
            model_cfg, optim = resolved.model, resolved.optim
            batch, seq = preset.batch_size, preset.seq_len
            ns_steps, coefficients = optim.ns_steps, optim.ns_coefficients
            source = f"configs.PRESETS[{preset_name!r}]"
            softcap = getattr(model_cfg, "logit_softcap", None)
        else:  # track 3 before its preset lands
            f = TRACK3_FALLBACK
            model_cfg = model_preset("gpt2-124m", n_embd=f["n_embd"], n_head=f["n_head"], vocab_size=f["vocab_size"],
                                     mlp_ratio=f["mlp_ratio"])
            batch, seq, ns_steps, softcap = f["batch_size"], f["seq_len"], f["ns_steps"], f["softcap"]
            # Track 3 iterates X = 2X + (-1.5A + 0.5A²)X twelve times; every step costs the same three products
            # whatever the coefficients, so twelve quintic steps time it exactly.
            coefficients = "quintic"
            source = (f"track-3 definition (configs.PRESETS has no {preset_name!r} yet): d 768, 6 heads of 128, "
                      "vocab 50304, MLP 3072, 64×1024 tokens, 12 Newton-Schulz steps")
        track3 = name == "track3"
        if dry_run:  # the interpreter runs programs one after another: keep every launch small
            import dataclasses

            tiny = model_preset("tiny")
            model_cfg = dataclasses.replace(model_cfg, n_layer=tiny.n_layer, n_head=tiny.n_head, n_embd=tiny.n_embd,
                                            max_seq_len=tiny.max_seq_len)
            batch, seq, ns_steps = 1, 32, 2
            source += f"; dry run: tiny model (d {tiny.n_embd}), 1×32 tokens, vocab {DRY_VOCAB}, 2 NS steps"
        vocab = DRY_VOCAB if dry_run else model_cfg.vocab_size
        cases.append(Case(name=name, source=source, d=model_cfg.n_embd, n_head=model_cfg.n_head,
                          head_dim=model_cfg.n_embd // model_cfg.n_head, vocab=vocab,
                          mlp=model_cfg.mlp_ratio * model_cfg.n_embd, batch=batch, seq=seq, softcap=softcap,
                          ns_steps=ns_steps, ns_coefficients=coefficients, hidden_shapes=_hidden_shapes(model_cfg),
                          attn_scale=TRACK3_FALLBACK["attn_scale"] if track3 else None, track3=track3))
    return cases


@dataclass
class Row:
    kernel: str
    case: Case
    variant: str
    provider: str
    tier: int  # priority: lower runs first
    setup: Callable  # setup() -> (fn, flops, fields) or raises NotAvailable
    heavy: bool = False  # compiles something (torch.compile / flex): needs more time to start

    @property
    def key(self) -> str:
        return f"{self.kernel}/{self.case.name}/{self.variant}/{self.provider}"


def _accepts(fn, names) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return all(n in params for n in names)


def _compile(fn, dry_run: bool):
    import torch

    torch._dynamo.reset()  # each compiled row compiles its own graph, not a cache entry of another shape
    return torch.compile(fn, backend="eager") if dry_run else torch.compile(fn)


# --- Newton-Schulz ----------------------------------------------------------------------------------


def _ns_rows(case: Case, ctx) -> list[Row]:
    import torch

    from kernels import registry

    flops = _flop_models()
    rows = []
    for label, count, rows_, cols in case.hidden_shapes:
        count = min(count, DRY_NS_BATCH) if ctx.dry_run else count
        naive = flops.ns(rows_, cols, case.ns_steps, symmetric=False, batch=count)
        useful = flops.ns(rows_, cols, case.ns_steps, symmetric=True, batch=count)
        shape = {"batch": count, "rows": rows_, "cols": cols, "steps": case.ns_steps,
                 "coefficients": case.ns_coefficients}

        def make_input(count=count, rows_=rows_, cols=cols):
            return torch.randn(count, rows_, cols, device=ctx.device).to(torch.bfloat16)

        def common(fn, note=None, naive=naive, useful=useful, shape=shape):
            return fn, naive, {"shape": shape, "dtype": "bfloat16", "flops_useful": useful, "note": note}

        def eager(make_input=make_input, common=common):
            G, f = make_input(), registry.get("newton_schulz", "eager")
            return common(lambda: f(G, steps=case.ns_steps, coefficients=case.ns_coefficients))

        def compiled(make_input=make_input, common=common):
            G = make_input()
            f = _compile(registry.get("newton_schulz", "eager"), ctx.dry_run)
            return common(lambda: f(G, steps=case.ns_steps, coefficients=case.ns_coefficients))

        def triton_(make_input=make_input, common=common):
            G, f = make_input(), registry.get("newton_schulz", "triton")
            return common(lambda: f(G, steps=case.ns_steps, coefficients=case.ns_coefficients))

        def torch_muon(make_input=make_input, common=common):
            try:
                from torch.optim._muon import _zeropower_via_newtonschulz as zeropower
            except ImportError as exc:
                raise NotAvailable(f"torch {torch.__version__} has no torch.optim._muon Newton-Schulz ({exc})")
            from kernels.reference import ns_coefficients

            coeffs = ns_coefficients(case.ns_coefficients, case.ns_steps)
            if len(set(coeffs)) != 1:
                raise NotAvailable(f"torch.optim.Muon uses one (a, b, c) for every step; {case.ns_coefficients!r} "
                                   "varies per step")
            G = make_input()

            def loop():  # torch.optim.Muon orthogonalises each parameter on its own: one 2-D call per matrix
                for g in G:
                    zeropower(g, coeffs[0], case.ns_steps, 1e-7)

            return common(loop, note="torch.optim.Muon's Newton-Schulz, one 2-D call per matrix (as it steps)")

        for provider, fn, tier in (("eager", eager, 0), ("triton", triton_, 0), ("torch_muon", torch_muon, 1),
                                   ("compile", compiled, 3)):
            rows.append(Row("newton_schulz", case, label, provider, tier + (1 if case.track3 else 0), fn,
                            heavy=provider == "compile"))
    return rows


# --- fused linear cross-entropy ----------------------------------------------------------------------


def _flce_rows(case: Case, ctx) -> list[Row]:
    import torch

    from kernels import registry

    flops = _flop_models().flce(case.tokens, case.d, case.vocab)
    N, H, V = case.tokens, case.d, case.vocab
    variants = [("fwd+bwd", case.softcap)] if case.track3 else [("fwd+bwd", case.softcap), ("fwd+bwd.nocap", None)]
    rows = []
    for variant, softcap in variants:
        def inputs(bias=False):
            hidden = torch.randn(N, H, device=ctx.device).to(torch.bfloat16).requires_grad_()
            weight = (torch.randn(V, H, device=ctx.device) / H**0.5).to(torch.bfloat16).requires_grad_()
            targets = torch.randint(0, V, (N,), device=ctx.device)
            b = torch.zeros(V, device=ctx.device, dtype=torch.bfloat16, requires_grad=True) if bias else None
            return hidden, weight, targets, b

        def step_fn(loss_fn, leaves):
            def step():
                loss = loss_fn()
                loss.backward()
                for t in leaves:
                    if t is not None:
                        t.grad = None  # each call allocates its gradients, as in training
            return step

        def build(impl, compile_=False, softcap=softcap, variant=variant):
            f = registry.get("linear_cross_entropy", impl)
            extra = {"validate_targets": False} if impl == "triton" else {}
            if case.track3:
                if not _accepts(f, TRACK3_HEAD_KWARGS):
                    raise NotAvailable(f"the {impl} linear_cross_entropy has no track-3 head (keyword arguments "
                                       f"{', '.join(TRACK3_HEAD_KWARGS)}: bias + algebraic softcap)")
                extra.update(softcap_kind=TRACK3_SOFTCAP_KIND, reduction="sum")
            if compile_:
                f = _compile(f, ctx.dry_run)
            h, w, t, b = inputs(bias=case.track3)
            if b is not None:
                extra["bias"] = b
            step = step_fn(lambda: f(h, w, t, softcap=softcap, **extra), (h, w, b))
            return step, flops, {"shape": {"N": N, "H": H, "V": V}, "dtype": "bfloat16", "softcap": softcap}

        def liger(softcap=softcap):
            try:
                from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy as f
            except Exception as exc:  # noqa: BLE001 - any import failure means "not here"
                raise NotAvailable(f"liger-kernel does not import: {_short_error(exc, 200)}")
            if ctx.dry_run:
                raise NotAvailable("Liger's Triton kernels need CUDA tensors (the dry run keeps them off the CPU)")
            h, w, t, b = inputs(bias=case.track3)
            kwargs = {"bias": b, "reduction": "sum"} if case.track3 else {}
            note = "no softcap (Liger has no tanh softcap)" if softcap is None or not case.track3 else \
                "bias, sum, no softcap (Liger has no algebraic softcap)"
            return (step_fn(lambda: f(h, w, t, **kwargs), (h, w, b)), flops,
                    {"shape": {"N": N, "H": H, "V": V}, "dtype": "bfloat16", "softcap": None, "note": note})

        peer_here = softcap is None or case.track3
        providers = [("eager", lambda b=build: b("eager"), 0), ("triton", lambda b=build: b("triton"), 0)]
        if peer_here:
            providers.append(("liger", liger, 1))
        if variant == "fwd+bwd":
            providers.append(("compile", lambda b=build: b("eager", compile_=True), 3))
        for provider, fn, tier in providers:
            tier = tier + (1 if variant.endswith("nocap") else 0) + (1 if case.track3 else 0)
            rows.append(Row("linear_cross_entropy", case, variant, provider, tier, fn, heavy=provider == "compile"))
    return rows


# --- ReLU² MLP ---------------------------------------------------------------------------------------


def _mlp_rows(case: Case, ctx) -> list[Row]:
    import torch
    import torch.nn.functional as F

    from kernels import registry

    N, H, Fdim = case.tokens, case.d, case.mlp
    rows = []
    for mode in ("forward", "backward"):
        flops = _flop_models().mlp(N, H, Fdim, mode)

        def make(fn_of, mode=mode, flops=flops, note=None):
            x = torch.randn(N, H, device=ctx.device).to(torch.bfloat16).requires_grad_()
            w_fc = (torch.randn(Fdim, H, device=ctx.device) / H**0.5).to(torch.bfloat16).requires_grad_()
            w_proj = (torch.randn(H, Fdim, device=ctx.device) / Fdim**0.5).to(torch.bfloat16).requires_grad_()
            leaves, extra = [x, w_fc, w_proj], {}
            if case.track3:
                extra = {"b_fc": torch.zeros(Fdim, device=ctx.device, dtype=torch.bfloat16, requires_grad=True),
                         "b_proj": torch.zeros(H, device=ctx.device, dtype=torch.bfloat16, requires_grad=True)}
                leaves += list(extra.values())
            f = fn_of()
            fields = {"shape": {"N": N, "H": H, "F": Fdim}, "dtype": "bfloat16", "note": note}
            if mode == "forward":
                return (lambda: f(x, w_fc, w_proj, **extra)), flops, fields
            dy = torch.randn(N, H, device=ctx.device).to(torch.bfloat16)
            y = f(x, w_fc, w_proj, **extra)

            def backward():
                for t in leaves:
                    t.grad = None
                y.backward(dy, retain_graph=True)

            return backward, flops, fields

        def impl(name):
            f = registry.get("relu2_mlp", name)
            if case.track3 and not _accepts(f, TRACK3_MLP_KWARGS):
                raise NotAvailable(f"the {name} relu2_mlp has no biases (keyword arguments "
                                   f"{', '.join(TRACK3_MLP_KWARGS)}): the track-3 MLP variant does not exist yet")
            return f

        def compiled():
            import contextlib

            import torch._functorch.config as fconfig

            f = impl("eager")
            # backward mode calls backward(retain_graph=True) repeatedly: no donated buffers for that graph
            patch = fconfig.patch(donated_buffer=False) if hasattr(fconfig, "donated_buffer") else \
                contextlib.nullcontext()
            compiled_f = _compile(f, ctx.dry_run)

            def call(*args, **kwargs):
                with patch:
                    return compiled_f(*args, **kwargs)

            return call

        def liger():
            try:
                from liger_kernel.transformers.functional import liger_relu_squared
            except Exception as exc:  # noqa: BLE001
                raise NotAvailable(f"liger-kernel does not import: {_short_error(exc, 200)}")
            if ctx.dry_run:
                raise NotAvailable("Liger's Triton kernels need CUDA tensors (the dry run keeps them off the CPU)")
            if case.track3:
                def mlp(x, w_fc, w_proj, b_fc, b_proj):
                    return F.linear(liger_relu_squared(F.linear(x, w_fc, b_fc)), w_proj, b_proj)
            else:
                def mlp(x, w_fc, w_proj):
                    return F.linear(liger_relu_squared(F.linear(x, w_fc)), w_proj)
            return mlp

        for provider, fn_of, tier in (("eager", lambda: impl("eager"), 0), ("triton", lambda: impl("triton"), 0),
                                      ("liger", liger, 1), ("compile", compiled, 3)):
            note = "cuBLAS GEMMs around Liger's relu² kernel" if provider == "liger" else None
            rows.append(Row("relu2_mlp", case, mode, provider, tier + (1 if case.track3 else 0),
                            lambda make=make, fn_of=fn_of, note=note: make(fn_of, note=note),
                            heavy=provider == "compile"))
    return rows


# --- attention ---------------------------------------------------------------------------------------

ATTENTION_PROVIDERS = ("eager", "sdpa", "fa3", "fa2", "fa4", "flex")


def _attention_rows(case: Case, ctx) -> list[Row]:
    import torch

    from bench.cases.attention import Unavailable, attention_case

    B, T, H, D = case.batch, case.seq, case.n_head, case.head_dim
    masks = ["causal"] if case.track3 else ["causal", "window", "docs"]
    rows = []
    for mask in masks:
        for mode in ("fwd", "bwd"):
            def setup(provider, mask=mask, mode=mode):
                try:
                    fn, flops, fields = attention_case(
                        provider, B, T, H, D, device=ctx.device, dtype=torch.bfloat16, backward=mode == "bwd",
                        mask=mask, scale=case.attn_scale, doc_lengths=(max(T // 32, 1), T))
                except Unavailable as exc:
                    raise NotAvailable(str(exc)) from None
                fields["shape"] = dict(zip("BTHD", fields["shape"]))
                return fn, flops, fields

            for provider in ATTENTION_PROVIDERS:
                tier = (4 if provider == "flex" else 0 if mask == "causal" else 2) + (1 if case.track3 else 0)
                rows.append(Row("attention", case, f"{mask}.{mode}", provider, tier,
                                lambda s=setup, p=provider: s(p), heavy=provider == "flex"))
    return rows


def microbench_rows(ctx) -> list[Row]:
    rows = []
    for case in benchmark_cases(ctx.dry_run):
        rows += _ns_rows(case, ctx) + _flce_rows(case, ctx) + _mlp_rows(case, ctx) + _attention_rows(case, ctx)
    return rows


def jit_kernels() -> list[dict]:
    """Every variant the Triton JIT compiled (and loaded) for the project's kernel modules: registers, spills."""
    import importlib

    try:
        from triton.runtime.jit import JITFunction
    except ImportError:
        return []
    _, _, modules = _codegen_api()
    out = []
    for module_name in modules:
        module = importlib.import_module(module_name)
        for attr in vars(module).values():
            if not isinstance(attr, JITFunction):
                continue
            for caches in list(attr.device_caches.values()):
                kernel_cache = caches[0]  # (kernel_cache, key_cache, target, backend, binder) in triton 3.6-3.9
                for kernel in list(kernel_cache.values()):
                    n_regs = getattr(kernel, "n_regs", None)
                    if n_regs is None or not hasattr(kernel, "metadata"):
                        continue  # compiled but never loaded (or still compiling)
                    src = kernel.src
                    names = attr.arg_names
                    constexprs = {names[k[0]]: v for k, v in src.constants.items()
                                  if isinstance(k, tuple) and len(k) == 1}
                    out.append({"module": module_name, "fn": attr.__name__, "name": kernel.name,
                                "num_warps": kernel.metadata.num_warps, "num_stages": kernel.metadata.num_stages,
                                "shared_bytes": kernel.metadata.shared, "n_regs": n_regs,
                                "spill_bytes": 4 * kernel.n_spills, "constexprs": _json_safe(constexprs),
                                "pointer_types": {k: v for k, v in src.signature.items()
                                                  if isinstance(v, str) and v.startswith("*")}})
    return out


@stage("microbench", "kernels vs eager / torch.compile / peers at the 124M and track-3 shapes", min_s=30,
       cap_s=150, dry_min_s=15)
def stage_microbench(ctx: StageContext):
    timer, how = _timer(ctx)
    ctx.info(timer=how, cases=[{k: v for k, v in vars(c).items()} for c in benchmark_cases(ctx.dry_run)])
    rows = sorted(microbench_rows(ctx), key=lambda r: r.tier)  # stable: natural order within a tier
    for r in rows:  # every key appears from the start, so a cut-short report still lists the whole plan
        ctx._write({"row": _row_fields(r, "pending")})
    skipped, statuses = 0, {}
    for r in rows:
        need = (3.0 if ctx.dry_run else 45.0) if r.heavy else (0.5 if ctx.dry_run else 3.0)
        if ctx.remaining() < need:
            skipped += 1
            ctx.row(r.key, "skipped", reason=f"time box: {max(ctx.remaining(), 0):.0f} s left, this row needs "
                                              f"~{need:.0f} s", **_row_fields(r))
            continue
        status = _run_row(ctx, r, timer)
        statuses[status] = statuses.get(status, 0) + 1
        if r.provider == "triton" and not ctx.dry_run:
            ctx.info(jit_kernels=jit_kernels())
    ctx.info(jit_kernels=jit_kernels())
    if skipped:
        statuses["skipped"] = skipped
    ctx.end("partial" if skipped else "done", reason=f"{skipped} of {len(rows)} rows not started: time box"
            if skipped else None, summary=", ".join(f"{n} {s}" for s, n in statuses.items()))


def _row_fields(r: Row, status: str | None = None) -> dict:
    fields = {"kernel": r.kernel, "case": r.case.name, "variant": r.variant, "provider": r.provider}
    if status:
        fields.update(key=r.key, status=status)
    return fields


def _run_row(ctx, r: Row, timer) -> str:
    """Set up, warm, time and record one row; returns its status."""
    fn, failed, status = None, False, "ok"
    try:
        t0 = time.time()
        fn, flops, fields = r.setup()
        fn()  # first call: compilation, autotuning, allocation — outside the timed calls
        _sync(ctx.device)
        first = time.time() - t0
        med, p20, p80 = timer(fn)
        peak = _peak_mem_mb(fn, ctx.device)
        ctx.row(r.key, "ok", **_row_fields(r), ms=med, ms_p20=p20, ms_p80=p80, flops=flops,
                tflops=flops / (med * 1e-3) / 1e12 if flops else None, peak_mem_mb=peak, first_call_s=first,
                **fields)
    except NotAvailable as exc:
        status = "not available"
        ctx.row(r.key, status, reason=str(exc), **_row_fields(r))
    except Exception as exc:  # noqa: BLE001 - one failing row (an OOM, a compile error) must not end the stage
        failed, status = True, "failed"
        ctx.row(r.key, status, error=_short_error(exc), **_row_fields(r))
    finally:
        fn = None
        _free(ctx.device, collect=failed)
    return status


# ---------------------------------------------------------------------------------------------------
# Stage 4: end-to-end step
# ---------------------------------------------------------------------------------------------------

E2E_PRESETS = (TRACK3_PRESET, "gpt2-124m")


def synthetic_shards(directory: str, train_tokens: int, val_tokens: int, vocab: int, seed: int = 0) -> None:
    """One train and one val shard of uniform random token ids (timing does not depend on the text)."""
    import numpy as np

    from data.shards import write_shard

    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    write_shard(os.path.join(directory, "synthetic_train_000000.bin"),
                rng.integers(0, min(vocab, 50257), train_tokens, dtype=np.uint16))
    write_shard(os.path.join(directory, "synthetic_val_000000.bin"),
                rng.integers(0, min(vocab, 50257), val_tokens, dtype=np.uint16))


def e2e_config(preset: str, data_dir: str, dry_run: bool, extra: list[str]):
    """The TrainConfig of `preset` on the synthetic shards (one micro-batch of validation; a dry run shrinks the
    model to the tiny preset's dimensions and turns compilation off). `extra` are --key=value overrides."""
    from model.config import model_preset
    from speedrun.config import PRESETS, resolve

    p = PRESETS[preset]()
    batch, seq = p.batch_size, p.seq_len
    args = [f"--preset={preset}", f"--data_dir={data_dir}", "--train_pattern=synthetic_train_*.bin",
            "--val_pattern=synthetic_val_*.bin", f"--device={'cpu' if dry_run else 'cuda'}"]
    if dry_run:
        tiny = model_preset("tiny")
        batch, seq = 2, tiny.max_seq_len
        # one micro-batch a step (reference_world_size 0: no accumulation), a small vocab: seconds on a CPU
        args += [f"--model.n_layer={tiny.n_layer}", f"--model.n_head={tiny.n_head}", f"--model.n_embd={tiny.n_embd}",
                 f"--model.max_seq_len={tiny.max_seq_len}", f"--model.vocab_size={DRY_VOCAB}", f"--batch_size={batch}",
                 f"--seq_len={seq}", "--reference_world_size=0", "--grad_accum=1", "--compile=False"]
    return resolve(args + [f"--val_tokens={batch * seq}"] + list(extra))


def _impls(cfg) -> str:
    model, optim = cfg.model, cfg.optim
    return (f"attn {model.attn_impl}, mlp {model.mlp_impl}, ce {model.ce_impl}, optimizer {optim.name} "
            f"(ns {getattr(optim, 'newton_schulz_impl', '—')}), compile {cfg.compile}")


def run_e2e(ctx, preset: str, deadline: float, steps: int, warmup_steps: int) -> dict:
    """Build the preset's Trainer, warm up (compile), time `steps` CUDA-synchronised training steps."""
    import torch

    from train import Trainer

    with tempfile.TemporaryDirectory(prefix="gpu_report_e2e_") as tmp:
        cfg = e2e_config(preset, tmp, ctx.dry_run, ctx.options["e2e_set"])
        accum_rows = cfg.batch_size * max(cfg.reference_world_size, 1) * cfg.grad_accum
        step_tokens = accum_rows * cfg.seq_len
        synthetic_shards(tmp, (steps + warmup_steps + 2) * step_tokens + 1, cfg.val_tokens + 1, cfg.model.vocab_size)
        cfg = e2e_config(preset, tmp, ctx.dry_run, ctx.options["e2e_set"] + [f"--out_dir={tmp}/runs"])
        key = f"e2e/{preset}"
        t0 = time.time()
        trainer = Trainer(cfg)
        fields = {"preset": preset, "impls": _impls(trainer.cfg), "micro_batch": f"{cfg.batch_size}×{cfg.seq_len}",
                  "accum_steps": trainer.accum, "tokens_per_step": trainer.loader.tokens_per_step,
                  "max_steps": cfg.max_steps, "params": trainer.model.num_params(),
                  "attention_backend": trainer.attention, "build_s": time.time() - t0}
        # progress rows: a preset stopped at the time box still says how far it got (compiling, warm, timing)
        ctx.row(key, "running", reason=f"warm-up: {warmup_steps} step(s), the first compiles", **fields)
        t0 = time.time()
        for step in range(warmup_steps):
            trainer.train_step(step)
        _sync(ctx.device)
        fields["warmup_s"] = time.time() - t0
        ctx.row(key, "running", reason=f"warm after {fields['warmup_s']:.0f} s; timing up to {steps} steps", **fields)
        if ctx.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for step in range(warmup_steps, warmup_steps + steps):
            if times and time.time() + max(times) * 1.5 > deadline:
                break
            _sync(ctx.device)
            t = time.perf_counter()
            trainer.train_step(step)
            _sync(ctx.device)
            times.append(time.perf_counter() - t)
        if not times:
            raise RuntimeError("no step was timed before the deadline")
        med, p20, p80 = quantiles_ms(times, (0.5, 0.2, 0.8))
        fields.update(steps_timed=len(times), ms_per_step=med, ms_p20=p20, ms_p80=p80,
                      ms_mean=1e3 * sum(times) / len(times), tokens_per_s=trainer.loader.tokens_per_step / (med / 1e3),
                      peak_mem_gb=torch.cuda.max_memory_allocated() / 2**30 if ctx.device == "cuda" else None,
                      projection_8gpu={"ms_per_step": med / 8, "full_run_s": cfg.max_steps * med / 8 / 1e3,
                                       "label": "projection: 1-GPU step / 8 × max_steps, perfect scaling assumed"})
        return fields


@stage("e2e", "one training step of the track3 and gpt2-124m presets on one GPU", min_s=60, cap_s=150,
       dry_min_s=10)
def stage_e2e(ctx: StageContext):
    from speedrun.config import PRESETS

    published = published_track3()
    ctx.info(published=published)
    steps = 3 if ctx.dry_run else ctx.options["e2e_steps"]
    warmup = 1 if ctx.dry_run else 2
    min_s = 5.0 if ctx.dry_run else 45.0
    todo = list(E2E_PRESETS)
    for preset in todo:  # the whole plan from the start, as in stage 3
        ctx._write({"row": {"key": f"e2e/{preset}", "status": "pending", "preset": preset}})
    partial, summary = False, []
    for i, preset in enumerate(todo):
        key = f"e2e/{preset}"
        if preset not in PRESETS:
            ctx.row(key, "not available", preset=preset,
                    reason=f"configs.PRESETS has no {preset!r} preset yet (have: {', '.join(sorted(PRESETS))})")
            continue
        share = ctx.remaining() / (len(todo) - i)
        if share < min_s:
            partial = True
            ctx.row(key, "skipped", preset=preset,
                    reason=f"time box: {share:.0f} s for this preset, needs ~{min_s:.0f}")
            continue
        try:
            fields = run_e2e(ctx, preset, time.time() + share, steps, warmup)
        except Exception as exc:  # noqa: BLE001 - an OOM or compile error in one preset leaves the other to run
            ctx.row(key, "failed", preset=preset, error=_short_error(exc))
            continue
        finally:
            _free(ctx.device, collect=True)
        if preset == TRACK3_PRESET:
            fields["published"] = published
        summary.append(f"{preset} {fields['ms_per_step']:.1f} ms/step")
        if fields["steps_timed"] < steps:
            partial = True
            ctx.row(key, "partial", reason=f"{fields['steps_timed']} of {steps} steps fitted in the time box", **fields)
        else:
            ctx.row(key, "ok", **fields)
    ctx.end("partial" if partial else "done", summary="; ".join(summary) or None)


# ---------------------------------------------------------------------------------------------------
# Stage 5: codegen (AOT predictions vs the JIT's kernels)
# ---------------------------------------------------------------------------------------------------


def match_jit(case, jit: list[dict]) -> list[dict]:
    """The JIT variants compiled from the same function with the case's constexprs, warps, stages and pointer
    dtypes (the JIT may hold more constexprs, e.g. a size specialised to 1: a superset matches)."""
    fn_name = getattr(case.fn, "__name__", None)
    want_ptrs = {k: v for k, v in case.signature.items() if isinstance(v, str) and v.startswith("*")}
    out = []
    for j in jit:
        if j["fn"] != fn_name or j["num_warps"] != case.num_warps or j["num_stages"] != case.num_stages:
            continue
        if any(j["constexprs"].get(k) != _json_safe(v) for k, v in case.constexprs.items()):
            continue
        if any(j["pointer_types"].get(k) != v for k, v in want_ptrs.items()):
            continue
        out.append(j)
    return out


@stage("codegen", "sm_90 AOT register/spill/shared-memory predictions vs the JIT-compiled kernels", min_s=15,
       cap_s=60, dry_min_s=5)
def stage_codegen(ctx: StageContext):
    all_cases, compile_sm90, _ = _codegen_api()
    jit = ctx.previous_info("microbench").get("jit_kernels") or []
    cases = all_cases()
    keyed = [(f"codegen/{c.kernel}/{c.config}", c, match_jit(c, jit)) for c in cases]
    keyed.sort(key=lambda item: not item[2])  # the configurations the run launched first
    dry_subset = set()
    if ctx.dry_run:  # the first configuration of each kernel module: enough to prove the path, seconds not minutes
        seen = set()
        for key, c, _ in keyed:
            if c.fn not in seen:
                seen.add(c.fn)
                dry_subset.add(key)
    matched_jit = set()
    skipped = compiled = agreed = compared = 0
    for key, case, matches in keyed:
        base = {"kernel": case.kernel, "config": case.config, "num_warps": case.num_warps,
                "num_stages": case.num_stages}
        jit_fields = {}
        if matches:
            j = matches[0]
            matched_jit.update(id(m) for m in matches)
            jit_fields = {"jit_registers": j["n_regs"], "jit_spill_bytes": j["spill_bytes"],
                          "jit_shared_bytes": j["shared_bytes"], "jit_variants": len(matches)}
        if ctx.dry_run and key not in dry_subset:
            ctx.row(key, "skipped", reason="dry run compiles one configuration per kernel function", **base,
                    **jit_fields)
            continue
        if ctx.remaining() < 3.0:
            skipped += 1
            ctx.row(key, "skipped", reason="time box", **base, **jit_fields)
            continue
        try:
            rep = compile_sm90(case)
        except Exception as exc:  # noqa: BLE001
            ctx.row(key, "failed", error=_short_error(exc), **base, **jit_fields)
            continue
        aot = {"aot_registers": rep.registers, "aot_spill_bytes": rep.spill_bytes, "aot_shared_bytes": rep.shared_bytes,
               "aot_hgmma": rep.hgmma, "violations": rep.violations(case.expect_hgmma)}
        agree = None
        if matches:
            agree = (jit_fields["jit_registers"] == rep.registers
                     and jit_fields["jit_spill_bytes"] == rep.spill_bytes)
            compared, agreed = compared + 1, agreed + agree
        compiled += 1
        ctx.row(key, "ok", **base, **aot, **jit_fields, agree=agree)
    for j in jit:  # what the JIT compiled that no AOT case describes
        if id(j) in matched_jit:
            continue
        key = f"jit/{j['fn']}/{j['num_warps']}w{j['num_stages']}s/" + ",".join(
            f"{k}={v}" for k, v in sorted(j["constexprs"].items()) if k.isupper())
        ctx.row(key, "ok", kernel=j["fn"], config="no AOT case", num_warps=j["num_warps"],
                num_stages=j["num_stages"], jit_registers=j["n_regs"], jit_spill_bytes=j["spill_bytes"],
                jit_shared_bytes=j["shared_bytes"], note="no bench.codegen case with these constexprs")
    jit_only = len([j for j in jit if id(j) not in matched_jit])
    summary = (f"{compiled} of {len(cases)} configurations compiled for sm_90; {compared} compared with the JIT, "
               f"{agreed} agree on registers and spills; {jit_only} JIT variant(s) without an AOT case")
    if not jit:
        summary += " (no JIT kernels recorded by stage 3: interpreter, or stage 3 did not run)"
    ctx.end("partial" if skipped else "done", reason=f"{skipped} configuration(s) not compiled: time box"
            if skipped else None, summary=summary)


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for report.json, report.md and stages/")
    parser.add_argument("--budget-s", type=float, default=420.0, help="wall-clock budget of the whole run (s)")
    parser.add_argument("--dry-run", action="store_true", help="CPU: tiny shapes, interpreter, CPU timer")
    parser.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)} (default: all)")
    parser.add_argument("--e2e-steps", type=int, default=20, help="timed training steps per preset (stage 4)")
    parser.add_argument("--e2e-set", action="append", metavar="--KEY=VALUE",
                        help="a configs.TrainConfig override for stage 4 (repeatable), "
                             "e.g. --e2e-set=--model.attn_impl=sdpa")
    args = parser.parse_args(argv)
    if args.budget_s <= 0:
        parser.error(f"--budget-s must be positive, got {args.budget_s}")
    if args.e2e_steps < 1:
        parser.error(f"--e2e-steps must be >= 1, got {args.e2e_steps}")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return run(parse_args(argv), argv)


if __name__ == "__main__":
    raise SystemExit(main())
