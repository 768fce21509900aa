"""The single timing harness for kernel benchmarks (used through bench/conftest.py's `measure` fixture).

GPU: triton.testing.do_bench (median and p20/p80 in ms; it flushes L2 between calls, so the cache is not
what is timed), plus pytest-benchmark rounds of the CUDA-synchronised call for its own stats and JSON.
CPU: pytest-benchmark rounds of the call; quantiles from its samples. Every case records the machine,
versions, thread count and load average, FLOPs, bytes, TFLOP/s, GB/s and % of the device roofline.
"""

import datetime
import os
import platform
import resource
import subprocess
import time

import torch

from kernels._common import cpu_capability, native_bf16

# Dense bf16 tensor-core peak and HBM bandwidth (vendor datasheets, SXM parts).
ROOFLINES = {"H100": (989e12, 3.35e12), "H200": (989e12, 4.8e12)}
QUANTILES = [0.5, 0.2, 0.8]


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


def device_name(device: torch.device | str = "cuda") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {cpu_model()} ({os.cpu_count()} cores)"


def roofline(name: str):
    for key, peaks in ROOFLINES.items():
        if key in name:
            return peaks
    return None


def git_commit() -> str:
    """The checkout's short commit, "+dirty" when tracked files differ from it; "unknown" outside git."""

    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=os.path.dirname(__file__),
                              timeout=5).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        if not commit:
            return "unknown"
        return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict:
    """Where a figure was measured: OS, CPU model, the SIMD level torch's CPU kernels run at (AVX512, AVX2 ...),
    whether bf16 matmuls are native, torch threads and the 1-minute load (other work on the cores shows here);
    the GPU when there is one."""
    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cpu_capability": cpu_capability(),
        "native_bf16_cpu": native_bf16("cpu"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
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


def environment(device: torch.device | str) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": device_name(device),
        "cpu": cpu_model(),
        "cpu_capability": cpu_capability(),
        "native_bf16_cpu": native_bf16("cpu"),
        "torch": torch.__version__,
        "triton": triton_version,
        "threads": torch.get_num_threads(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "commit": git_commit(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def measure(benchmark, fn, *, device, flops: float = 0.0, bytes: float = 0.0, rounds: int = 5, **info) -> dict:
    """Time fn() with the project's one method and store the figures in benchmark.extra_info."""
    device = torch.device(device)
    if device.type == "cuda":
        import triton.testing

        median, p20, p80 = triton.testing.do_bench(fn, quantiles=QUANTILES)

        def synced():
            fn()
            torch.cuda.synchronize()

        benchmark.pedantic(synced, rounds=max(rounds, 20), warmup_rounds=3, iterations=1)
    else:
        benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1, iterations=1)
        samples = sorted(benchmark.stats.stats.data)
        q = torch.tensor(samples, dtype=torch.float64).quantile(torch.tensor(QUANTILES, dtype=torch.float64))
        median, p20, p80 = (float(v) * 1e3 for v in q)
    env = environment(device)
    seconds = median / 1e3
    figures = {
        **env,
        **info,
        "ms_median": median,
        "ms_p20": p20,
        "ms_p80": p80,
        "flops": flops,
        "bytes": bytes,
        "tflops": flops / seconds / 1e12 if flops else None,
        "gbps": bytes / seconds / 1e9 if bytes else None,
    }
    peaks = roofline(env["device"])
    if peaks and (flops or bytes):
        floor = max(flops / peaks[0], bytes / peaks[1])
        figures["pct_roofline"] = 100.0 * floor / seconds
    else:
        figures["pct_roofline"] = None  # no roofline for this device (CPU or unlisted GPU)
    benchmark.extra_info.update(figures)
    return figures
