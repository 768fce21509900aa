"""Where and from what a figure was measured: the commit, the host, the machine and how busy it was.

Importing this module imports no torch (the GPU report's parent process and other light tools use it); the
functions that describe torch's view of the machine (machine(), versions()) import it when called. Used by the
timing harness (bench/harness.py) and the pytest benches' machine info (bench/conftest.py), the GPU report,
bench.speedrun and bench.cpu_step.
"""

import datetime
import os
import platform
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_commit() -> str:
    """The checkout's short commit, "+dirty" when tracked files differ from it; "unknown" outside git."""

    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO, timeout=5).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        if not commit:
            return "unknown"
        return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg_1m() -> float:
    return round(os.getloadavg()[0], 2)


def host() -> dict:
    """The host without importing torch: name, CPU model, cores, Python, 1-minute load, commit."""
    return {"hostname": os.uname().nodename, "cpu": cpu_model(), "cpus": os.cpu_count(),
            "python": sys.version.split()[0], "loadavg_1m": loadavg_1m(), "commit": git_commit()}


def versions() -> dict:
    """torch, its CUDA, triton and numpy versions (imports them; a missing one is None)."""
    import torch

    out = {"torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("triton", "numpy"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    return out


def machine() -> dict:
    """Where a figure was measured: OS, CPU model, the SIMD level torch's CPU kernels run at (AVX512, AVX2 ...),
    whether bf16 matmuls are native, torch threads and the 1-minute load (other work on the cores shows here);
    the GPU when there is one. Imports torch."""
    import torch

    from kernels.device import cpu_capability, native_bf16

    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cpu_capability": cpu_capability(),
        "native_bf16_cpu": native_bf16("cpu"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "loadavg_1m": loadavg_1m(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def machine_line(m: dict | None = None) -> str:
    """One line naming the kind of machine a result came from (`m` from machine(); default: this one, now)."""
    m = machine() if m is None else m
    native = {True: "yes", False: "no"}.get(m.get("native_bf16_cpu"), "?")
    line = (f"{m['cpu']}, {m['cores']} cores, torch CPU capability {m['cpu_capability']}, native bf16 {native}, "
            f"{m['threads']} threads, load {m['loadavg_1m']:.2f}")
    if m.get("gpu"):
        line += f"; GPU {m['gpu']}"
    return line


class OtherCpuUse:
    """Cores used by *other* processes while the block runs: the machine's busy CPU time (/proc/stat, steal
    included) minus this process's own (getrusage), over the wall time. Unlike the 1-minute load average it
    excludes the measurement itself, so it says whether a timing was disturbed. `cores` is None off Linux.

        with OtherCpuUse() as other:
            ...                      # the timed work
        other.cores                  # e.g. 0.02: quiet; 1.0: another job held a whole core
    """

    cores: float | None = None

    def __enter__(self):
        self._start = (self._busy_s(), self._own_s(), time.perf_counter())
        return self

    def __exit__(self, *exc):
        busy, own, wall = self._busy_s(), self._own_s(), time.perf_counter()
        if busy is not None and self._start[0] is not None:
            elapsed = wall - self._start[2]
            self.cores = max(0.0, ((busy - self._start[0]) - (own - self._start[1])) / elapsed) if elapsed else 0.0
        return False

    @staticmethod
    def _busy_s() -> float | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        guest = sum(fields[8:10])  # guest time is already counted in user/nice
        return (sum(fields) - idle - guest) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own_s() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
