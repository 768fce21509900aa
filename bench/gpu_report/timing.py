"""How the report's stages time a callable: bench.harness's one timer (time_rounds: CUDA events per round with the
L2 flushed before it on a GPU, perf_counter on the CPU; warm-up rounds first), with a budget per row, and the
median and p20/p80 of the rounds. Imports torch only when called (children only)."""

# Seconds of timed rounds per row and the fewest rounds: a GPU row is short next to its compile and set-up; a dry
# run only proves the path.
GPU_BUDGET_S, GPU_MIN_ROUNDS = 0.2, 10
DRY_BUDGET_S, DRY_MIN_ROUNDS = 0.02, 2


def timer(ctx):
    """(time_ms(fn) -> (median, p20, p80) in ms, a description of the method) for the stage's device."""
    from bench import harness

    budget, rounds = (DRY_BUDGET_S, DRY_MIN_ROUNDS) if ctx.dry_run else (GPU_BUDGET_S, GPU_MIN_ROUNDS)

    def time_ms(fn):
        return tuple(harness.quantiles_ms(harness.time_rounds(fn, ctx.device, budget_s=budget, min_rounds=rounds)))

    clock = harness.Clock(ctx.device).describe()
    return time_ms, (f"bench.harness.time_rounds ({clock}; {budget:g} s of rounds per row, at least {rounds}), "
                     f"median and p20/p80" + (" (dry run)" if ctx.dry_run else ""))


def sync(device: str):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def free(device: str, collect: bool = False):
    """Return a row's memory before the next one. A full gc pass costs ~0.3 s with torch loaded, so only after a
    failure (whose traceback may hold large tensors in a reference cycle); plain refcounting frees the rest."""
    import gc

    if collect:
        gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()
