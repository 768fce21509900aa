"""GPU report: what only a GPU shows, measured in one command within a time budget, always leaving a report.

    python -m bench.gpu_report --out out/gpu_report --budget-s 420      # one H100/H200 (after scripts/setup_gpu.sh)
    python -m bench.gpu_report --out out/gpu_dry --dry-run              # any CPU: the same plan on tiny shapes

Stages, in priority order (each one a section of the report and a module of this package):

1. environment   GPU name, SMs, clocks, versions, which of FA3 / FA2 / FA4 / Liger import (and why not), and the
                 measured bf16 matmul peak: the denominator of every "% of peak" below.
2. correctness   `pytest -m gpu tests/kernels -x -q` in a subprocess: pass / fail / skip counts, first failure.
3. microbench    every op's case from bench/cases/ (the pytest benches' own) at the gpt2-124m and track-3 shapes:
                 eager, torch.compile, triton, chunked and the peers (torch.optim.Muon, Liger, modded-nanogpt with
                 --modded-nanogpt, FlashAttention), timed with bench.harness.
4. e2e           the training step of the track3 and gpt2-124m presets on one GPU: ms/step, tokens/s, peak memory,
                 the projected 8-GPU run beside the step times published in track 3's logs.
5. codegen       the sm_90 ahead-of-time predictions of bench.codegen next to what the JIT compiled in stage 3.

Budget: every stage gets a time box from what is left of --budget-s (its cap, less the minimum the later stages
need); a stage that would not fit is skipped with the reason. runner.py runs each stage in its own process and
rewrites report.json / report.md (render.py) as rows arrive, so a run cut short keeps what it measured.

--dry-run runs the whole plan on the CPU: tiny shapes, the eager paths and the Triton interpreter for triton rows,
torch.compile with the "eager" backend, a tiny model for stage 4 and a fast pytest subset for stage 2. It writes a
report with the same stages and the same row keys; CI runs it (tests/bench/test_gpu_report.py).

This package imports no torch and no triton: the stages import them in their own processes.
"""

import argparse
import sys

from bench.gpu_report import codegen, correctness, e2e, environment, microbench
from bench.gpu_report.runner import run

STAGES = {s.name: s for s in (environment.STAGE, correctness.STAGE, microbench.STAGE, e2e.STAGE, codegen.STAGE)}


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_report", description=__doc__.split("\n\n")[0],
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for report.json, report.md and stages/")
    parser.add_argument("--budget-s", type=float, default=420.0, help="wall-clock budget of the whole run (s)")
    parser.add_argument("--dry-run", action="store_true", help="CPU: tiny shapes, interpreter, eager compile backend")
    parser.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)} (default: all)")
    parser.add_argument("--e2e-steps", type=int, default=20, help="timed training steps per preset (stage 4)")
    parser.add_argument("--e2e-set", action="append", metavar="--KEY=VALUE",
                        help="a speedrun.config.TrainConfig override for stage 4 (repeatable), "
                             "e.g. --e2e-set=--model.attention_impl=sdpa")
    parser.add_argument("--modded-nanogpt", metavar="PATH", default=None,
                        help="a KellerJordan/modded-nanogpt checkout: its Triton kernels join stage 3 as the "
                             "'modded' provider (bench/modded.py)")
    args = parser.parse_args(argv)
    if args.budget_s <= 0:
        parser.error(f"--budget-s must be positive, got {args.budget_s}")
    if args.e2e_steps < 1:
        parser.error(f"--e2e-steps must be >= 1, got {args.e2e_steps}")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return run(parse_args(argv), argv, STAGES)
