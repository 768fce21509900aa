"""The single timing harness of the project: kernel benchmarks (through bench/conftest.py's `measure` fixture and
pytest-benchmark) and the GPU report's microbenchmarks (time_rounds) time with it; plus the one peak-memory
measurement (peak_memory_bytes: benches and the memory tests).

One round is one timed call of the kernel, and pytest-benchmark records every round (benchmark.pedantic with a
per-round setup), so its own statistics (min, median, IQR, stddev, outliers), --benchmark-compare,
--benchmark-compare-fail, --benchmark-histogram and `pytest-benchmark compare` describe the kernel.

The clock, per device (Clock):
- CUDA: the round's target records a CUDA event on the current stream before and after the call; the clock that
  pytest-benchmark reads (the `timer` of the benchmark marker bench/conftest.py puts on every bench) returns the
  sum of the finished rounds' event times, waiting for the last end event, so end - start of a round is its GPU
  time. The round's setup first zeroes a 256 MB buffer, flushing the L2 cache as triton.testing.do_bench does;
  the flush is queued, not waited for, so the start event runs right after it and the GPU does not idle between
  the two (do_bench's order too).
- CPU: time.perf_counter around the call.

Rounds (plan_rounds): warm-up rounds first, the same sequence as the timed ones (flush, events, call), until a
tenth of the budget has gone (at least one); then as many timed rounds as fit in the budget at the warm-up's
median wall time per round (flush and synchronisation included), never fewer than min_rounds nor more than
MAX_ROUNDS. In pytest the budget is --benchmark-max-time (seconds per case, default 1.0) and the minimum
--benchmark-min-rounds (default 5): pytest-benchmark's own options, with their documented meaning.

Per row (benchmark.extra_info) only what is per row: op, provider, case, shape, FLOPs, bytes, TFLOP/s, GB/s,
% of the device roofline, and the cores other processes used while the rounds ran. The machine (CPU, SIMD
level, native bf16, threads, load, GPU, versions, commit) is recorded once per run, in pytest-benchmark's
machine_info (bench/conftest.py).
"""

import ctypes
import gc
import math
import os
import statistics
import time

import torch

from bench.provenance import OtherCpuUse, cpu_model, git_commit, machine, machine_line  # noqa: F401 (re-exported)

# Dense bf16 tensor-core peak and HBM bandwidth (vendor datasheets, SXM parts).
ROOFLINES = {"H100": (989e12, 3.35e12), "H200": (989e12, 4.8e12)}
QUANTILES = [0.5, 0.2, 0.8]
L2_FLUSH_BYTES = 256 * 2**20  # do_bench's flush size: well above the L2 of an H100/H200 (50 MB)
MAX_ROUNDS = 10_000
WARMUP_FRACTION = 0.1  # of the budget spent on warm-up rounds (at least one round)


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


# ---------------------------------------------------------------------------------------------------
# The clock
# ---------------------------------------------------------------------------------------------------


class Clock:
    """How a round is timed on one device: setup() before the round (untimed), timer() read before and after it,
    target(fn) the callable timed. round(target) runs one round the way pytest-benchmark's runner does."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._flush = None
        self._total = 0.0  # CUDA: seconds of GPU time of the finished rounds
        self._pending = None  # CUDA: the (start, end) events of the round not yet read

    def setup(self):
        if self.cuda:
            if self._flush is None:
                self._flush = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=self.device)
            self._flush.zero_()

    def timer(self) -> float:
        if not self.cuda:
            return time.perf_counter()
        if self._pending is not None:
            start, end = self._pending
            self._pending = None
            end.synchronize()
            self._total += start.elapsed_time(end) / 1e3
        return self._total

    def target(self, fn):
        if not self.cuda:
            return fn

        def timed():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            self._pending = (start, end)
            return out

        return timed

    def round(self, target) -> float:
        self.setup()
        start = self.timer()
        target()
        return self.timer() - start

    @property
    def unread(self) -> bool:
        """A CUDA round ran whose events nobody read: the benchmark's timer is not this clock."""
        return self._pending is not None

    def describe(self) -> str:
        if self.cuda:
            return "CUDA events per round, L2 flushed (256 MB zeroed) before each round"
        return "time.perf_counter per round"


_CUDA_CLOCK: Clock | None = None


def clock(device) -> Clock:
    """The clock of `device`; one per process on CUDA (pytest-benchmark's timer reads it: cuda_event_time)."""
    global _CUDA_CLOCK
    device = torch.device(device)
    if device.type != "cuda":
        return Clock(device)
    if _CUDA_CLOCK is None:
        _CUDA_CLOCK = Clock(device)
    return _CUDA_CLOCK


def cuda_event_time() -> float:
    """pytest-benchmark's timer on a GPU (`@pytest.mark.benchmark(timer=...)`, set by bench/conftest.py): seconds of
    GPU time of the rounds finished so far, read from CUDA events."""
    return clock("cuda").timer()


def plan_rounds(run_round, *, budget_s: float, min_rounds: int) -> tuple[int, int]:
    """(warm-up rounds run, timed rounds to run): run_round() is called until WARMUP_FRACTION of budget_s has
    gone (at least once); the timed rounds fill budget_s at the warm-up's median wall time per round, clamped to
    [min_rounds, MAX_ROUNDS]."""
    walls = []
    while not walls or (sum(walls) < WARMUP_FRACTION * budget_s and len(walls) < MAX_ROUNDS):
        start = time.perf_counter()
        run_round()
        walls.append(time.perf_counter() - start)
    per_round = max(statistics.median(walls), 1e-9)
    return len(walls), int(min(max(math.ceil(budget_s / per_round), min_rounds), MAX_ROUNDS))


def time_rounds(fn, device, *, budget_s: float, min_rounds: int) -> list[float]:
    """Seconds of each timed round of fn() (warm-up rounds first), outside pytest: the GPU report's timer."""
    c = clock(device)
    target = c.target(fn)
    _, rounds = plan_rounds(lambda: c.round(target), budget_s=budget_s, min_rounds=min_rounds)
    return [c.round(target) for _ in range(rounds)]


def quantiles_ms(samples_s: list[float], qs=QUANTILES) -> list[float]:
    """Quantiles (linear interpolation, as torch.quantile) of samples in seconds, returned in ms."""
    xs = sorted(samples_s)
    out = []
    for q in qs:
        pos = q * (len(xs) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        out.append(1e3 * (xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)))
    return out


# ---------------------------------------------------------------------------------------------------
# pytest-benchmark
# ---------------------------------------------------------------------------------------------------


def derived(seconds: float, *, flops: float, bytes: float, device) -> dict:
    """TFLOP/s, GB/s and % of the device's roofline (None where the device has none) at `seconds` per call."""
    figures = {"tflops": flops / seconds / 1e12 if flops and seconds else None,
               "gbps": bytes / seconds / 1e9 if bytes and seconds else None,
               "pct_roofline": None, "pct_peak_tflops": None}
    peaks = roofline(device_name(device)) if torch.device(device).type == "cuda" else None
    if peaks and seconds and (flops or bytes):
        figures["pct_roofline"] = 100.0 * max(flops / peaks[0], bytes / peaks[1]) / seconds
        figures["pct_peak_tflops"] = 100.0 * flops / seconds / peaks[0] if flops else None
    return figures


def measure(benchmark, fn, *, device, op: str, budget_s: float, min_rounds: int, flops: float = 0.0,
            bytes: float = 0.0, peak_memory: bool = False, **info) -> dict:
    """Time fn() as pytest-benchmark rounds (warm-up first, see plan_rounds) in benchmark group `op`, and store
    the per-row figures in benchmark.extra_info. peak_memory: also record the peak memory of one call."""
    c = clock(device)
    target = c.target(fn)
    warmup, rounds = plan_rounds(lambda: c.round(target), budget_s=budget_s, min_rounds=min_rounds)
    benchmark.group = op
    with OtherCpuUse() as other:
        benchmark.pedantic(target, setup=c.setup if c.cuda else None, rounds=rounds, iterations=1)
    if c.unread and not benchmark.disabled:
        raise RuntimeError("the benchmark fixture's timer is not the CUDA event clock (bench.harness.cuda_event_time): "
                           "run benches with bench/conftest.py, which sets it")
    c._pending = None
    median = benchmark.stats.stats.median if benchmark.stats is not None else None
    figures = {"op": op, **info, "flops": flops, "bytes": bytes, "warmup_rounds": warmup,
               "other_cores": other.cores, **derived(median, flops=flops, bytes=bytes, device=device)}
    if peak_memory:
        figures["peak_mem_mb"] = peak_memory_bytes(fn, device)[1] / 2**20
        figures["peak_mem_method"] = "cuda.max_memory_allocated" if torch.device(device).type == "cuda" else "profiler"
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
