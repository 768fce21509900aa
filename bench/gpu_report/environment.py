"""Stage 1, environment: GPU name, SMs, clocks, torch/triton/CUDA versions, which of FA3 / FA2 / FA4 / Liger import
(and why not), and the measured bf16 matmul peak (8192³, bench.harness's timer): the denominator of every
"% of peak" in the report."""

import os
import subprocess
import sys

from bench.gpu_report.runner import Stage, short_error

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
            return {"nvidia_smi": f"not run: {short_error(exc, 200)}"}
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
        return short_error(exc, 300)
    return None


def run(ctx):
    import torch

    if not ctx.dry_run and not torch.cuda.is_available():
        ctx.info(abort="no CUDA device (torch.cuda.is_available() is False); use --dry-run on a CPU")
        raise RuntimeError("no CUDA device (torch.cuda.is_available() is False); use --dry-run on a CPU")
    from bench import harness
    from bench.gpu_report.timing import timer

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
    time_ms, how = timer(ctx)
    med, p20, p80 = time_ms(lambda: torch.matmul(a, b, out=c))
    tflops = 2.0 * n**3 / (med * 1e-3) / 1e12
    sheet = harness.roofline(name)
    ctx.row("matmul_peak", shape=f"{n}x{n}x{n}", dtype=str(dtype).removeprefix("torch."), ms=med, ms_p20=p20,
            ms_p80=p80, tflops=tflops, datasheet_tflops=sheet[0] / 1e12 if sheet else None,
            pct_datasheet=100 * tflops / (sheet[0] / 1e12) if sheet else None, timer=how)
    ctx.info(peak_tflops=tflops, device_name=name)
    ctx.end("done", summary=f"{name}; bf16 matmul peak {tflops:.1f} TFLOP/s" if ctx.device == "cuda"
            else f"{name}; {dtype} matmul {tflops * 1e3:.1f} GFLOP/s (dry run)")


STAGE = Stage("environment", "device, versions, optional packages, measured bf16 matmul peak", run, min_s=20, cap_s=60,
              dry_min_s=5)
