"""Training runs as jobs: `python train.py` processes side by side (or one after another in this process), with a
time estimate before they start, progress while they run, finished runs reused and a crashed run reported with the
end of its log while the others carry on. bench.speedrun and bench.noise run their seeds and tuning points here.

    jobs = [Job("track3-muon seed 1000", ["--preset=track3-cpu", "--optimizer=track3-muon", "--seed=1000", ...])]
    estimate = calibrate(jobs, out="out/x")          # measured: a few steps of each kind of run, timed here
    done = Runner(jobs=2, log_dir="out/x/logs").run(jobs, estimate=estimate)

A job is the train.py arguments of one run. Before anything trains, `finished_run` says whether the run's directory
already holds that run finished with the same config (bench.speedrun's reuse rule); such a job is done at once.
With `jobs >= 1` each run is a subprocess `python train.py ARGS` whose output goes to LOG_DIR/<run name>.log (the
caller passes --threads: one thread per process is what makes N processes share N cores without oversubscribing);
with `jobs = 0` the runs call train.main here, one after another. A run is never stopped early.

The estimate (Estimate) is measured, not guessed: `calibrate` trains each kind of run (same config, its first job's
arguments) for CALIBRATION_STEPS steps in a subprocess and times the parts: start-up and warm-up, one step, one
validation. A run's seconds are then start-up + steps × step + validations × validation (scaled by its val tokens),
for its own step count and validation cadence. It is printed as core-hours (wall seconds × threads: one core per
one-thread run; on a busy machine these are the hours the runs will hold a core, not CPU time) and as wall-clock at
the given parallelism, with the machine's 1-minute load (a busy machine makes every figure longer).
"""

import dataclasses
import json
import os
import re
import subprocess
import sys
import time

from speedrun import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "train.py")
CALIBRATION_STEPS = 4
LOG_TAIL_LINES = 12
# the one-line errors train.py ends a diverged run with (train.Diverged): a result of that run, not a crash
DIVERGED = re.compile(r"error: (step \d+: (training loss|gradient norm) is|parameter \S+ is not finite)")


@dataclasses.dataclass
class Job:
    """One run: `label` names it in progress lines and reports, `args` are its train.py arguments, `kind` groups
    runs whose step time is the same (one calibration per kind), `tag` is the caller's."""

    label: str
    args: list
    kind: str = ""
    tag: object = None


@dataclasses.dataclass
class Outcome:
    """How a job ended: `summary` (train.py's summary.json plus the val curve) when it finished or was reused,
    else `error` (the one line) and `log_tail`; `diverged` when train.py stopped it on a non-finite loss."""

    job: Job
    summary: dict | None = None
    reused: bool = False
    error: str | None = None
    log_tail: str = ""
    log: str | None = None
    diverged: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.summary is not None


def resolve_run(args):
    """The resolved config of the run that train.py `args` describe, as train.py resolves it on this machine."""
    from speedrun.config import device_type, resolve, resolve_auto

    cfg = resolve(args)
    return resolve_auto(cfg, device_type(cfg.device))


def run_dir(args) -> str:
    import train

    return train.run_directory(resolve_run(args))


# Options that change neither a full-budget run's trajectory nor its logged val curve (the target and the rule only
# label the summary: bench.speedrun judges the curves itself; val slices only add records). Everything else, the
# thread count included, must be equal for a finished run to be reused.
REUSE_MAY_DIFFER = frozenset({"target_val_loss", "target_sigma", "target_z", "loss_per_100_steps", "checkpoint_every",
                              "memory_check", "dist_timeout_s", "dist_bucket_mb", "resume", "val_slice_tokens"})


def finished_run(args) -> dict | None:
    """The summary of the run that train.py `args` describe, when its directory already holds it finished with the
    config those arguments resolve to here (config.json equal but for REUSE_MAY_DIFFER, summary.json written at
    its end, every step taken); else None. So an interrupted command, or one given more seeds or tuning points,
    does not train a finished run again."""
    import train
    from speedrun.config import TrainConfig, to_dict

    cfg = resolve_run(args)
    directory = train.run_directory(cfg)
    try:
        with open(os.path.join(directory, "config.json")) as f:
            saved = json.load(f)
        with open(os.path.join(directory, "summary.json")) as f:
            summary = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    now = json.loads(json.dumps(to_dict(cfg)))
    defaults = json.loads(json.dumps(to_dict(TrainConfig())))
    # a top-level option the saved config lacks (added since it ran) counts as its default value
    differ = {k for k in now if saved.get(k, defaults.get(k)) != now[k]} | (set(saved) - set(now))
    if differ - REUSE_MAY_DIFFER or summary.get("steps") != cfg.max_steps:
        return None
    return summary


def continuation(args) -> list[str]:
    """What train.py needs besides `args` where the run's directory holds an earlier run that finished_run did not
    reuse: --resume=True where it was stopped with a checkpoint (train.py checks that it is this run's), so a
    stopped command continues its runs; a finished run made with other options, or a run without a checkpoint, is
    refused, naming it: it is never overwritten."""
    from speedrun import rundir

    directory = run_dir(args)
    state = rundir.earlier_run_state(directory)
    if state is None:
        return []
    if state == "interrupted":
        return ["--resume=True"]
    what = "a finished run made with other options than this command's" if state == "finished" else \
        rundir.earlier_run(directory)
    raise cli.UserError(f"{directory} already holds {what}; use another --out, or move that folder away")


def with_curve(summary: dict) -> dict:
    """`summary` with "curve": the run's logged validations (step, val_loss, train_time_s, and val_slices when
    logged) read from its log.jsonl."""
    with open(os.path.join(summary["run_dir"], "log.jsonl")) as f:
        summary["curve"] = [{k: r[k] for k in ("step", "val_loss", "train_time_s", "val_slices") if k in r}
                            for r in map(json.loads, f) if "val_loss" in r]
    return summary


# ----------------------------------------------------------------------------------------------- estimate


def validations(cfg) -> int:
    """How many validations a run of `cfg` logs (train.is_val_step over steps 0..max_steps)."""
    import train

    return sum(train.is_val_step(step, cfg) for step in range(cfg.max_steps + 1))


@dataclasses.dataclass
class Estimate:
    """Seconds of one run by kind, from a measurement: start-up (imports, model, warm-up), one step, one validation.
    `source` says how it was measured."""

    per_kind: dict  # kind -> {"startup_s", "step_s", "val_s", "threads"}
    source: str
    failed: dict = dataclasses.field(default_factory=dict)  # kind -> why its calibration run failed

    def run_seconds(self, job: Job) -> float | None:
        m = self.per_kind.get(job.kind)
        if m is None:
            return None
        cfg = resolve_run(job.args)
        val_s = m["val_s"] * cfg.val_tokens / m.get("val_tokens", cfg.val_tokens)  # a validation's cost ∝ its tokens
        return m["startup_s"] + cfg.max_steps * m["step_s"] + validations(cfg) * val_s


def _strip(args, *names):
    return [a for a in args if not any(a.startswith(f"--{n}=") for n in names)]


def calibrate(jobs: list[Job], out: str) -> Estimate:
    """Train CALIBRATION_STEPS steps of each kind of job in a subprocess (its first job's arguments, validating at
    steps 0 and CALIBRATION_STEPS) and time start-up, one step and one validation. Nothing of the real runs is
    touched (the calibration runs write under OUT/calibration). A kind whose calibration run fails gets no estimate
    (Estimate.failed says why); its real runs then fail or not on their own, and are reported as such."""
    per_kind, failed = {}, {}
    for job in jobs:
        if job.kind in per_kind or job.kind in failed:
            continue
        cfg = resolve_run(job.args)
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", job.kind or "run")
        args = [*_strip(job.args, "max_steps", "schedule_steps", "val_every", "val_every_late", "out_dir", "run_name",
                        "checkpoint_every", "resume"),
                f"--max_steps={CALIBRATION_STEPS}", f"--schedule_steps={max(cfg.horizon, CALIBRATION_STEPS)}",
                f"--val_every={CALIBRATION_STEPS}", "--val_every_late=0",
                f"--out_dir={os.path.join(out, 'calibration')}", f"--run_name={name}", "--stop_at_target=False"]
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, TRAIN, *args], capture_output=True, text=True, env=_env(args))
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            lines = [line for line in (proc.stdout + proc.stderr).replace("\r", "\n").splitlines() if line.strip()]
            failed[job.kind] = f"exit {proc.returncode}: {lines[-1] if lines else 'no output'}"
            continue
        directory = os.path.join(out, "calibration", name)
        with open(os.path.join(directory, "summary.json")) as f:
            summary = json.load(f)
        # config.json is written after the warm-up, summary.json at the end: between them the steps and 2 validations
        loop = os.path.getmtime(os.path.join(directory, "summary.json")) - os.path.getmtime(
            os.path.join(directory, "config.json"))
        step_s = summary["train_time_s"] / CALIBRATION_STEPS
        per_kind[job.kind] = {"startup_s": max(0.0, wall - loop), "step_s": step_s,
                              "val_s": max(0.0, (loop - summary["train_time_s"]) / 2), "threads": summary["threads"],
                              "val_tokens": cfg.val_tokens, "load_1m": round(os.getloadavg()[0], 2)}
    load = max((m["load_1m"] for m in per_kind.values()), default=0.0)
    return Estimate(per_kind, f"calibration: {CALIBRATION_STEPS} steps of each kind of run timed here just now "
                              f"(1-minute load up to {load:.1f})", failed)


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# ----------------------------------------------------------------------------------------------- running


def _env(args) -> dict:
    """The subprocess's environment: OpenMP's pool as large as the run's torch threads (no oversubscription)."""
    env = dict(os.environ)
    threads = next((a.split("=", 1)[1] for a in reversed(args) if a.startswith("--threads=")), None)
    if threads and threads != "0":
        env["OMP_NUM_THREADS"] = threads
    return env


def _tail(path: str, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, errors="replace") as f:
            text = f.read().replace("\r", "\n")
    except OSError:
        return ""
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


class Runner:
    """Runs jobs `jobs` at a time as `python train.py` subprocesses (jobs = 0: in this process, one by one).

    `run(jobs, then=...)`: `then(outcome)` is called as each job ends and may return more jobs (a tuning sweep's
    seeds once the sweep is done); the runner keeps `self.jobs` processes busy until none is left. Returns every
    Outcome in the order the jobs were given."""

    def __init__(self, jobs: int, log_dir: str, poll_s: float = 1.0, out=None):
        self.parallel, self.log_dir, self.poll_s, self.out = jobs, log_dir, poll_s, out

    def _say(self, text: str):
        # sys.stdout as it is when printing (None): a redirected stdout gets the progress too
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=self.out or sys.stdout, flush=True)

    def run(self, jobs: list[Job], then=None, estimate: Estimate | None = None, expected: int | None = None):
        queue, running, outcomes = list(jobs), {}, []
        self._estimate, self._durations = estimate, {}
        self._expected = max(expected or 0, len(jobs))
        while queue or running:
            while queue and (len(running) < max(1, self.parallel)):
                job = queue.pop(0)
                summary = finished_run(job.args)
                if summary is not None:
                    outcome = Outcome(job, with_curve(summary), reused=True)
                    self._finish(outcome, outcomes, queue, then, running)
                    continue
                try:
                    resume = continuation(job.args)
                except cli.UserError as e:
                    self._finish(Outcome(job, error=cli.one_line(e), log_tail=cli.one_line(e)), outcomes, queue, then,
                                 running)
                    continue
                if resume:
                    self._say(f"continuing the interrupted run {run_dir(job.args)}")
                if self.parallel == 0:
                    self._finish(self._in_process(job, resume), outcomes, queue, then, running)
                else:
                    running[id(job)] = self._start(job, resume)
                    self._progress(outcomes, running, queue, f"started {job.label}")
            if running:
                time.sleep(self.poll_s)
                for key, (job, proc, log, start, handle) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    handle.close()
                    del running[key]
                    self._finish(self._collect(job, proc.returncode, log, time.perf_counter() - start), outcomes,
                                 queue, then, running)
        return outcomes

    def _start(self, job: Job, resume: list[str]):
        os.makedirs(self.log_dir, exist_ok=True)
        log = os.path.join(self.log_dir, os.path.basename(run_dir(job.args)) + ".log")
        handle = open(log, "a" if resume else "w")
        proc = subprocess.Popen([sys.executable, TRAIN, *job.args, *resume], stdout=handle, stderr=subprocess.STDOUT,
                                env=_env(job.args))
        return job, proc, log, time.perf_counter(), handle

    def _collect(self, job: Job, returncode: int, log: str, seconds: float) -> Outcome:
        if returncode == 0:
            summary = finished_run(job.args)
            if summary is not None:
                return Outcome(job, with_curve(summary), log=log, seconds=seconds)
            return Outcome(job, error="it exited 0 but its run directory holds no finished run of its config",
                           log=log, log_tail=_tail(log), seconds=seconds)
        tail = _tail(log)
        last = tail.splitlines()[-1] if tail else f"exit status {returncode}"
        return Outcome(job, error=f"exit {returncode}: {last}", log=log, log_tail=tail,
                       diverged=bool(DIVERGED.search(last)), seconds=seconds)

    def _in_process(self, job: Job, resume: list[str]) -> Outcome:
        import train

        start = time.perf_counter()
        self._say(f"training {job.label} in this process")
        try:
            summary = train.main([*job.args, *resume])
        except cli.CleanExit as e:
            message = cli.one_line(e)
            return Outcome(job, error=message, log_tail=message, diverged=bool(DIVERGED.search("error: " + message)),
                           seconds=time.perf_counter() - start)
        return Outcome(job, with_curve(summary), seconds=time.perf_counter() - start)

    def _finish(self, outcome: Outcome, outcomes: list, queue: list, then, running: dict):
        outcomes.append(outcome)
        job = outcome.job
        if outcome.reused:
            what = f"reused the finished run of {job.label} ({outcome.summary['run_dir']})"
        elif outcome.ok:
            self._durations.setdefault(job.kind, []).append(outcome.seconds)
            what = f"finished {job.label} in {format_duration(outcome.seconds)}"
        elif outcome.diverged:
            what = f"{job.label} diverged ({outcome.error})"
        else:
            where = f"; its log: {outcome.log}" if outcome.log else ""
            what = f"FAILED {job.label} ({outcome.error}){where}"
            if outcome.log_tail:
                what += "\n    " + outcome.log_tail.replace("\n", "\n    ")
        if then is not None:
            more = then(outcome) or []
            queue.extend(more)
            self._expected = max(self._expected, len(outcomes) + len(queue) + len(running))
        self._progress(outcomes, running, queue, what)

    def _seconds(self, job: Job) -> float | None:
        """A run's expected seconds: the mean of the finished runs of its kind, else the estimate."""
        seen = self._durations.get(job.kind)
        if seen:
            return sum(seen) / len(seen)
        return self._estimate.run_seconds(job) if self._estimate else None

    def _progress(self, outcomes, running, queue, what: str):
        done, failed = len(outcomes), sum(not o.ok for o in outcomes)
        unscheduled = max(0, self._expected - done - len(running) - len(queue))  # e.g. seeds after a sweep
        left = len(queue) + unscheduled
        line = (f"{what}\n    runs: {done} done ({sum(o.reused for o in outcomes)} reused, {failed} failed), "
                f"{len(running)} running, {left} left")
        now = time.perf_counter()
        queued = [self._seconds(job) for job in queue]
        active = [(self._seconds(job), now - start) for job, _, _, start, _ in running.values()]
        if (queued or active) and None not in queued and all(s is not None for s, _ in active):
            remaining = sum(queued) + sum(max(0.0, s - e) for s, e in active)
            known = queued + [s for s, _ in active]
            remaining += unscheduled * sum(known) / len(known)
            line += f"; ETA {format_duration(remaining / max(1, self.parallel))}"
        self._say(line)


def cpu_hours_line(jobs: list[Job], estimate: Estimate, parallel: int) -> str:
    """'N runs to train: ~X CPU-hours, ~Y wall at P at a time (<how it was measured>)'."""
    seconds = [estimate.run_seconds(job) for job in jobs]
    known = [s for s in seconds if s is not None]
    unknown = "".join(f"; no estimate for {kind}: its calibration run failed ({why})"
                      for kind, why in estimate.failed.items())
    if not known:
        return f"{len(jobs)} runs to train (no estimate{unknown})"
    threads = {m["threads"] for m in estimate.per_kind.values()}
    cpu = sum(known) * max(threads) / 3600
    wall = sum(known) / max(1, parallel)
    kinds = "; ".join(f"{kind}: {m['step_s'] * 1e3:.0f} ms/step, {m['val_s']:.1f} s/validation, "
                      f"{m['startup_s']:.0f} s start-up" for kind, m in estimate.per_kind.items())
    return (f"{len(jobs)} runs to train: ~{cpu:.2f} CPU-hours (core-hours), ~{format_duration(wall)} wall at "
            f"{max(1, parallel)} at a time ({estimate.source}; {kinds}"
            + (f"; {len(jobs) - len(known)} of them not included" if len(known) < len(jobs) else "") + f"){unknown}")
