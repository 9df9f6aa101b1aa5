"""Per-category accuracy (with n and a 95 % Wilson interval) and BFCL's overall scores.

* v3 overall (the TinyLLM paper's scoring): mean of non-live overall (simple [mean of python/java/js],
  multiple, parallel, parallel-multiple, irrelevance; unweighted), live overall (the six live categories
  weighted by count) and multi-turn (mean of the four).
* v4 overall (bfcl-eval 2026.3.23): 10 % non-live AST + 10 % live AST (count-weighted) + 10 % irrelevance
  (mean of non-live and live) + 30 % multi-turn + 40 % agentic (web search, memory).

A component whose categories were not all run is `None` (missing), never zero. Live weights are the full
benchmark counts, so a sampled run estimates the same quantity as a full one.
"""

from __future__ import annotations

import math
from statistics import mean

from tinyllm_utils.bfcl.data import ALL_CATEGORIES, category_size
from tinyllm_utils.bfcl.scoring import FAILURE_MODES, failure_mode

LIVE_AST = ["live_simple", "live_multiple", "live_parallel", "live_parallel_multiple"]
MULTI_TURN = ["multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context"]


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # exact at the ends: rounding would otherwise put 0 % just outside its own interval
    return (0.0 if correct == 0 else max(0.0, centre - half), 1.0 if correct == n else min(1.0, centre + half))


def _mean(values):
    return None if any(v is None for v in values) else mean(values)


def _weighted(accuracy: dict, counts: dict, names: list[str]):
    if any(accuracy.get(n) is None for n in names):
        return None
    total = sum(counts[n] for n in names)
    return sum(accuracy[n] * counts[n] for n in names) / total


def overall_scores(accuracy: dict[str, float | None], counts: dict[str, int] | None = None) -> dict:
    """BFCL v3 and v4 summary scores from per-category accuracies (fractions); missing -> None."""
    acc = {c: accuracy.get(c) for c in set(ALL_CATEGORIES) | set(accuracy)}
    counts = counts or {c: category_size(c) for c in ALL_CATEGORIES}
    simple = _mean([acc["simple_python"], acc["simple_java"], acc["simple_javascript"]])
    non_live_ast = _mean([simple, acc["multiple"], acc["parallel"], acc["parallel_multiple"]])
    non_live_overall = _mean([simple, acc["multiple"], acc["parallel"], acc["parallel_multiple"], acc["irrelevance"]])
    live_ast = _weighted(acc, counts, LIVE_AST)
    live_overall = _weighted(acc, counts, LIVE_AST + ["live_irrelevance", "live_relevance"])
    multi_turn = _mean([acc[c] for c in MULTI_TURN])
    irrelevance = _mean([acc["irrelevance"], acc["live_irrelevance"]])
    web_search = _mean([acc.get("web_search_base"), acc.get("web_search_no_snippet")])
    memory = _mean([acc.get("memory_kv"), acc.get("memory_vector"), acc.get("memory_rec_sum")])
    agentic = _mean([web_search, memory])
    v4_parts = [non_live_ast, live_ast, irrelevance, multi_turn, agentic]
    v4 = None if any(p is None for p in v4_parts) else sum(
        w * p for w, p in zip([0.1, 0.1, 0.1, 0.3, 0.4], v4_parts))
    return {
        "v3": {"overall": _mean([non_live_overall, live_overall, multi_turn]), "non_live_overall": non_live_overall,
               "non_live_ast": non_live_ast, "non_live_simple": simple, "live_overall": live_overall,
               "live_ast": live_ast, "multi_turn": multi_turn},
        "v4": {"overall": v4, "non_live_ast": non_live_ast, "live_ast": live_ast, "irrelevance": irrelevance,
               "multi_turn": multi_turn, "agentic": agentic},
    }


def summarize(predictions: dict[str, list[dict]]) -> dict:
    """metrics.json content from saved predictions: per-category accuracy, n, CI, failure modes, overall."""
    categories = {}
    for category, rows in predictions.items():
        n = len(rows)
        correct = sum(bool(r["valid"]) for r in rows)
        low, high = wilson_interval(correct, n)
        modes = {m: 0 for m in FAILURE_MODES}
        for row in rows:
            modes[failure_mode(row)] += 1
        categories[category] = {
            "accuracy": correct / n if n else None, "correct": correct, "n": n,
            "category_size": category_size(category), "ci95": [low, high] if n else None,
            "failure_modes": modes,
        }
    accuracy = {c: m["accuracy"] for c, m in categories.items()}
    return {"categories": categories, "overall": overall_scores(accuracy),
            "complete": all(m["n"] == m["category_size"] for m in categories.values())}


def format_table(metrics: dict) -> str:
    lines = [f"{'category':28} {'acc %':>7} {'n':>5} {'95% CI':>15}"]
    for category, m in metrics["categories"].items():
        if m["accuracy"] is None:
            lines.append(f"{category:28} {'-':>7} {0:>5}")
            continue
        low, high = m["ci95"]
        lines.append(f"{category:28} {100 * m['accuracy']:7.2f} {m['n']:5d} {100 * low:6.1f}-{100 * high:5.1f}")
    for version in ("v3", "v4"):
        value = metrics["overall"][version]["overall"]
        lines.append(f"BFCL {version} overall: " + ("missing (not every category was run)" if value is None
                                                    else f"{100 * value:.2f} %"))
    return "\n".join(lines)
