"""Statistics for accuracy on BFCL entries: composite weights read off bfcl's own formulas, Wilson-based
intervals for composites, McNemar's exact test, paired differences, Holm's correction, Pareto fronts.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from tinyllm_utils.bfcl import aggregate

V3_COUNTS = {"live_simple": 258, "live_multiple": 1053, "live_parallel": 16, "live_parallel_multiple": 24,
             "live_irrelevance": 882, "live_relevance": 18}
V4_COUNTS = {**V3_COUNTS, "live_irrelevance": 884, "live_relevance": 16}

ALPHA = 0.05
PERMUTATIONS = 4999  # paired permutation test of a composite: p resolution 2e-4, still cheap at full BFCL size



def score_weights(formula: str, component: str, categories, counts: dict | None = None) -> dict[str, float] | None:
    """Linear weights of a BFCL composite over per-category accuracies (None if a needed category is missing).

    Every BFCL summary is a (weighted) mean of category accuracies, so its weights are read off
    aggregate.overall_scores with unit inputs: the composite then stays defined in one place.
    """
    categories = list(categories)
    if formula == "category":
        return {component: 1.0} if component in categories else None

    def value(acc):
        return aggregate.overall_scores(acc, counts)[formula][component]

    zero = {c: 0.0 for c in categories}
    if value(zero) is None:
        return None
    weights = {c: value({**zero, c: 1.0}) for c in categories}
    return {c: w for c, w in weights.items() if abs(w) > 1e-12}


def composite_interval(samples: dict[str, np.ndarray], weights: dict[str, float], n_resamples: int = 2000,
                       seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of sum_k w_k mean(x_k), resampling entries within each category (scipy bootstrap)."""
    from scipy import stats

    names = list(weights)
    data = tuple(np.asarray(samples[c], dtype=float) for c in names)
    if any(len(x) < 2 for x in data):
        return (math.nan, math.nan)
    w = np.array([weights[c] for c in names])

    def statistic(*xs, axis=-1):
        return sum(wk * np.mean(x, axis=axis) for wk, x in zip(w, xs))

    if all(np.ptp(x) == 0 for x in data):  # nothing varies: the interval is the point
        point = float(statistic(*data))
        return (point, point)
    result = stats.bootstrap(data, statistic, n_resamples=n_resamples, paired=False, vectorized=True, batch=500,
                             confidence_level=confidence, method="percentile", random_state=seed)
    return (float(result.confidence_interval.low), float(result.confidence_interval.high))


def composite_accuracy_interval(samples: dict[str, np.ndarray], weights: dict[str, float]) -> tuple[float, float]:
    """95 % interval of sum_k w_k p_k for 0/1 outcomes: each category's Wilson interval, combined by MOVER
    (Zou & Donner 2008; Newcombe's method for differences of proportions): the point minus / plus the root of the
    summed squared weighted distances to each category's limits. One category gives its Wilson interval exactly;
    a category answered all right or all wrong still adds its uncertainty (a bootstrap over entries gives such a
    category none, and can give a composite a zero-width interval)."""
    point, below, above = 0.0, 0.0, 0.0
    for category, weight in weights.items():
        x = np.asarray(samples[category], dtype=float)
        if len(x) == 0:
            return (math.nan, math.nan)
        p = x.mean()
        low, high = aggregate.wilson_interval(int(x.sum()), len(x))
        point += weight * p
        down, up = (p - low, high - p) if weight > 0 else (high - p, p - low)
        below += (weight * down) ** 2
        above += (weight * up) ** 2
    return (point - math.sqrt(below), point + math.sqrt(above))


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value for paired 0/1 outcomes (statsmodels)."""
    from statsmodels.stats.contingency_tables import mcnemar

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    table = [[int(np.sum(a & b)), int(np.sum(a & ~b))], [int(np.sum(~a & b)), int(np.sum(~a & ~b))]]
    return float(mcnemar(table, exact=True).pvalue)


def paired_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray], weights: dict[str, float],
                      n_resamples: int = 2000, seed: int = 0) -> dict:
    """B - A on the same entries for a (composite) score: difference, paired bootstrap interval, p-value.

    One category: McNemar's exact test. A composite: a paired permutation test that swaps the two methods'
    outcomes within each entry (scipy permutation_test, permutation_type='samples').
    """
    from scipy import stats

    names = list(weights)
    w = np.array([weights[c] for c in names])
    diff_samples = {c: np.asarray(b[c], float) - np.asarray(a[c], float) for c in names}
    point = float(sum(wk * diff_samples[c].mean() for wk, c in zip(w, names)))
    low, high = composite_interval(diff_samples, weights, n_resamples, seed)
    n = int(sum(len(diff_samples[c]) for c in names))
    if len(names) == 1:
        p_value, test = mcnemar_exact(a[names[0]], b[names[0]]), "McNemar exact"
    else:
        # The composite is linear: sum_i c_i (y_i - x_i) with c_i = w_k / n_k. Swapping a pair's outcomes only
        # matters where they differ, so the (exactly equivalent) test runs on the discordant entries alone.
        c = np.concatenate([np.full(len(diff_samples[k]), wk / len(diff_samples[k])) for wk, k in zip(w, names)])
        x = np.concatenate([np.asarray(a[k], float) for k in names])
        y = np.concatenate([np.asarray(b[k], float) for k in names])
        discordant = x != y
        cd = c[discordant]

        def statistic(x, y, axis=-1):
            return np.sum(cd * (y - x), axis=axis)

        if not discordant.any():
            p_value = 1.0
        else:
            p_value = float(stats.permutation_test((x[discordant], y[discordant]), statistic,
                                                   permutation_type="samples", vectorized=True,
                                                   n_resamples=PERMUTATIONS,
                                                   alternative="two-sided", batch=1000,  # bounded memory
                                                   random_state=seed).pvalue)
        test = "paired permutation"
    return {"n": n, "diff": 100 * point, "ci_low": 100 * low, "ci_high": 100 * high, "p_value": p_value,
            "test": test}


def holm(p_values) -> np.ndarray:
    """Holm-adjusted p-values (statsmodels multipletests)."""
    from statsmodels.stats.multitest import multipletests

    p_values = np.asarray(list(p_values), float)
    if len(p_values) == 0:
        return p_values
    return multipletests(p_values, alpha=ALPHA, method="holm")[1]


def mark_pareto(table: pd.DataFrame, maximize=("accuracy",), minimize=("decode_ms_per_token", "peak_rss_mb"),
                by: str | None = None) -> pd.DataFrame:
    """Add a boolean `pareto` column: no other row is at least as good on every axis and better on one.
    With `by` (e.g. "method") the front is computed within each group."""
    import pandas as pd

    table = table.copy()
    cols = list(maximize) + list(minimize)
    if not set(cols) <= set(table.columns):  # nothing profiled or nothing evaluated yet: no front
        table["pareto"] = False
        return table
    usable = table[cols].notna().all(axis=1)
    score = table[cols].copy()
    for col in minimize:
        score[col] = -score[col]  # everything "larger is better"
    front = pd.Series(False, index=table.index)
    groups = table.groupby(by).groups.values() if by else [table.index]
    for index in groups:
        candidates = [i for i in index if usable[i]]
        for i in candidates:
            dominated = any((score.loc[j] >= score.loc[i]).all() and (score.loc[j] > score.loc[i]).any()
                            for j in candidates if j != i)
            front[i] = not dominated
    table["pareto"] = front
    return table
