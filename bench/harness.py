"""The single timing harness for kernel benchmarks (used through bench/conftest.py's `measure` fixture).

GPU: triton.testing.do_bench (median and p20/p80 in ms; it flushes L2 between calls, so the cache is not
what is timed), plus pytest-benchmark rounds of the CUDA-synchronised call for its own stats and JSON.
CPU: pytest-benchmark rounds of the call; quantiles from its samples. Every case records the machine,
versions, thread count and load average, FLOPs, bytes, TFLOP/s, GB/s and % of the device roofline.
"""

import datetime
import os
import platform
import subprocess

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


def machine_line() -> str:
    """One line naming the kind of machine a result came from: CPU model, the SIMD level torch runs at, whether
    bf16 matmuls are native, threads and load; the GPU when there is one."""
    line = (f"{cpu_model()}, {os.cpu_count()} cores, torch CPU capability {cpu_capability()}, "
            f"native bf16 {'yes' if native_bf16('cpu') else 'no'}, {torch.get_num_threads()} threads, "
            f"load {os.getloadavg()[0]:.2f}")
    if torch.cuda.is_available():
        line += f"; GPU {torch.cuda.get_device_name()}"
    return line


def roofline(name: str):
    for key, peaks in ROOFLINES.items():
        if key in name:
            return peaks
    return None


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(__file__), timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


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
        "commit": _git_commit(),
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
