"""Reference rows beside the study's own: the BFCL leaderboard snapshots, the paper's headline and
FunctionGemma's card, each with its source and date, and Table IV built from them and from a run's results.
"""

from __future__ import annotations

import math
import re
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd

from tinyllm_utils.analysis.runs import AGENTIC, METHOD_ORDER
from tinyllm_utils.analysis.stats import V3_COUNTS, V4_COUNTS
from tinyllm_utils.bfcl import aggregate
from tinyllm_utils.bfcl.data import ALL_CATEGORIES

# Full-benchmark counts that weight the live score: v3 had 882 / 18 live (ir)relevance entries, v4 has 884 / 16.
# Table IV of the paper (BFCL v3 leaderboard columns), plus v4 overall: column -> (formula, component).
# non_live = non-live AST summary; live = count-weighted live incl. (ir)relevance (v3's "Live Acc");
# irrelevance = mean of non-live and live irrelevance; relevance = live_relevance.
TABLE_IV = {"overall_v3": ("v3", "overall"), "overall_v4": ("v4", "overall"), "non_live": ("v3", "non_live_ast"),
            "live": ("v3", "live_overall"), "multi_turn": ("v3", "multi_turn"),
            "relevance": ("category", "live_relevance"), "irrelevance": ("v4", "irrelevance")}
TABLE_IV_LABELS = {"overall_v3": "overall (v3 scoring)", "overall_v4": "overall (v4 scoring)",
                   "non_live": "non-live AST", "live": "live", "multi_turn": "multi-turn",
                   "relevance": "relevance", "irrelevance": "irrelevance"}



REFERENCE_LEADERBOARDS = [("v4", "2025-12-16", ""), ("v3", "2025-06-14", "v3_2025-06-14_"),
                          ("v3", "2025-04-30", "v3_2025-04-30_")]
LEADERBOARD_URL = "https://gorilla.cs.berkeley.edu/leaderboard.html"
# The paper's and comparable small models (leaderboard name without the " (FC)" / " (Prompt)" suffix) -> nominal
# parameter count in billions, read from the name.
REFERENCE_MODELS = {
    "xLAM-2-1b-fc-r": 1.0, "xLAM-2-3b-fc-r": 3.0, "Qwen3-0.6B": 0.6, "Qwen3-1.7B": 1.7, "Qwen3-4B": 4.0,
    "Qwen3-4B-Instruct-2507": 4.0, "Hammer2.1-0.5b": 0.5, "Hammer2.1-1.5b": 1.5, "Hammer2.1-3b": 3.0,
    "Gemma-3-1b-it": 1.0, "Gemma-3-4b-it": 4.0, "Llama-3.2-1B-Instruct": 1.0, "Llama-3.2-3B-Instruct": 3.0,
    "Qwen2.5-0.5B-Instruct": 0.5, "Qwen2.5-1.5B-Instruct": 1.5, "Qwen2.5-3B-Instruct": 3.0,
}
SUB_TABLE_COLUMNS = {
    "non_live": {"Python Simple AST": "simple_python", "Java Simple AST": "simple_java",
                 "JavaScript Simple AST": "simple_javascript", "Multiple AST": "multiple", "Parallel AST": "parallel",
                 "Parallel Multiple AST": "parallel_multiple", "Irrelevance Detection": "irrelevance"},
    "live": {"Python Simple AST": "live_simple", "Python Multiple AST": "live_multiple",
             "Python Parallel AST": "live_parallel", "Python Parallel Multiple AST": "live_parallel_multiple",
             "Irrelevance Detection": "live_irrelevance", "Relevance Detection": "live_relevance"},
    "multi_turn": {"Base": "multi_turn_base", "Miss Func": "multi_turn_miss_func",
                   "Miss Param": "multi_turn_miss_param", "Long Context": "multi_turn_long_context"},
    "agentic": {"Web Search Base": "web_search_base", "Web Search No Snippet": "web_search_no_snippet",
                "Memory KV": "memory_kv", "Memory Vector": "memory_vector",
                "Memory Recursive Summarization": "memory_rec_sum"},
}
# Published summary columns of the leaderboards' overall table -> Table IV column (v4's "Live Acc" is live AST
# only, not Table IV's live, so it is not carried).
PUBLISHED_COLUMNS = {"Non-Live AST Acc": "non_live", "Multi Turn Acc": "multi_turn",
                     "Relevance Detection": "relevance", "Irrelevance Detection": "irrelevance"}
PAPER_URL = "https://arxiv.org/abs/2511.22138"
CARD_URL = "https://huggingface.co/google/functiongemma-270m-it"
REFERENCE_COLUMNS = (["row_id", "model", "mode", "params_b", "params_note", "source", "source_url", "date",
                      "bfcl_version", "note"] + ALL_CATEGORIES + AGENTIC + ["non_live_simple"]
                     + [f"published_{c}" for c in TABLE_IV])


def reference_dir() -> Path:
    return Path(str(files("tinyllm_utils").joinpath("reference")))


def _percent(value) -> float:
    try:
        return float(str(value).rstrip("%"))
    except ValueError:
        return math.nan  # "N/A"


def _split_mode(name: str) -> tuple[str, str | None]:
    match = re.match(r"^(.*?) \((FC|Prompt)\)$", name)
    return (match.group(1), match.group(2)) if match else (name, None)


def build_reference_rows(leaderboard_dir: str | Path | None = None) -> pd.DataFrame:
    """Reference rows from the leaderboard CSVs (small and paper models) plus the paper's and FunctionGemma's
    published figures; every row carries source, URL, date and BFCL version. Figures in %."""
    folder = Path(leaderboard_dir) if leaderboard_dir else reference_dir() / "bfcl_leaderboard"
    rows, seen_v3 = [], set()
    for version, date, prefix in REFERENCE_LEADERBOARDS:
        overall = pd.read_csv(folder / f"{prefix}data_overall.csv")
        parts = ["non_live", "live", "multi_turn"] + (["agentic"] if version == "v4" else [])
        tables = {p: pd.read_csv(folder / f"{prefix}data_{p}.csv").set_index("Model") for p in parts}
        for _, line in overall.iterrows():
            name, mode = _split_mode(line["Model"])
            if name not in REFERENCE_MODELS:
                continue
            if version == "v3":  # the older v3 table only for models the newer one lacks
                if line["Model"] in seen_v3:
                    continue
                seen_v3.add(line["Model"])
            row = {"row_id": f"bfcl-{version}-{date}:{line['Model']}", "model": line["Model"], "mode": mode,
                   "params_b": REFERENCE_MODELS[name], "params_note": "nominal, from the model name",
                   "source": f"BFCL {version} leaderboard", "source_url": LEADERBOARD_URL, "date": date,
                   "bfcl_version": version, "note": f"{prefix}data_*.csv"}
            for part, columns in SUB_TABLE_COLUMNS.items():
                if part not in tables or line["Model"] not in tables[part].index:
                    continue
                for column, category in columns.items():
                    row[category] = _percent(tables[part].loc[line["Model"], column])
            row[f"published_overall_{version}"] = _percent(line["Overall Acc"])
            for column, target in PUBLISHED_COLUMNS.items():
                row[f"published_{target}"] = _percent(line[column])
            if version == "v3":
                row["published_live"] = _percent(line["Live Acc"])
            rows.append(row)
    paper = {"source": "TinyLLM paper (arXiv 2511.22138)", "source_url": PAPER_URL, "date": "2025-11",
             "bfcl_version": "v3"}
    rows.append(paper | {"row_id": "paper:headline", "model": "TinyLLM paper, best (hybrid optimization)",
                         "params_note": "1-3B models; not one model", "published_overall_v3": 65.74,
                         "published_multi_turn": 55.62,
                         "note": "headline; matches BFCL v3 scoring of xLAM-2-3b-fc-r"})
    for model in ("TinyLlama-1.1B", "TinyAgent-1.1B"):
        rows.append(paper | {"row_id": f"paper:{model}", "model": model, "params_b": 1.1,
                             "params_note": "nominal, from the model name", "published_multi_turn": 0.0,
                             "note": "multi-turn reported as 0 %"})
    card = {"multiple": 63.5, "parallel": 39.0, "parallel_multiple": 29.5, "live_simple": 36.2,
            "live_multiple": 25.7, "live_parallel": 22.9, "live_parallel_multiple": 20.8, "live_relevance": 61.1,
            "non_live_simple": 61.6, "published_relevance": 61.1, "published_irrelevance": 73.7}
    rows.append(card | {"row_id": "card:functiongemma-270m-it", "model": "FunctionGemma-270M-it", "params_b": 0.27,
                        "params_note": "model card", "source": "FunctionGemma-270M model card (Google), 0-shot",
                        "source_url": CARD_URL, "date": "undated", "bfcl_version": "not stated",
                        "note": "simple = non-live simple summary; irrelevance not split into non-live / live"})
    return pd.DataFrame(rows).reindex(columns=REFERENCE_COLUMNS)


def load_reference_rows() -> pd.DataFrame:
    """The committed reference_rows.csv (package data)."""
    return pd.read_csv(reference_dir() / "reference_rows.csv")


def table_iv_from_accuracy(accuracy: dict[str, float | None], counts: dict | None = None,
                           non_live_simple: float | None = None) -> dict[str, float | None]:
    """Table IV's columns (fractions) from per-category accuracies (fractions); missing -> None."""
    scores = aggregate.overall_scores(accuracy, counts)
    out = {}
    for column, (formula, component) in TABLE_IV.items():
        out[column] = accuracy.get(component) if formula == "category" else scores[formula][component]
    if out["non_live"] is None and non_live_simple is not None:  # a source that publishes only the simple summary
        parts = [non_live_simple] + [accuracy.get(c) for c in ("multiple", "parallel", "parallel_multiple")]
        out["non_live"] = None if any(p is None for p in parts) else float(np.mean(parts))
    return out


def reference_table_iv(reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """Table IV for the reference rows: computed from their category figures with their version's counts,
    else the published figure; each row keeps its source, date and BFCL version."""
    reference = load_reference_rows() if reference is None else reference
    rows = []
    for _, line in reference.iterrows():
        accuracy = {c: line[c] / 100 for c in ALL_CATEGORIES + AGENTIC if c in line and pd.notna(line[c])}
        counts = V3_COUNTS if line["bfcl_version"] == "v3" else V4_COUNTS
        simple = line["non_live_simple"] / 100 if pd.notna(line.get("non_live_simple")) else None
        computed = table_iv_from_accuracy(accuracy, counts=counts, non_live_simple=simple)
        row = {"row": "reference", "label": line["model"], "model": line["model"], "method": "published",
               "source": line["source"], "date": line["date"], "bfcl": line["bfcl_version"],
               "params_b": line["params_b"], "n": math.nan}
        for column in TABLE_IV:
            value = computed[column]
            published = line.get(f"published_{column}")
            row[column] = 100 * value if value is not None else (published if pd.notna(published) else math.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def table_iv(results: pd.DataFrame, reference: pd.DataFrame | bool | None = True) -> pd.DataFrame:
    """The paper's Table IV layout, one row per evaluation (model x method), reference rows below.

    Our rows: BFCL v4 data as bfcl-eval scores it, summarized with both formulas (v3 = the paper's scoring);
    a component whose categories were not run is NaN (shown as missing), never 0. Columns in %, with n and
    the v3 overall's 95 % bootstrap interval.
    """
    ours = []
    scores = results[results["kind"] == "score"] if len(results) else results
    cats = results[results["kind"] == "category"] if len(results) else results
    for key, group in results.groupby("key", sort=False) if len(results) else []:
        first = group.iloc[0]
        row = {"row": "ours", "label": first["label"], "model": first["model"], "base_model": first["base_model"],
               "method": first["method"],
               "source": f"{first['run_id']}/{first['stage']}", "date": None,
               "bfcl": f"v4 data (bfcl-eval {first['bfcl_eval']})" if first["bfcl_eval"] else "v4 data",
               "params_b": first["params_b"], "n": int(cats[cats["key"] == key]["n"].sum())}
        s = scores[scores["key"] == key].set_index(["scoring", "category"])
        c = cats[cats["key"] == key].set_index("category")
        for column, (formula, component) in TABLE_IV.items():
            if formula == "category":
                row[column] = c["accuracy"].get(component, math.nan)
            else:
                row[column] = s["accuracy"].get((formula, component), math.nan)
        overall = s.loc[("v3", "overall")] if ("v3", "overall") in s.index else None
        row["overall_v3_ci_low"] = overall["ci_low"] if overall is not None else math.nan
        row["overall_v3_ci_high"] = overall["ci_high"] if overall is not None else math.nan
        ours.append(row)
    table = pd.DataFrame(ours)
    if len(table):
        rank = {m: i for i, m in enumerate(METHOD_ORDER)}
        order = sorted(range(len(table)), key=lambda i: (ours[i]["source"].split("/")[0], ours[i]["base_model"],
                                                         rank.get(ours[i]["method"], len(rank)), ours[i]["label"]))
        table = table.iloc[order].reset_index(drop=True)
    if reference is not False and reference is not None:
        ref = reference_table_iv(None if reference is True else reference)
        table = pd.concat([table, ref], ignore_index=True)
    return table


def table_iv_markdown(table: pd.DataFrame) -> str:
    """Table IV as markdown; missing components print as '–' (missing), never 0."""
    show = table[["label", "bfcl", "source", "n"] + list(TABLE_IV)].copy()
    show = show.rename(columns=TABLE_IV_LABELS)
    for column in TABLE_IV_LABELS.values():
        show[column] = show[column].map(lambda v: "–" if pd.isna(v) else f"{v:.2f}")
    show["n"] = show["n"].map(lambda v: "" if pd.isna(v) else f"{int(v)}")
    return show.to_markdown(index=False)
