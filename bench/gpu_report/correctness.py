"""Stage 2, correctness: `pytest -m gpu tests/kernels -x -q` in a subprocess on the device: pass / fail / skip
counts and the first failure (a dry run runs a fast, real subset on the CPU)."""

import os
import signal
import subprocess
import sys
import time

from bench.gpu_report.runner import REPO, Stage, die_with_parent

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


def run(ctx):
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
                                preexec_fn=die_with_parent)
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


STAGE = Stage("correctness", "gpu-marked kernel tests on the device", run, min_s=30, cap_s=120, dry_min_s=10)
