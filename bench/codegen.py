"""sm_90 codegen report: compile every Triton kernel configuration ahead of time for the H100, no GPU needed.

    python -m bench.codegen [--json out.json]

For each kernel×config it prints registers per thread, local-memory spills, the dynamic shared memory a
launch needs, HGMMA (Hopper warpgroup tensor-core) instruction count, and the roofline floor time of one
launch at the 124M shape (max of FLOPs / 989 TFLOP/s and bytes / 3.35 TB/s, H100 SXM dense bf16).
The cases come from bench/cases/<op>.py: `codegen_cases() -> list[bench.cases.CodegenCase]`.
"""

import argparse
import importlib
import json
import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass

from bench import command_help

# Modules whose codegen_cases() are compiled; a new Triton op adds its bench/cases module here.
KERNEL_MODULES = ["bench.cases.newton_schulz", "bench.cases.gram", "bench.cases.linear_cross_entropy",
                  "bench.cases.relu2_mlp"]

H100_PEAK_BF16_FLOPS = 989e12
H100_HBM_BYTES_PER_S = 3.35e12
H100_MAX_SHARED_BYTES = 227 * 1024
H100_MAX_REGISTERS = 255


@dataclass
class CodegenReport:
    kernel: str
    config: str
    num_warps: int
    num_stages: int
    registers: int
    spill_bytes: int  # cuobjdump LOCAL: bytes of local memory per thread (>0 means register spills)
    shared_bytes: int  # metadata.shared: dynamic shared memory the launch requests
    hgmma: int  # HGMMA instructions in SASS (0 with expect_hgmma means a slower MMA path)
    stl: int  # STL (store-to-local) instructions in SASS
    flops: float
    bytes: float
    floor_us: float  # roofline floor time of one launch at the 124M shape

    def violations(self, expect_hgmma: bool = True) -> list[str]:
        problems = []
        if self.spill_bytes > 0 or self.stl > 0:
            problems.append(f"spills {self.spill_bytes} B local memory ({self.stl} STL)")
        if self.shared_bytes > H100_MAX_SHARED_BYTES:
            problems.append(f"shared memory {self.shared_bytes} B > {H100_MAX_SHARED_BYTES} B")
        if self.registers > H100_MAX_REGISTERS:
            problems.append(f"{self.registers} registers > {H100_MAX_REGISTERS}")
        if expect_hgmma and self.hgmma == 0:
            problems.append("no HGMMA in SASS (not on the Hopper tensor-core path)")
        return problems


def _nvidia_bin(tool: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", tool)


def compile_sm90(case):
    """Compile one CodegenCase for sm_90 and read registers/spills/HGMMA from its cubin.

    Needs kernels defined without the interpreter: under TRITON_INTERPRET=1 @triton.jit returns an
    interpreted function that cannot be lowered. Tests therefore use `reports_in_subprocess`.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    if not isinstance(case.fn, JITFunction):
        raise RuntimeError(f"{case.kernel}: {type(case.fn).__name__} cannot be compiled ahead of time; it was "
                           "defined under TRITON_INTERPRET=1. Run `python -m bench.codegen` without it.")

    names = list(case.signature)
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in case.divisible}
    src = ASTSource(fn=case.fn, signature=case.signature, constexprs=case.constexprs, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": case.num_warps, "num_stages": case.num_stages})
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(compiled.asm["cubin"])
        path = f.name
    try:
        usage = subprocess.run([_nvidia_bin("cuobjdump"), "--dump-resource-usage", path],
                               capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([_nvidia_bin("cuobjdump"), "-sass", path], capture_output=True, text=True,
                              check=True).stdout
    finally:
        os.unlink(path)
    regs = int(re.search(r"REG:(\d+)", usage).group(1))
    local = int(re.search(r"LOCAL:(\d+)", usage).group(1))
    floor_s = max(case.flops / H100_PEAK_BF16_FLOPS, case.bytes / H100_HBM_BYTES_PER_S)
    return CodegenReport(kernel=case.kernel, config=case.config, num_warps=case.num_warps,
                         num_stages=case.num_stages, registers=regs, spill_bytes=local,
                         shared_bytes=int(compiled.metadata.shared), hgmma=len(re.findall(r"\bHGMMA\.", sass)),
                         stl=len(re.findall(r"\bSTL(\.|\s)", sass)), flops=case.flops, bytes=case.bytes,
                         floor_us=floor_s * 1e6)


def all_cases(modules=KERNEL_MODULES):
    cases = []
    for name in modules:
        module = importlib.import_module(name)
        cases.extend(module.codegen_cases())
    return cases


def reports_in_subprocess(modules=KERNEL_MODULES, timeout: float = 600) -> list[dict]:
    """Run `python -m bench.codegen --json` without TRITON_INTERPRET (for tests, which run interpreted).

    Returns one dict per kernel×config: the CodegenReport fields plus "violations" (a list of problems).
    """
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "reports.json")
        kernel_args = [a for m in modules for a in ("--kernel", m)]
        proc = subprocess.run([sys.executable, "-m", "bench.codegen", "--json", out, *kernel_args], env=env,
                              cwd=repo, capture_output=True, text=True, timeout=timeout)
        if not os.path.exists(out):
            raise RuntimeError(f"bench.codegen failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        with open(out) as f:
            return json.load(f)


def format_table(reports) -> str:
    header = f"{'kernel':<34} {'config':<38} {'warps':>5} {'stg':>3} {'regs':>4} {'spill':>5} " \
             f"{'smem KB':>7} {'HGMMA':>5} {'GFLOP':>7} {'MB':>7} {'floor us':>8}"
    lines = [header, "-" * len(header)]
    for r in reports:
        lines.append(f"{r.kernel:<34} {r.config:<38} {r.num_warps:>5} {r.num_stages:>3} {r.registers:>4} "
                     f"{r.spill_bytes:>5} {r.shared_bytes / 1024:>7.1f} {r.hgmma:>5} {r.flops / 1e9:>7.1f} "
                     f"{r.bytes / 1e6:>7.1f} {r.floor_us:>8.1f}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.codegen", **command_help(__doc__))
    parser.add_argument("--json", help="also write the reports to this JSON file")
    parser.add_argument("--kernel", action="append", help="only kernel modules whose name contains this (repeatable)")
    args = parser.parse_args(argv)
    modules = [m for m in KERNEL_MODULES if not args.kernel or any(k in m for k in args.kernel)]
    cases = all_cases(modules)
    reports, failures, rows = [], [], []
    for case in cases:
        report = compile_sm90(case)
        reports.append(report)
        problems = report.violations(case.expect_hgmma)
        rows.append({**asdict(report), "violations": problems})
        failures.extend(f"{case.kernel} [{case.config}]: {problem}" for problem in problems)
    print("sm_90 (H100) ahead-of-time codegen; floor = roofline time at the 124M shape "
          f"({H100_PEAK_BF16_FLOPS / 1e12:.0f} TFLOP/s bf16, {H100_HBM_BYTES_PER_S / 1e12:.2f} TB/s)")
    print(format_table(reports))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if failures:
        print("\nINVARIANT VIOLATIONS:\n  " + "\n  ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
