"""The sub-1B multi-turn verdict read off a results table (analysis.multi_turn_verdict)."""

import math

import pandas as pd

from tinyllm_utils.analysis.multi_turn_verdict import multi_turn_rows, verdict_sentence


def _table(models):
    rows = []
    for key, (params, counts, composite) in models.items():
        base = {"key": key, "label": key, "model": key, "method": "base", "params_b": params}
        for category, (n, correct) in counts.items():
            rows.append(base | {"kind": "category", "scoring": "category", "category": category, "n": n,
                                "correct": correct, "accuracy": 100 * correct / n, "ci_low": 0.0, "ci_high": 0.0})
        if composite is not None:
            rows.append(base | {"kind": "score", "scoring": "v4", "category": "multi_turn", "n": 800,
                                "correct": math.nan, **composite})
    return pd.DataFrame(rows)


def test_no_sub_1b_interval_excludes_zero_names_the_highest_upper_bound():
    table = _table({"qwen3-0.6b": (0.6, {"multi_turn_base": (20, 0), "multi_turn_miss_func": (20, 0)}, None),
                    "xlam-2-3b-fc-r": (3.0, {}, {"accuracy": 55.0, "ci_low": 50.0, "ci_high": 60.0}),
                    "simple-only": (0.27, {"simple_python": (10, 3)}, None)})
    rows = multi_turn_rows(table)
    assert list(rows["model"]) == ["qwen3-0.6b", "xlam-2-3b-fc-r"]  # no multi-turn entry: left out
    pooled = rows.iloc[0]
    assert (pooled["n"], pooled["accuracy"], pooled["ci_low"]) == (40, 0.0, 0.0) and pooled["ci_high"] > 0
    assert rows.iloc[1]["source"] == "v4 multi_turn composite"
    sentence = verdict_sentence(rows)
    assert sentence.startswith("No model under 1B parameters has a multi-turn interval that excludes zero")
    assert "qwen3-0.6b" in sentence and "n=40" in sentence


def test_a_sub_1b_interval_above_zero_is_named():
    table = _table({"gemma-sft": (0.27, {"multi_turn_base": (50, 10)}, None)})
    sentence = verdict_sentence(multi_turn_rows(table))
    assert "excludes zero (gemma-sft 20.0 %" in sentence and "(n=50)" in sentence
    assert "open" in verdict_sentence(multi_turn_rows(_table({"big": (3.0, {"multi_turn_base": (5, 1)}, None)})))
