"""Paired comparisons of every trained model with its parent and the base on shared entries, and the findings
text written from them.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from tinyllm_utils.analysis import multi_turn_verdict
from tinyllm_utils.analysis.reference import TABLE_IV, TABLE_IV_LABELS
from tinyllm_utils.analysis.runs import IRRELEVANCE, names_parent
from tinyllm_utils.analysis.stats import ALPHA, V4_COUNTS, holm, paired_difference, score_weights

# --------------------------------------------------------------------------------------------- comparisons

# The edge stage's 4-bit rows of a model fine-tuned from the embedded (de-quantized Q4_K_M) base: docs/edge.md.
FOUR_BIT_NOTE = (
    "Merged 4-bit variants of a model fine-tuned from the embedded base are no fair test of 4-bit quantization: "
    "the base's weights lie on its own Q4_K_M grid, so Q4_K_M re-quantization snaps a short fine-tune back onto the "
    "base (about 99 % of its bytes identical to the base's file, a few % of the fine-tune's direction kept) and "
    "Q4_0 turns it into rounding-tie noise. The 4-bit deployment of such a model is the base Q4_K_M with the "
    "fine-tune as an F16 LoRA adapter applied at run time (tinyllm_utils.edge.lora_adapter, docs/edge.md).")

MATCHED_PREFIX = "sft matched to "  # stages.hybrid: SFT continued for a hybrid's training seconds

def default_pairs(results: pd.DataFrame) -> list[tuple[str, str]]:
    """(A, B) evaluation keys to compare, B the derived one, within one run:

    * a trained model (method other than "base") against the evaluation its run.json `parent` names (its key,
      folder, model, label or method, or a checkpoint inside its model folder) and against the base evaluation
      of the same base model;
    * an edge variant (a quantization other than F16) against the F16 variant of its method and stage;
    * a decoding option's row (`decoding` other than "free": the grammar, the calibrated decline) against the same
      weights decoded freely, and nothing else (its training is the free row's);
    * a hybrid against the SFT continued for its training seconds (method "sft matched to <hybrid>").

    A file evaluated again (stage 07's F16 is stage 06's export) is compared as a derived model only once, at its
    first evaluation: the same test twice would only enlarge Holm's family.
    """
    if not len(results):
        return []
    evals = results.drop_duplicates("key").sort_values("key")
    if "decoding" not in evals:
        evals = evals.assign(decoding="free")
    repeated = list(evals["checkpoint"].notna() & evals.duplicated(["run_id", "checkpoint", "decoding"]))
    if "kind" in results and "category" in results:  # evaluated again on other categories: new comparisons
        scored = results[(results["kind"] == "category") & (results["n"] > 0)]
        categories = scored.groupby("key")["category"].agg(frozenset)
        first_seen: dict = {}
        for position, (_, row) in enumerate(evals.iterrows()):
            where = (row["run_id"], row["checkpoint"], row["decoding"])
            mine = categories.get(row["key"], frozenset())
            if repeated[position] and not mine <= first_seen.get(where, frozenset()):
                repeated[position] = False
            first_seen[where] = first_seen.get(where, frozenset()) | mine
    pairs = []
    for (_, b), again in zip(evals.iterrows(), repeated):
        same_run = evals[(evals["run_id"] == b["run_id"]) & (evals["key"] != b["key"])]
        if "/curve/" in str(b["eval_id"]):  # a learning curve's point: drawn, not tested (stages.sft)
            continue
        if b["decoding"] != "free":
            plain = same_run[(same_run["decoding"] == "free") & (same_run["checkpoint"] == b["checkpoint"])
                             & (same_run["stage"] == b["stage"])]
            pairs += [(a, b["key"]) for a in plain["key"]]
            continue
        same_run = same_run[same_run["decoding"] == "free"]
        matched = same_run[same_run["method"] == f"{MATCHED_PREFIX}{b['method']}"]
        pairs += [(a, b["key"]) for a in matched["key"]]
        if pd.notna(b["quantization"]) and b["quantization"] != "F16":
            f16 = same_run[(same_run["stage"] == b["stage"]) & (same_run["method"] == b["method"])
                           & (same_run["quantization"] == "F16")]
            pairs += [(a, b["key"]) for a in f16["key"]]
        if b["method"] == "base" or again:
            continue
        if pd.notna(b["parent"]) and b["parent"]:
            parent = str(b["parent"])
            match = same_run[[names_parent(parent, a["stage"], a["eval_id"], a["key"], a["model"], a["label"],
                                            a["method"]) for _, a in same_run.iterrows()]]
            pairs += [(a, b["key"]) for a in match["key"]]
        base = same_run[(same_run["method"] == "base") & (same_run["base_model"] == b["base_model"])]
        pairs += [(a, b["key"]) for a in base["key"]]
    return list(dict.fromkeys(pairs))


def compare(entry_table: pd.DataFrame, pairs: list[tuple[str, str]] | None = None, results: pd.DataFrame | None = None,
            n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Paired comparisons B - A on shared entries: per category, and for every Table IV composite both runs cover
    fully. Columns: diff (points), its 95 % paired bootstrap interval, p-value and Holm-adjusted p-value."""
    if pairs is None:
        pairs = default_pairs(results if results is not None else entry_table.assign(parent=None))
    rows = []
    by_key = {k: g for k, g in entry_table.groupby("key")} if len(entry_table) else {}
    for key_a, key_b in pairs:
        if key_a not in by_key or key_b not in by_key:
            continue
        a_rows, b_rows = by_key[key_a], by_key[key_b]
        merged = a_rows.merge(b_rows, on=["category", "id"], suffixes=("_a", "_b"))
        if not len(merged):
            continue
        a = {c: g["correct_a"].to_numpy() for c, g in merged.groupby("category")}
        b = {c: g["correct_b"].to_numpy() for c, g in merged.groupby("category")}
        info = {"a": a_rows["label"].iloc[0], "b": b_rows["label"].iloc[0], "a_key": key_a, "b_key": key_b,
                "run_id": b_rows["run_id"].iloc[0], "a_backend": a_rows["backend"].iloc[0],
                "b_backend": b_rows["backend"].iloc[0], "a_quantization": a_rows["quantization"].iloc[0],
                "b_quantization": b_rows["quantization"].iloc[0]}
        for category in a:
            result = paired_difference(a, b, {category: 1.0}, n_resamples, seed)
            rows.append(info | {"scoring": "category", "comparison": category,
                                "acc_a": 100 * a[category].mean(), "acc_b": 100 * b[category].mean(),
                                "b_only": int(np.sum((b[category] == 1) & (a[category] == 0))),
                                "a_only": int(np.sum((a[category] == 1) & (b[category] == 0)))} | result)
        # Composites only when every category of the score is shared; sampled categories use their shared entries.
        for column, (formula, component) in TABLE_IV.items():
            if formula == "category":
                continue
            weights = score_weights(formula, component, a, V4_COUNTS)
            if weights is None or len(weights) < 2:
                continue
            result = paired_difference(a, b, weights, n_resamples, seed)
            rows.append(info | {"scoring": formula, "comparison": column,
                                "acc_a": 100 * sum(w * a[c].mean() for c, w in weights.items()),
                                "acc_b": 100 * sum(w * b[c].mean() for c, w in weights.items()),
                                "b_only": math.nan, "a_only": math.nan} | result)
    table = pd.DataFrame(rows)
    if len(table):
        table["p_holm"] = holm(table["p_value"])
        table["family_size"] = len(table)
    return table


# --------------------------------------------------------------------------------------------- findings

def _p(p: float) -> str:
    return "< 0.0001" if p < 1e-4 else f"{p:.2g}" if p < 0.01 else f"{p:.2f}"


def comparison_sentence(row) -> str:
    """One finding, every number from the comparison row."""
    what = row["comparison"] if row["scoring"] == "category" else f"Table IV {TABLE_IV_LABELS[row['comparison']]}"
    detail = (f"{row['acc_b']:.1f} % vs {row['acc_a']:.1f} %, n = {int(row['n'])} paired entries, 95 % CI of the "
              f"difference {row['ci_low']:+.1f} to {row['ci_high']:+.1f} points, {row['test']} p = {_p(row['p_value'])}, "
              f"Holm-adjusted p = {_p(row['p_holm'])}")
    if row.get("a_backend") != row.get("b_backend"):  # the method is then not the only difference
        detail += f"; backends differ: {row.get('a_backend')} vs {row.get('b_backend')}"
    quantizations = (row.get("a_quantization"), row.get("b_quantization"))
    if all(isinstance(q, str) for q in quantizations) and quantizations[0] != quantizations[1]:
        detail += f"; weights differ in precision too: {quantizations[0]} vs {quantizations[1]}"
    if row["p_holm"] < ALPHA and row["diff"] != 0:
        verb = "beats" if row["diff"] > 0 else "trails"
        return f"**{row['b']}** {verb} **{row['a']}** by {abs(row['diff']):.1f} points on {what} ({detail})."
    return (f"**{row['b']}** vs **{row['a']}** on {what}: no difference established after Holm correction "
            f"(difference {row['diff']:+.1f} points; {detail}).")


def evaluation_summary(results: pd.DataFrame, key: str, entry_table: pd.DataFrame | None = None) -> str:
    """What one evaluation measured, in sentences generated from its rows (e.g. notebook 01's closing text)."""
    rows = results[results["key"] == key]
    cats = rows[(rows["kind"] == "category") & (rows["n"] > 0)].sort_values("accuracy", ascending=False)
    scores = rows[rows["kind"] == "score"].set_index(["scoring", "category"])
    first = rows.iloc[0]
    lines = [f"**{first['label']}** ({first['run_id']}/{first['stage']}, backend {first['backend']}): "
             f"{int(cats['n'].sum())} entries in {len(cats)} categories."]
    for formula in ("v3", "v4"):
        value = scores["accuracy"].get((formula, "overall"), math.nan)
        if pd.isna(value):
            lines.append(f"BFCL {formula} overall: missing (not every category it needs was run).")
        else:
            s = scores.loc[(formula, "overall")]
            lines.append(f"BFCL {formula} overall: {value:.2f} % (95 % interval {s['ci_low']:.2f} to "
                         f"{s['ci_high']:.2f}).")
    if len(cats):
        best, worst = cats.iloc[0], cats.iloc[-1]
        lines.append(f"Best category: {best['category']} {best['accuracy']:.1f} % (n = {int(best['n'])}, "
                     f"95 % CI {best['ci_low']:.1f} to {best['ci_high']:.1f}); worst: {worst['category']} "
                     f"{worst['accuracy']:.1f} % (n = {int(worst['n'])}, 95 % CI {worst['ci_low']:.1f} to "
                     f"{worst['ci_high']:.1f}).")
    if entry_table is not None and len(entry_table):
        mine = entry_table[entry_table["key"] == key]
        call_categories = mine[~mine["category"].isin(IRRELEVANCE)]
        if len(call_categories):
            no_call = 100 * (call_categories["failure_mode"] == "no call").mean()
            lines.append(f"In the categories that need a call, {no_call:.1f} % of the {len(call_categories)} "
                         f"answers contained no call at all.")
        irrelevance = mine[mine["category"].isin(IRRELEVANCE)]
        if len(irrelevance) and len(call_categories):
            lines.append(f"Irrelevance detection ({100 * irrelevance['correct'].mean():.1f} %, n = {len(irrelevance)}) "
                         "rewards answering without a call, so read it beside that no-call share.")
    return " ".join(lines)


def compute_matched_section(results: pd.DataFrame, comparisons: pd.DataFrame) -> list[str]:
    """The hybrids against SFT at equal compute: per hybrid, its training seconds beside its matched SFT's, and
    the paired comparisons of the two (the study's answer to "does the hybrid add anything to more SFT?")."""
    methods = results.drop_duplicates("key").set_index("key")
    matched = comparisons[comparisons["a_key"].map(methods["method"]).fillna("").str.startswith(MATCHED_PREFIX)]
    if not len(matched):
        return []
    out = ["### Hybrids against SFT at equal compute", "",
           "Each hybrid is compared with SFT continued from the same checkpoint for as many steps as SFT ran in the "
           "hybrid's training seconds (the hybrid is B, the matched SFT A).", ""]
    for (a_key, b_key), rows in matched.groupby(["a_key", "b_key"], sort=False):
        seconds = {k: methods.loc[k].get("training_seconds") for k in (a_key, b_key)}
        won = rows[(rows["p_holm"] < ALPHA) & (rows["diff"] != 0)]
        verdict = ("no difference established on any category or composite" if not len(won) else
                   "; ".join(f"{'beats' if r['diff'] > 0 else 'trails'} it on {r['comparison']} by "
                             f"{abs(r['diff']):.1f} points" for _, r in won.iterrows()))
        cost = ", ".join(f"{methods.loc[k, 'label']} {seconds[k]:.0f} s" for k in (b_key, a_key)
                         if pd.notna(seconds[k]))
        out.append(f"- **{methods.loc[b_key, 'label']}** vs **{methods.loc[a_key, 'label']}**: {verdict} "
                   f"(training: {cost}).")
        out += [f"  - {comparison_sentence(row)}" for _, row in rows.iterrows()]
    return out + [""]


def findings_markdown(results: pd.DataFrame, comparisons: pd.DataFrame | None = None,
                      entry_table: pd.DataFrame | None = None) -> str:
    """Findings written from the tables: one paragraph per evaluation, then every paired comparison."""
    out = ["# Findings (generated from the results table; do not edit by hand)", ""]
    if not len(results):
        return "\n".join(out + ["No evaluations found."]) + "\n"
    out += ["## Evaluations", ""]
    for key in results["key"].drop_duplicates():
        out += [f"- {evaluation_summary(results, key, entry_table)}"]
    out += [""]
    multi_turn = multi_turn_verdict.multi_turn_rows(results)
    if len(multi_turn):  # the paper's open question: can a sub-1B model do multi-turn at all?
        out += ["## Multi-turn below 1B parameters", "", multi_turn_verdict.verdict_sentence(multi_turn), ""]
    if comparisons is not None and len(comparisons):
        family = int(comparisons["family_size"].iloc[0])
        out += ["## Paired comparisons", "",
                f"Each comparison uses only the entries both evaluations answered. Categories: McNemar's exact test; "
                f"composite scores: a paired permutation test. p-values are Holm-adjusted over all {family} "
                f"comparisons below (family-wise error 5 %).", ""]
        ordered = comparisons.sort_values(["p_holm", "comparison"])
        out += compute_matched_section(results, comparisons)
        quantized = comparisons["b_quantization"].astype(str).str.startswith("Q4")
        if quantized.any():
            out += ["### Reading the 4-bit rows", "", FOUR_BIT_NOTE, ""]
        out += ["### Every comparison", ""]
        out += [f"- {comparison_sentence(row)}" for _, row in ordered.iterrows()]
    else:
        out += ["## Paired comparisons", "", "No two evaluations share entries yet (only one method was run)."]
    return "\n".join(out) + "\n"
