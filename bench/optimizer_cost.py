"""What each optimizer costs: its step's time beside forward+backward, and the memory its state holds.

    python -m bench.optimizer_cost                                   # track3-cpu's shape on the CPU, every recipe
    python -m bench.optimizer_cost --optimizers track3-muon,track3-sgd,adamw --steps 10 --threads=2
    python -m bench.optimizer_cost --preset track3                   # track 3's shape, on a CUDA GPU

Each name (default: every recipe optim.registry knows, so a recipe added later is measured with no change here)
gets the preset's model, batch and implementations as train.py builds them on this device (fp32 and eager on the
CPU; on a GPU the preset's "auto" choices: bf16, Triton kernels, torch.compile of the model and of Muon's update),
the recipe's optimizer, wrapper and init, and the trainer's step on random tokens: the schedule's lr and momentum,
the wrapper's look-ahead, forward and backward over the step's micro-batches (track 3 on one GPU: 8 of 64 × 1024
tokens), the optimizer step. Per name:

    forward+backward   every micro-batch's forward (loss included) and backward, per step
    optimizer          the optimizer's step plus a wrapper's before-forward work (the look-ahead shift), per step
    state              the bytes of the tensors kept between steps (a wrapper's and its inner optimizer's, each
                       storage once) after the last step, in MB and as a multiple of the parameters' bytes

The steps are numbered from --at-step (default: the middle of the schedule's horizon, where a look-ahead window
is open), wrappers' own step counts too. The names take turns one step each, so drifting load hits them alike;
each time is the median (and p20-p80) over --steps timed steps after --warmup untimed ones (compilation on a
GPU). The machine (CPU, torch's CPU capability and threads, GPU), the 1-minute load before and after and the cores
other processes used during the timing are printed beside the figures; a busy machine's are labelled NOT QUIET.
Other `--key=value` arguments are train.py overrides applied to each (e.g. --threads=2, --model.n_layer=2).
"""

import json
import statistics
import sys
import time
from pathlib import Path

import torch

from bench import command_help, provenance
from speedrun import cli

PRESETS = ("track3-cpu", "track3")


def state_bytes(optimizer) -> int:
    """The bytes of the tensors in `optimizer`'s state and, for a wrapper, its inner optimizer's, each storage once
    (a view into a shared buffer must not count the buffer twice)."""
    storages = {}
    for opt in (optimizer, getattr(optimizer, "inner", None)):
        for state in getattr(opt, "state", {}).values():
            for t in state.values():
                if torch.is_tensor(t):
                    storages[t.untyped_storage().data_ptr(), t.device] = t.untyped_storage().nbytes()
    return sum(storages.values())


def recipe_names() -> list[str]:
    """Every registered recipe, sorted (the package's files and any loaded file's)."""
    from optim import registry

    return sorted(registry.entries("recipe"))


def _quantiles(seconds: list[float]) -> dict:
    ms = sorted(1e3 * s for s in seconds)
    deciles = statistics.quantiles(ms, n=10, method="inclusive") if len(ms) > 1 else ms * 9
    return {"median": statistics.median(ms), "p20": deciles[1], "p80": deciles[7]}


class RecipeStep:
    """One recipe's or optimizer's model, optimizer (wrapped when a recipe says so) and the trainer's step on random
    tokens."""

    def __init__(self, preset: str, name: str, overrides: list[str], device: torch.device, at_step, seed: int):
        from model.gpt import GPT
        from optim import build_optimizer, wrap_optimizer
        from optim.distributed import accumulation_steps
        from optim.muon import Muon
        from optim.wrappers import Wrapper
        from speedrun.config import resolve, resolve_auto

        self.name = name
        cfg = resolve([f"--preset={preset}", f"--optimizer={name}", *overrides])
        self.cfg = cfg = resolve_auto(cfg, device)
        self.device = device
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        dtype = torch.bfloat16 if cfg.dtype == "bf16" else torch.float32
        self.autocast = dtype == torch.bfloat16 and not cfg.model.bf16_embedding
        torch.manual_seed(seed)
        self.model = GPT(cfg.model, dtype=dtype).to(device)
        self.step_model = torch.compile(self.model, fullgraph=True) if cfg.compile == "fullgraph" else self.model
        self.optimizer = wrap_optimizer(cfg.wrapper, build_optimizer(cfg.optim, self.model), self.model)
        inner = getattr(self.optimizer, "inner", self.optimizer)
        if cfg.compile == "fullgraph" and isinstance(inner, Muon):
            inner.compile_update()
        self.at_step = cfg.horizon // 2 if at_step is None else at_step
        if isinstance(self.optimizer, Wrapper):
            self.optimizer.steps = self.at_step
        self.accum = accumulation_steps(cfg.grad_accum, cfg.reference_world_size, 1, cfg.batch_size)
        self.summed = cfg.model.loss_reduction == "sum"
        g = torch.Generator().manual_seed(seed)
        shape = (self.accum, cfg.batch_size, cfg.seq_len + 1)
        tokens = torch.randint(0, cfg.model.vocab_size, shape, generator=g).to(device)
        self.batches = [(t[:, :-1], t[:, 1:]) for t in tokens.unbind(0)]
        self.params = sum(p.numel() for p in self.model.parameters())
        self.param_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        self.optimizer_name = cfg.optim.name
        self.wrapper_name = cfg.wrapper.name if cfg.wrapper is not None else None

    def schedule(self, step: int):
        """Each param group's lr (and the hidden matrices' momentum) at `step`, as the trainer sets them."""
        from optim.schedules import apply_schedule

        apply_schedule(self.cfg.schedule, self.optimizer, step, self.cfg.horizon)

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, i: int) -> tuple[float, float]:
        """Step at_step + i: (forward+backward seconds, optimizer seconds)."""
        step = self.at_step + i
        self.schedule(step)
        self._sync()
        start = time.perf_counter()
        if hasattr(self.optimizer, "before_forward"):
            self.optimizer.before_forward(step)
        self._sync()
        ahead = time.perf_counter() - start
        start = time.perf_counter()
        for x, y in self.batches:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                loss = self.step_model(x, y)
            (loss if self.summed else loss / self.accum).backward()
        self._sync()
        forward_backward = time.perf_counter() - start
        start = time.perf_counter()
        self.optimizer.step()
        self._sync()
        optimizer_s = ahead + time.perf_counter() - start
        self.optimizer.zero_grad(set_to_none=True)
        return forward_backward, optimizer_s


def measure(steps_of: list[RecipeStep], *, steps: int, warmup: int) -> dict:
    """Round robin, one step of each at a time; warm-up steps are run and dropped."""
    times = {s.name: {"forward_backward": [], "optimizer": []} for s in steps_of}
    for i in range(warmup + steps):
        for s in steps_of:
            fb, opt = s(i)
            if i >= warmup:
                times[s.name]["forward_backward"].append(fb)
                times[s.name]["optimizer"].append(opt)
    return times


def report(result: dict) -> str:
    m = result["machine"]
    label = "" if result["quiet"] else "  [NOT QUIET: other processes were running; figures disturbed]"
    lines = [f"machine: {provenance.machine_line(m)} (before timing); {m['platform']}, torch {m['torch']}{label}",
             f"preset {result['preset']} on {result['device']}: {result['shape']}; median (p20-p80) of "
             f"{result['steps']} steps after {result['warmup']} warm-up, in turn",
             f"{'name':<28} {'optimizer':<22} {'params':>8} {'fwd+bwd ms':>22} {'optimizer ms':>22} {'opt/fb':>7} "
             f"{'state MB':>9} {'× params':>8}"]
    for name, r in result["optimizers"].items():
        fb, opt = r["forward_backward_ms"], r["optimizer_ms"]
        kind = r["optimizer"] + (f" + {r['wrapper']}" if r["wrapper"] else "")
        lines.append(f"{name:<28} {kind:<22} {r['params'] / 1e6:>7.2f}M "
                     f"{fb['median']:>9.1f} ({fb['p20']:.1f}-{fb['p80']:.1f}) "
                     f"{opt['median']:>9.1f} ({opt['p20']:.1f}-{opt['p80']:.1f}) {r['ratio']:>7.3f} "
                     f"{r['state_bytes'] / 1e6:>9.2f} {r['state_bytes'] / r['param_bytes']:>8.2f}")
    other = result["other_cores"]
    lines.append(f"other processes used {other:.2f} cores on average during the timing ({m['threads']} threads "
                 f"here); 1-min load {result['load_before']:.2f} before, {result['loadavg_1m_after']:.2f} after "
                 "(the latter includes this run)")
    return "\n".join(lines)


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = cli.ArgumentParser(prog="python -m bench.optimizer_cost", **command_help(__doc__))
    parser.add_argument("--preset", default="track3-cpu", choices=PRESETS)
    parser.add_argument("--optimizers", default=None,
                        help="comma list of recipes or optimizers (default: every registered recipe)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps of each")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each first")
    parser.add_argument("--at-step", type=int, default=None,
                        help="the first step's number (default: half the schedule's horizon)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: CUDA when torch sees a GPU, else the CPU")
    parser.add_argument("--max-load", type=float, default=0.5, help="1-min load below which the machine is quiet")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args, overrides = parser.parse_known_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
    for arg in overrides:
        key = arg[2:].split("=", 1)[0] if arg.startswith("--") else None
        if key in ("preset", "optimizer", "recipe", "config"):
            parser.error(f"{arg}: the preset is --preset and the optimizers are --optimizers")
    from optim import registry

    names = args.optimizers.split(",") if args.optimizers else recipe_names()
    if len(set(names)) != len(names):
        parser.error(f"--optimizers {args.optimizers} names one twice")
    for name in names:
        registry.lookup("optimizer", name, also=("recipe",))  # an unknown name fails before anything is built
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise cli.ConfigError("--device=cuda but no CUDA GPU is visible to torch here")
    if args.preset == "track3" and device.type != "cuda" and args.device == "auto":
        raise cli.ConfigError("--preset track3 is measured on a GPU and none is visible here: run "
                              "`python -m bench.optimizer_cost --preset track3` on a CUDA machine (--device=cpu "
                              "times it on the CPU anyway)")
    load_before = provenance.loadavg_1m()
    steps_of = [RecipeStep(args.preset, name, overrides, device, args.at_step, seed=0) for name in names]
    machine = provenance.machine()
    with provenance.OtherCpuUse() as other:
        times = measure(steps_of, steps=args.steps, warmup=args.warmup)
    cfg = steps_of[0].cfg
    result = {
        "command": [sys.executable, "-m", "bench.optimizer_cost", *argv], "commit": provenance.git_commit(),
        "machine": machine, "device": str(device), "preset": args.preset, "overrides": overrides,
        "quiet": load_before < args.max_load and other.cores is not None and other.cores < 0.1,
        "load_before": load_before, "loadavg_1m_after": provenance.loadavg_1m(),
        "other_cores": other.cores if other.cores is not None else float("nan"),
        "steps": args.steps, "warmup": args.warmup,
        "shape": (f"{cfg.model.n_layer} layers, d={cfg.model.n_embd}, {steps_of[0].accum} × {cfg.batch_size} × "
                  f"{cfg.seq_len} tokens, vocab {cfg.model.vocab_size}, {cfg.dtype}, compile {cfg.compile}"),
        "optimizers": {},
    }
    for s in steps_of:
        t = times[s.name]
        fb, opt = _quantiles(t["forward_backward"]), _quantiles(t["optimizer"])
        result["optimizers"][s.name] = {
            "optimizer": s.optimizer_name, "wrapper": s.wrapper_name, "params": s.params, "at_step": s.at_step,
            "param_bytes": s.param_bytes, "state_bytes": state_bytes(s.optimizer),
            "forward_backward_ms": fb, "optimizer_ms": opt, "ratio": opt["median"] / fb["median"],
            "forward_backward_s": t["forward_backward"], "optimizer_s": t["optimizer"]}
    print(report(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    cli.run_main(main)
