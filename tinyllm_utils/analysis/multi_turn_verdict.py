"""The sub-1B multi-turn question: does any model under 1B parameters call correctly in multi-turn at all?

Answered from the long results table (`runs.collect`): each model's multi-turn accuracy (BFCL's v4 `multi_turn`
component, or the pooled multi_turn_* categories when the composite is missing) with its interval, and one
sentence saying whether a sub-1B model's interval excludes zero. Pure functions of the table, no files read.

    from tinyllm_utils.analysis import multi_turn_verdict
    rows = multi_turn_verdict.multi_turn_rows(results)       # one row per evaluation
    text = multi_turn_verdict.verdict_sentence(rows)          # the findings' sentence
"""

from __future__ import annotations

import math

import pandas as pd

from tinyllm_utils.bfcl import aggregate

SUB_1B = 1.0  # parameters in billions: "sub-1B" is strictly below
COLUMNS = ["label", "model", "method", "params_b", "n", "accuracy", "ci_low", "ci_high", "source"]


def multi_turn_rows(results: pd.DataFrame) -> pd.DataFrame:
    """Per evaluation (`key`): multi-turn accuracy % with its interval, from the v4 `multi_turn` composite row, or
    else pooled over the multi_turn_* category rows it has (Wilson on the pooled counts). Evaluations without any
    multi-turn entry are left out."""
    rows = []
    for key, group in results.groupby("key", sort=False):
        first = group.iloc[0]
        base = {"label": first.get("label"), "model": first.get("model"), "method": first.get("method"),
                "params_b": first.get("params_b")}
        composite = group[(group["kind"] == "score") & (group["scoring"] == "v4") & (group["category"] == "multi_turn")]
        if len(composite) and not math.isnan(composite["accuracy"].iloc[0]):
            row = composite.iloc[0]
            rows.append(base | {"n": row["n"], "accuracy": row["accuracy"], "ci_low": row["ci_low"],
                                "ci_high": row["ci_high"], "source": "v4 multi_turn composite"})
            continue
        categories = group[(group["kind"] == "category") & group["category"].isin(aggregate.MULTI_TURN)]
        n, correct = int(categories["n"].sum()), int(categories["correct"].sum())
        if not n:
            continue
        low, high = aggregate.wilson_interval(correct, n)
        rows.append(base | {"n": n, "accuracy": 100 * correct / n, "ci_low": 100 * low, "ci_high": 100 * high,
                            "source": f"pooled {', '.join(sorted(categories['category']))}"})
    return pd.DataFrame(rows, columns=COLUMNS)


def verdict_sentence(rows: pd.DataFrame, threshold_b: float = SUB_1B) -> str:
    """One sentence for the findings: which sub-1B models' multi-turn intervals exclude zero, or that none does
    (with the highest upper bound, so a reader sees how much the data could still hide)."""
    small = rows[pd.to_numeric(rows["params_b"], errors="coerce") < threshold_b]
    if small.empty:
        return (f"No model under {threshold_b:g}B parameters was evaluated on multi-turn entries: the sub-1B "
                "multi-turn question is open.")
    above = small[small["ci_low"] > 0]
    if len(above):
        named = "; ".join(f"{r.label} {r.accuracy:.1f} % [{r.ci_low:.1f}, {r.ci_high:.1f}] (n={_n(r.n)})"
                          for r in above.itertuples())
        return (f"A model under {threshold_b:g}B parameters calls correctly in multi-turn: its 95 % interval "
                f"excludes zero ({named}).")
    best = small.sort_values("ci_high", ascending=False).iloc[0]
    return (f"No model under {threshold_b:g}B parameters has a multi-turn interval that excludes zero "
            f"({len(small)} evaluated; the highest upper bound is {best['ci_high']:.1f} % for {best['label']}, "
            f"n={_n(best['n'])}).")


def _n(value) -> str:
    return "?" if value is None or (isinstance(value, float) and math.isnan(value)) else str(int(value))
