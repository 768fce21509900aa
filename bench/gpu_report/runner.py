"""The GPU report's process runner (imports no torch and no triton): a time box per stage, each stage in a forked
child that streams its rows to stages/<name>.jsonl, and report.json / report.md rewritten atomically as rows
arrive, after every stage, on SIGTERM/SIGINT and when a time box runs out.

A run cut short therefore leaves everything measured so far, each stage marked done, partial, skipped (with the
reason), failed (with the error), interrupted, or — after a SIGKILL — running/pending as the last write left it.
Children die with the parent (PR_SET_PDEATHSIG). Children are forked from an interpreter that has not imported
torch or triton, so each stage decides TRITON_INTERPRET for itself before triton is imported (the codegen stage
compiles for sm_90 and must not interpret).
"""

import json
import multiprocessing
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Callable

from bench import provenance
from bench.gpu_report import render
from speedrun.atomic import atomic_write

REPO = provenance.REPO
SCHEMA = 1


def short_error(exc: BaseException, limit: int = 600) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= limit else text[:limit] + " …"


def json_safe(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [json_safe(v) for v in value]
    return repr(value)


def write_atomic(path: str, text: str):
    """Write text to path so that a reader (or a kill at any instant) sees the old file or the new one, whole."""
    with atomic_write(path, "w") as f:
        f.write(text)


def die_with_parent(parent_pid: int | None = None):
    """Ask Linux to SIGKILL this process when its parent dies (so a killed report leaves no GPU job behind)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux/glibc: the parent still kills children on SIGTERM and timeouts
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # the parent died before the request took effect


@dataclass
class Stage:
    name: str
    title: str
    run: Callable  # run(ctx: StageContext) in the child process
    min_s: float  # below this a time box is useless: the stage is skipped
    cap_s: float  # the most it may take of the budget
    dry_min_s: float = 5.0


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
        self._f.write(json.dumps(json_safe(record)) + "\n")
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


def _child_main(stage: Stage, payload: dict, rows_path: str):
    die_with_parent(payload["parent_pid"])
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what an interrupt does
    os.chdir(REPO)
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    # Triton reads TRITON_INTERPRET at import: decided here, before anything imports it. The codegen stage
    # compiles for sm_90 and must see real JIT functions; on a GPU nothing is interpreted.
    if payload["dry_run"] and stage.name != "codegen":
        os.environ["TRITON_INTERPRET"] = "1"
    else:
        os.environ.pop("TRITON_INTERPRET", None)
    ctx = StageContext(stage.name, payload, rows_path)
    try:
        stage.run(ctx)
        if not ctx.ended:
            ctx.end("done")
    except BaseException as exc:  # noqa: BLE001 - everything a stage raises is reported, nothing escapes
        ctx._write({"error": short_error(exc, 2000), "traceback": traceback.format_exc()[-4000:]})
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

    def __init__(self, out: str, argv: list[str], budget_s: float, dry_run: bool, stages: dict[str, Stage]):
        self.out = out
        self.t0 = time.time()
        self.data = {
            "schema": SCHEMA,
            "command": "python -m bench.gpu_report " + " ".join(argv),
            "dry_run": dry_run,
            "budget_s": budget_s,
            "started_at": provenance.now(),
            "updated_at": provenance.now(),
            "elapsed_s": 0.0,
            "state": "running",  # running | finished | interrupted
            "interrupted_by": None,
            "host": provenance.host(),
            "stages": [{"name": n, "title": s.title, "status": "pending", "reason": None, "error": None,
                        "summary": None, "box_s": None, "started_at": None, "elapsed_s": None, "pid": None,
                        "rows": [], "info": {}} for n, s in stages.items()],
        }

    def stage(self, name: str) -> dict:
        return next(s for s in self.data["stages"] if s["name"] == name)

    def write(self):
        self.data["updated_at"] = provenance.now()
        self.data["elapsed_s"] = round(time.time() - self.t0, 1)
        try:
            render.annotate(self.data)
        except Exception as exc:  # noqa: BLE001 - a derived figure must never cost the report
            self.data["render_error"] = f"annotate: {short_error(exc)}"
        # default=repr: an odd value in a row is written as text rather than losing the report
        write_atomic(os.path.join(self.out, "report.json"), json.dumps(self.data, indent=1, default=repr) + "\n")
        try:
            markdown = render.render_markdown(self.data)
        except Exception as exc:  # noqa: BLE001 - the JSON is written; the markdown says why it is short
            markdown = (f"# GPU report\n\nThe markdown rendering failed ({short_error(exc)}); report.json beside "
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


def run_stage(report: Report, stage: Stage, box_s: float, payload: dict) -> None:
    name = stage.name
    entry = report.stage(name)
    os.makedirs(os.path.join(report.out, "stages"), exist_ok=True)
    rows_path = os.path.join(report.out, "stages", f"{name}.jsonl")
    open(rows_path, "w").close()
    start = time.time()
    payload = {**payload, "deadline": start + max(box_s - 3.0, 1.0)}  # the child stops itself a little early
    entry.update(status="running", box_s=round(box_s, 1), started_at=provenance.now())
    # Not a daemon: torch.compile's workers may use multiprocessing, which a daemonic process may not. Every way
    # out of this function below kills the child instead.
    proc = multiprocessing.get_context("fork").Process(target=_child_main, args=(stage, payload, rows_path),
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
                ok = render.ok_rows(entry)
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
        entry["status"], entry["error"] = "failed", f"report process error: {short_error(exc)}"
        raise
    finally:
        entry["elapsed_s"] = round(time.time() - start, 1)
        report.write()


def run(args, argv: list[str], stages: dict[str, Stage]) -> int:
    """Run the selected stages in order within args.budget_s; returns the exit code (128 + signal if stopped)."""
    out = os.path.abspath(args.out)
    selected = list(stages) if not args.stages else [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in selected if s not in stages]
    if unknown:
        raise SystemExit(f"unknown stage(s) {unknown}; choose from {list(stages)}")
    os.makedirs(out, exist_ok=True)
    report = Report(out, argv, args.budget_s, args.dry_run, stages)
    options = {"e2e_steps": args.e2e_steps, "e2e_set": args.e2e_set or [], "modded": args.modded_nanogpt}

    def on_signal(signum, frame):
        for s in (signal.SIGTERM, signal.SIGINT):  # the first signal stops the run; cleanup is not interrupted
            signal.signal(s, signal.SIG_IGN)
        raise Interrupted(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    code = 0
    try:
        report.write()
        deadline = time.time() + args.budget_s
        names = list(stages)
        for i, name in enumerate(names):
            entry = report.stage(name)
            if name not in selected:
                entry.update(status="skipped", reason="not selected (--stages)")
                continue
            abort = next((s["info"].get("abort") for s in report.data["stages"] if s["info"].get("abort")), None)
            if abort:
                entry.update(status="skipped", reason=f"not run: {abort}")
                continue
            later = [stages[n] for n in names[i + 1:] if n in selected]
            box, why = time_box(stages[name], later, deadline - time.time(), args.dry_run)
            if box is None:
                entry.update(status="skipped", reason=f"would not fit: {why}")
                report.write()
                continue
            print(f"[gpu_report] stage {name}: time box {box:.0f} s ({why})", flush=True)
            previous = {s["name"]: s for s in report.data["stages"] if s["status"] not in ("pending", "running")}
            run_stage(report, stages[name], box, {"dry_run": args.dry_run, "out": out, "options": options,
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
