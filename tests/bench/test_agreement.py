"""bench.agreement: Kendall τ-b and Spearman ρ on worked examples computed by hand, the bootstrap over seeds, and the
published step counts read from the recipes' docstrings."""

import math

import pytest

from bench import agreement
from bench.verdict import Rule

INF = math.inf


def test_worked_example_with_a_published_tie():
    """Proxy steps 112, 128, 144 and never; published 3250, 3250, 5625, 8225 (#36, #10, #2 and a slow one).
    Pairs: 6; the first two tie on the published side (n2 = 1), the other 5 are concordant, none discordant:
    τ_b = 5/√(6·5) = 0.912871. Ranks: proxy 1, 2, 3, 4; published 1.5, 1.5, 3, 4; deviations from 2.5:
    (-1.5, -0.5, 0.5, 1.5) and (-1, -1, 0.5, 1.5): ρ = 4.5/√(5·4.5) = 0.948683."""
    x, y = [112, 128, 144, INF], [3250, 3250, 5625, 8225]
    assert agreement.kendall_tau_b(x, y) == pytest.approx(5 / math.sqrt(30), abs=1e-12)
    assert agreement.kendall_tau_b(x, y) == pytest.approx(0.912871, abs=1e-6)
    assert agreement.spearman_rho(x, y) == pytest.approx(0.948683, abs=1e-6)


def test_worked_example_with_a_discordant_pair_and_two_that_never_reach():
    """Recipes A-E, proxy 112, never, 144, never, 96; published 3250, 4100, 4500, 8225, 2690.
    Of the 10 pairs, (B, D) tie on the proxy side (both never reach: n1 = 1), (B, C) is discordant (B never reaches,
    C does, but B was published faster) and the other 8 are concordant: τ_b = (8 - 1)/√(9·10) = 0.737865.
    Ranks: proxy (2, 4.5, 3, 4.5, 1), published (2, 3, 4, 5, 1); deviations from 3: (-1, 1.5, 0, 1.5, -2) and
    (-1, 0, 1, 2, -2); Σ products 8, Σ squares 9.5 and 10: ρ = 8/√95 = 0.820783."""
    x, y = [112, INF, 144, INF, 96], [3250, 4100, 4500, 8225, 2690]
    assert agreement.average_ranks(x) == [2, 4.5, 3, 4.5, 1]
    assert agreement.kendall_tau_b(x, y) == pytest.approx(7 / math.sqrt(90), abs=1e-12)
    assert agreement.kendall_tau_b(x, y) == pytest.approx(0.737865, abs=1e-6)
    assert agreement.spearman_rho(x, y) == pytest.approx(8 / math.sqrt(95), abs=1e-12)
    assert agreement.spearman_rho(x, y) == pytest.approx(0.820783, abs=1e-6)


def test_reversed_order_and_undefined():
    assert agreement.kendall_tau_b([1, 2, 3], [30, 20, 10]) == -1
    assert agreement.spearman_rho([1, 2, 3], [30, 20, 10]) == pytest.approx(-1)
    assert math.isnan(agreement.kendall_tau_b([INF, INF], [1, 2]))  # every recipe tied on one side
    assert math.isnan(agreement.spearman_rho([5, 5, 5], [1, 2, 3]))


def _runs(*curves):
    return [{"curve": [{"step": s, "val_loss": v} for s, v in c.items()]} for c in curves]


def test_bootstrap_resamples_each_recipes_seeds_and_recomputes_its_target_step():
    """Rule: target 4.0, z·σ = 0.03. 'fast' reaches at 50 and 'mid' at 100 whatever the resample. 'noisy' has one
    seed at 3.9 by step 50 and one at 4.5: together (mean 4.2, then 4.1) they never reach, so its point value is
    'never' and τ = ρ = 1. A resample drawing the good seed twice (probability 1/4) reaches at 50: then fast and
    noisy tie at 50 and mid (100) is discordant with noisy: τ = ρ = 0. So the interval is [0, 1]."""
    rule = Rule(target=4.0, sigma=0.01, z=3.0)
    runs = {"fast": _runs({0: 9, 50: 3.9, 100: 3.8}, {0: 9, 50: 3.9, 100: 3.8}),
            "mid": _runs({0: 9, 50: 4.2, 100: 3.9}, {0: 9, 50: 4.2, 100: 3.9}),
            "noisy": _runs({0: 9, 50: 3.9, 100: 3.8}, {0: 9, 50: 4.5, 100: 4.4}),
            "unpublished": _runs({0: 9, 50: 3.0})}
    a = agreement.agreement(runs, rule, {"fast": 3000, "mid": 4000, "noisy": 5000}, boot=400, seed=1)
    assert [r["proxy_steps"] for r in a["recipes"]] == [50, 100, None] and a["left_out"] == ["unpublished"]
    assert a["tau_b"] == 1 and a["rho"] == pytest.approx(1)
    assert a["tau_b_ci95"] == [0.0, 1.0] and a["rho_ci95"] == pytest.approx([0.0, 1.0])
    again = agreement.agreement(runs, rule, {"fast": 3000, "mid": 4000, "noisy": 5000}, boot=400, seed=1)
    assert again == a  # seeded
    steady = agreement.agreement({k: runs[k] for k in ("fast", "mid")}, rule, {"fast": 1, "mid": 2}, boot=50)
    assert steady["tau_b_ci95"] == [1.0, 1.0]  # nothing to resample: identical seeds


def test_published_counts_come_from_the_recipes_docstrings(tmp_path):
    assert agreement.published("track3-muon") == (36, 3250)
    assert agreement.published("track3-normuon") == (10, 3250)
    assert agreement.published("track3-adam") == (2, 5625)
    assert agreement.published("adamw") is None  # an optimizer, not a recipe
    f = tmp_path / "mine.py"
    f.write_text('from optim.registry import recipe\n\n\n@recipe("mine-sd")\ndef sd():\n'
                 '    """Track-3 result #22, SpectralDescent: 8,225 steps, mean val loss 3.2790 (n=4)."""\n'
                 '    return {"optimizer": "adamw"}\n\n\n@recipe("mine-untold")\ndef untold():\n'
                 '    """Our own."""\n    return {"optimizer": "adamw"}\n')
    assert agreement.published(f"{f}:mine-sd") == (22, 8225)
    assert agreement.published(f"{f}:mine-untold") is None
