"""The single timing harness for kernel benchmarks (used through bench/conftest.py's `measure` fixture), and the
one peak-memory measurement (peak_memory_bytes: benches and the memory tests).

One timer per device. GPU: triton.testing.do_bench (median and p20/p80 in ms; it flushes L2 between calls, so
the cache is not what is timed); pytest-benchmark runs that one do_bench call once, only so that its fixture
carries the figures into --benchmark-json (its own stats there are the duration of the do_bench call, not a
kernel time: read extra_info). CPU (do_bench needs a GPU): pytest-benchmark rounds of the call, quantiles from
its samples. Every case records the machine, versions, thread count and load average, FLOPs, bytes, TFLOP/s,
GB/s and % of the device roofline.
"""

import ctypes
import datetime
import gc
import os
import platform
import resource
import subprocess
import time

import torch

from kernels.device import cpu_capability, native_bf16

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


def measure(benchmark, fn, *, device, flops: float = 0.0, bytes: float = 0.0, rounds: int = 5,
            peak_memory: bool = False, **info) -> dict:
    """Time fn() with the project's one method and store the figures in benchmark.extra_info; `rounds` is for
    the CPU timer. peak_memory: also record the peak memory of one call (peak_memory_bytes)."""
    device = torch.device(device)
    if device.type == "cuda":
        import triton.testing

        quantiles = []
        benchmark.pedantic(lambda: quantiles.extend(triton.testing.do_bench(fn, quantiles=QUANTILES)), rounds=1,
                           iterations=1)
        median, p20, p80 = quantiles
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
        "timer": "triton.testing.do_bench" if device.type == "cuda" else "pytest-benchmark rounds",
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
        figures["pct_peak_tflops"] = 100.0 * flops / seconds / peaks[0] if flops else None
    else:
        figures["pct_roofline"] = figures["pct_peak_tflops"] = None  # no roofline for this device (CPU, unlisted GPU)
    if peak_memory:
        figures["peak_mem_mb"] = peak_memory_bytes(fn, device)[1] / 2**20
        figures["peak_mem_method"] = "cuda.max_memory_allocated" if device.type == "cuda" else "profiler"
    benchmark.extra_info.update(figures)
    return figures


# ---------------------------------------------------------------------------------------------------
# Peak memory
# ---------------------------------------------------------------------------------------------------


def peak_memory_bytes(fn, device, *, method: str = "profiler") -> tuple[object, int]:
    """(fn(), peak bytes allocated while fn ran, above what was live before). fn must be repeatable: it runs
    once first (warm-up: first-call caches, compilation) and is measured on the second call.

    CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats. CPU, where torch keeps no allocator
    statistics, two methods:

    - "profiler": torch.profiler(profile_memory=True) records every allocation and free through c10's CPU
      allocator with its size and time; the peak of the running sum is the high-water mark of live tensor
      bytes. Exact for plain torch code (eager, torch.compile). NOT for tensors handed to Triton-interpreted
      kernels: there it logged frees of buffers that were still alive (weakrefs showed) and dropped others, in
      both directions (torch 2.13, triton 3.9), so use "rss" for the interpreted path.
    - "rss": the process's peak resident set (Linux VmHWM, reset by writing 5 to /proc/self/clear_refs) minus
      the resident set before the call, after gc and malloc_trim. glibc's mmap threshold is pinned at 64 KiB
      (mallopt) so every tensor above that is its own mapping, returned at free, instead of heap memory the
      allocator may keep or reuse out of sight (this stays set for the process). Counts everything: the
      interpreter's numpy temporaries too. Agreed with "profiler" on eager code (4.00 vs 3.88 MiB; 196.50 vs
      196.46 MiB) and with the by-hand buffer count on the fused path.
    """
    device = torch.device(device)
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        return out, torch.cuda.max_memory_allocated() - base
    if method == "rss":
        return _rss_peak(fn)
    if method != "profiler":
        raise ValueError(f"method must be 'profiler' or 'rss', got {method!r}")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for _, nbytes in sorted(events, key=lambda e: e[0]):  # stable: same-time events keep their recorded order
        live += nbytes
        peak = max(peak, live)
    return out, peak


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def _proc_status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"/proc/self/status has no {key}")


def _rss_peak(fn):
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
        gc.collect()
        libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident set
    except OSError as e:
        raise RuntimeError(f"rss peak memory needs Linux glibc and a writable /proc/self/clear_refs: {e}") from e
    base = _proc_status_bytes("VmRSS")
    out = fn()
    return out, _proc_status_bytes("VmHWM") - base
