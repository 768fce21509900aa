"""Does the CPU proxy order optimizers as track 3 does? Kendall's τ-b and Spearman's ρ between each recipe's steps to
the target on the proxy and its published step count, with bootstrap intervals over seeds.

    python -m bench.leaderboard out/*/results.json --out docs/track3_cpu/     # computes this for the leaderboard

Published step counts. A recipe's docstring opens with the result it reproduces, "Track-3 result #N, ...: S steps"
(optim.registry's convention for recipes, e.g. track3-muon: "Track-3 result #36, the benchmark's tuned baseline:
3250 steps, ..."); `published(name)` reads N and S from it, for the package's recipes and FILE.py:NAME ones alike.
A recipe without that sentence has no published count and is left out of the statistics (listed as such).

The rules:
  - The proxy's value of a recipe is the step at which the mean over its seeds reaches the target by the track's
    reaching test (bench.verdict.target_step: the earliest logged validation step where
    (target - mean)·√n >= z·σ), the same rule the leaderboard ranks by.
  - A recipe that never reaches the target within its budget ranks after every recipe that does, and all such
    recipes tie with each other (their value is +inf). Ties, on either side (two recipes reaching at the same
    logged step; #10 and #36 both published at 3250 steps), are ties: τ-b (ties corrected) and ρ on average ranks.
  - Both sides count steps: fewer is better on both, so agreement is positive.
  - Bootstrap over seeds: in each of B resamples every recipe's seeds are drawn with replacement (as many as it
    has), its mean curve and target step recomputed by the same rule with that n, and τ and ρ computed; the
    interval is the 2.5th to 97.5th percentile. A resample where a statistic is undefined (every recipe tied on
    one side) is left out of that statistic's interval and counted.
"""

import math
import random
import re
import statistics

from bench.verdict import group_curve, target_step

PUBLISHED = re.compile(r"result #(\d+)\b[^:\n]*:\s*([\d,]+)\s+steps")


def published(name: str) -> tuple[int, int] | None:
    """(result number, steps) from the docstring of recipe `name` (or FILE.py:NAME); None when it states none."""
    import inspect

    from optim import registry

    try:
        entry = registry.lookup("recipe", name)
    except ValueError:
        return None
    m = PUBLISHED.search(" ".join((inspect.getdoc(entry.factory) or "").split()))
    return (int(m.group(1)), int(m.group(2).replace(",", ""))) if m else None


def average_ranks(values: list[float]) -> list[float]:
    """Ranks 1..n, ties sharing the average of their ranks (+inf ranks last, all infinities tied)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def kendall_tau_b(x: list[float], y: list[float]) -> float:
    """τ_b = (C - D) / √((n0 - n1)(n0 - n2)): C, D concordant and discordant pairs, n0 = n(n-1)/2 pairs, n1 and n2
    the pairs tied in x and in y. NaN when either side is all tied."""
    n = len(x)
    c = d = tx = ty = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx = (x[i] > x[j]) - (x[i] < x[j])
            dy = (y[i] > y[j]) - (y[i] < y[j])
            tx += dx == 0
            ty += dy == 0
            if dx and dy:
                c += dx == dy
                d += dx != dy
    n0 = n * (n - 1) // 2
    denominator = math.sqrt((n0 - tx) * (n0 - ty))
    return (c - d) / denominator if denominator else float("nan")


def spearman_rho(x: list[float], y: list[float]) -> float:
    """Pearson's correlation of the average ranks; NaN when either side is all tied."""
    rx, ry = average_ranks(x), average_ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx and syy else float("nan")


def proxy_steps(runs: list[dict], rule) -> float:
    """The step at which these runs' mean reaches the target (bench.verdict's rule); +inf when it never does."""
    hit = target_step(group_curve([r["curve"] for r in runs]), rule)
    return float(hit["step"]) if hit else math.inf


def agreement(runs_by_recipe: dict, rule, published_steps: dict, boot: int = 2000, seed: int = 0) -> dict:
    """τ-b and ρ between proxy steps and published steps over the recipes in both, with bootstrap intervals."""
    names = [n for n in runs_by_recipe if published_steps.get(n) is not None]
    y = [float(published_steps[n]) for n in names]
    x = [proxy_steps(runs_by_recipe[n], rule) for n in names]
    result = {"recipes": [{"recipe": n, "published_steps": published_steps[n],
                           "proxy_steps": None if math.isinf(v) else int(v), "reached": not math.isinf(v),
                           "seeds": len(runs_by_recipe[n])} for n, v in zip(names, x)],
              "left_out": [n for n in runs_by_recipe if n not in names], "n": len(names)}
    if len(names) < 2:
        return result | {"tau_b": None, "rho": None}
    result.update(tau_b=kendall_tau_b(x, y), rho=spearman_rho(x, y), boot=boot, boot_seed=seed)
    rng = random.Random(seed)
    taus, rhos = [], []
    for _ in range(boot):
        xb = []
        for n in names:
            runs = runs_by_recipe[n]
            xb.append(proxy_steps([runs[rng.randrange(len(runs))] for _ in runs], rule))
        taus.append(kendall_tau_b(xb, y))
        rhos.append(spearman_rho(xb, y))
    for key, values in (("tau_b", taus), ("rho", rhos)):
        finite = sorted(v for v in values if not math.isnan(v))
        result[f"{key}_ci95"] = [_percentile(finite, 2.5), _percentile(finite, 97.5)] if finite else None
        result[f"{key}_undefined_resamples"] = len(values) - len(finite)
    return result


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    pos = (len(sorted_values) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def format_agreement(a: dict) -> str:
    if a.get("tau_b") is None:
        return (f"Agreement with track 3: needs two recipes with a published step count ({a['n']} here"
                + (f"; no published count: {', '.join(a['left_out'])}" if a["left_out"] else "") + ").")

    def ci(key):
        c = a.get(f"{key}_ci95")
        undefined = a.get(f"{key}_undefined_resamples", 0)
        return ("" if c is None else f" (95% bootstrap interval over seeds {c[0]:+.2f} to {c[1]:+.2f}"
                + (f"; {undefined} of {a['boot']} resamples undefined" if undefined else "") + ")")

    text = (f"Agreement with track 3's published step counts over {a['n']} recipes: Kendall τ-b {a['tau_b']:+.3f}"
            f"{ci('tau_b')}, Spearman ρ {a['rho']:+.3f}{ci('rho')}.")
    if a["left_out"]:
        text += f" No published count (left out): {', '.join(a['left_out'])}."
    if a["n"] < 5:
        text += (f" With {a['n']} recipes these statistics can take only a few values: they say little until more "
                 "recipes are on the board.")
    return text
