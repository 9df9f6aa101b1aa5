"""BFCL overall formulas checked against published leaderboard rows (the in-repo copy, tinyllm_utils/reference)."""

import math
from importlib.resources import files
from pathlib import Path

import pandas as pd
import pytest

from tinyllm_utils.analysis.reference import SUB_TABLE_COLUMNS
from tinyllm_utils.analysis.stats import V3_COUNTS, V4_COUNTS
from tinyllm_utils.bfcl.aggregate import overall_scores, summarize, wilson_interval

REFERENCE = Path(str(files("tinyllm_utils").joinpath("reference", "bfcl_leaderboard")))  # shipped package data
# The leaderboard's category sizes and column names, as the analysis stage reads them (one copy of that data).
COLUMNS = SUB_TABLE_COLUMNS


def percent(value) -> float:
    return float(str(value).rstrip("%")) / 100


def leaderboard_rows(prefix: str, parts: list[str]) -> list[tuple[str, dict, float]]:
    overall = pd.read_csv(REFERENCE / f"{prefix}data_overall.csv").set_index("Model")
    tables = {p: pd.read_csv(REFERENCE / f"{prefix}data_{p}.csv").set_index("Model") for p in parts}
    rows = []
    for model in overall.index:
        try:
            accuracy = {category: percent(tables[part].loc[model, column])
                        for part in parts for column, category in COLUMNS[part].items()}
        except (KeyError, ValueError):
            continue  # a model missing from a sub-table, or N/A cells
        if any(math.isnan(v) for v in accuracy.values()):
            continue  # empty cells
        rows.append((model, accuracy, percent(overall.loc[model, "Overall Acc"])))
    return rows


def test_v3_overall_matches_published_xlam_row():
    rows = {m: (a, o) for m, a, o in leaderboard_rows("v3_2025-04-30_", ["non_live", "live", "multi_turn"])}
    accuracy, published = rows["xLAM-2-3b-fc-r (FC)"]
    scores = overall_scores(accuracy, counts=V3_COUNTS)["v3"]
    assert published == pytest.approx(0.6481)
    assert scores["overall"] == pytest.approx(published, abs=2e-4)
    assert scores["multi_turn"] == pytest.approx(0.5625, abs=1e-4)


@pytest.mark.parametrize("prefix", ["v3_2025-04-30_", "v3_2025-06-14_"])
def test_v3_overall_matches_every_published_row(prefix):
    rows = leaderboard_rows(prefix, ["non_live", "live", "multi_turn"])
    assert len(rows) > 50
    for model, accuracy, published in rows:
        assert overall_scores(accuracy, counts=V3_COUNTS)["v3"]["overall"] == pytest.approx(published, abs=3e-4), model


def test_v4_overall_matches_every_published_row():
    rows = leaderboard_rows("", ["non_live", "live", "multi_turn", "agentic"])
    assert len(rows) > 50
    for model, accuracy, published in rows:
        assert overall_scores(accuracy, counts=V4_COUNTS)["v4"]["overall"] == pytest.approx(published, abs=3e-4), model


def test_missing_categories_are_missing_not_zero():
    scores = overall_scores({"simple_python": 0.5, "multiple": 0.4})
    assert scores["v3"]["overall"] is None and scores["v4"]["overall"] is None
    assert scores["v3"]["non_live_simple"] is None  # java / javascript not run
    full_single = {c: 0.5 for c in ["simple_python", "simple_java", "simple_javascript", "multiple", "parallel",
                                    "parallel_multiple", "irrelevance"]}
    assert overall_scores(full_single)["v3"]["non_live_overall"] == pytest.approx(0.5)


def test_wilson_interval():
    low, high = wilson_interval(0, 25)
    assert low == 0 and high == pytest.approx(0.1332, abs=1e-3)
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_summarize_counts_and_failure_modes():
    rows = [{"id": "a", "valid": True, "error_type": None, "raw": "[f()]"},
            {"id": "b", "valid": False, "error_type": "ast_decoder:decoder_failed", "raw": "Hello there"},
            {"id": "c", "valid": False, "error_type": "simple_function_checker:missing_required", "raw": "[f()]"}]
    metrics = summarize({"simple_python": rows})
    m = metrics["categories"]["simple_python"]
    assert (m["correct"], m["n"], m["category_size"]) == (1, 3, 400)
    assert m["failure_modes"]["no call"] == 1 and m["failure_modes"]["wrong arguments"] == 1
    assert metrics["complete"] is False
