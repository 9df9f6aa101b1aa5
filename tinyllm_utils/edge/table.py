"""The edge table: one row per checkpoint x variant x thread count (size, speed, memory, accuracy, and the
accuracy kept against F16 with a paired interval), its Pareto front and the recommended variant per checkpoint.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from tinyllm_utils.bfcl.data import expects_call
from tinyllm_utils.core.results import read_jsonl

# pandas, matplotlib, torch are imported where used: a profiling process should hold only llama.cpp.
if TYPE_CHECKING:
    import pandas as pd
from tinyllm_utils.analysis.edge_views import plot_edge_pareto
from tinyllm_utils.analysis.stats import mark_pareto


def paired_retention(reference: list[dict], variant: list[dict], n_boot: int = 2000, seed: int = 0) -> dict:
    """Accuracy of a variant relative to its reference (F16) on the same BFCL entries.

    Rows are saved predictions (`id`, `category`, `valid`); only entries present in both count. Returns both
    accuracies, retained = variant / reference with a paired bootstrap 95 % interval (entries resampled
    together), the discordant counts and McNemar's exact p-value (the analysis stage's test).
    """
    import numpy as np

    from tinyllm_utils.analysis.stats import mcnemar_exact

    ref = {(r["category"], r["id"]): bool(r["valid"]) for r in reference}
    var = {(r["category"], r["id"]): bool(r["valid"]) for r in variant}
    keys = sorted(ref.keys() & var.keys())
    if not keys:
        raise ValueError("no entries in common: the variant was not evaluated on the reference's entries")
    a = np.array([ref[k] for k in keys], dtype=float)
    b = np.array([var[k] for k in keys], dtype=float)
    only_ref, only_var = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    retained = b.mean() / a.mean() if a.mean() > 0 else None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(keys), size=(n_boot, len(keys)))
    ref_boot, var_boot = a[idx].mean(axis=1), b[idx].mean(axis=1)
    ok = ref_boot > 0
    ratios = var_boot[ok] / ref_boot[ok]
    low, high = (np.percentile(ratios, [2.5, 97.5]).tolist() if ok.any() else (None, None))
    p_value = mcnemar_exact(a, b) if only_ref + only_var else 1.0
    return {"n": len(keys), "reference_accuracy": float(a.mean()), "accuracy": float(b.mean()),
            "retained": None if retained is None else float(retained), "retained_ci95": [low, high],
            "only_reference_correct": only_ref, "only_variant_correct": only_var, "mcnemar_p": float(p_value)}


def _predictions(eval_dir: Path) -> list[dict]:
    """Saved predictions of the entries this evaluation selected (metrics.json's selected_ids when present: a
    folder reused with other categories or limits holds more rows than it scored)."""
    metrics_path = eval_dir / "metrics.json"
    selected = json.loads(metrics_path.read_text()).get("selected_ids") if metrics_path.exists() else None
    rows = []
    for path in sorted((eval_dir / "predictions").glob("*.jsonl")):
        if selected is not None and path.stem not in selected:
            continue
        keep = set(selected[path.stem]) if selected is not None else None
        rows += [r for r in read_jsonl(path) if keep is None or r["id"] in keep]
    return rows


def _share_valid(rows: list[dict]) -> float:
    return sum(bool(r["valid"]) for r in rows) / len(rows)


def _expecting_a_call(rows: list[dict]) -> list[dict]:
    """The rows of categories that expect a call; all rows when none do (e.g. an irrelevance-only check)."""
    calls = [r for r in rows if expects_call(r["category"])]
    return calls or rows


def edge_table(records: list[dict], reference: str = "F16") -> pd.DataFrame:
    """One row per checkpoint x variant from saved results.

    Each record: {"method": "base" | "sft" | ..., "quantization": "Q4_K_M", "eval_dir": evaluate() output folder
    (optional), "profile": a profile_variant / profile_transformers result or the path of its JSON (optional)}.
    `accuracy` (and the retention against the same method's `reference` quantization, paired on the same
    entries) counts the entries that expect a call; `irrelevance_accuracy` and `accuracy_all_entries` sit beside
    it. Pooled with irrelevance, a variant that stops calling altogether would look like it kept its accuracy.
    """
    import pandas as pd

    rows, predictions = [], {}
    for record in records:
        key = (record["method"], record["quantization"])
        if record.get("eval_dir"):
            predictions[key] = _predictions(Path(record["eval_dir"]))
    for record in records:
        method, quant = record["method"], record["quantization"]
        profile = record.get("profile")
        if isinstance(profile, (str, Path)):
            profile = json.loads(Path(profile).read_text())
        row = {"method": method, "quantization": quant}
        if profile:
            decode = [p["decode_tokens_per_s"]["median"] for p in profile["prompts"].values()]
            e2e = [p["e2e_s"]["median"] for p in profile["prompts"].values()]
            ttft = [p["ttft_s"]["median"] for p in profile["prompts"].values()]
            row |= {"runtime": profile.get("runtime"), "threads": profile.get("threads"),
                    "size_mb": profile.get("file_size_mb"), "peak_rss_mb": profile.get("peak_rss_mb"),
                    "load_s": profile["load_s"]["median"], "ttft_s": statistics.median(ttft),
                    "decode_tokens_per_s": statistics.median(decode),
                    "decode_ms_per_token": 1000 / statistics.median(decode),
                    "e2e_s_per_entry": statistics.mean(e2e)}
        mine, ref = predictions.get((method, quant)), predictions.get((method, reference))
        if mine:
            abstain = [r for r in mine if not expects_call(r["category"])]
            row["accuracy_all_entries"] = _share_valid(mine)
            row["irrelevance_accuracy"] = _share_valid(abstain) if abstain else None
            mine, ref = _expecting_a_call(mine), _expecting_a_call(ref or [])
            row["accuracy"], row["n"] = _share_valid(mine), len(mine)
        if mine and ref:
            paired = paired_retention(ref, mine)
            row |= {"retained": paired["retained"], "retained_ci_low": paired["retained_ci95"][0],
                    "retained_ci_high": paired["retained_ci95"][1], "mcnemar_p": paired["mcnemar_p"],
                    "n_paired": paired["n"]}
        rows.append(row)
    return pd.DataFrame(rows)


def recommend(table: pd.DataFrame, keep: float = 0.95, size_col: str = "size_mb") -> pd.DataFrame:
    """Per method, the smallest variant whose accuracy is >= `keep` x its F16 accuracy (point estimate;
    the paired interval is shown next to it). A method whose F16 scores 0 has no recommendation."""
    import pandas as pd

    rows = []
    for method, group in table.groupby("method", sort=False):
        complete = "retained" in group and size_col in group
        ok = group[(group["retained"] >= keep) & group[size_col].notna()] if complete else group.iloc[:0]
        if ok.empty:
            rows.append({"method": method, "quantization": None, "reason": f"no variant keeps >= {keep:.0%}"})
            continue
        best = ok.sort_values(size_col).iloc[0]
        rows.append({"method": method, "quantization": best["quantization"],
                     **{c: best.get(c) for c in ("size_mb", "peak_rss_mb", "decode_tokens_per_s", "e2e_s_per_entry",
                                                 "accuracy", "irrelevance_accuracy", "retained", "retained_ci_low",
                                                 "retained_ci_high")},
                     "reason": f"smallest file keeping >= {keep:.0%} of F16 accuracy"})
    return pd.DataFrame(rows)


def write_edge_outputs(table: pd.DataFrame, out_dir: str | Path, threads: int = 2, keep: float = 0.95) -> dict:
    """From the long table (every thread count): the Pareto-marked table at `threads`, the recommendation
    per method, the figure; all three saved under `out_dir`. Returns the two tables and the figure paths."""
    from tinyllm_utils.core.results import write_text_atomic

    out_dir = Path(out_dir)
    write_text_atomic(out_dir / "edge_table_all_threads.csv", table.to_csv(index=False))
    if "threads" in table:
        # Rows profiled at `threads`; an accuracy-only row (no profile) is kept for the table but not plotted.
        table = table[(table["threads"] == threads) | table["threads"].isna()]
    at = mark_pareto(table.reset_index(drop=True))
    chosen = recommend(at[at["runtime"] == "llama.cpp"] if "runtime" in at else at, keep=keep)
    write_text_atomic(out_dir / "edge_table.csv", at.to_csv(index=False))
    write_text_atomic(out_dir / "edge_recommendation.csv", chosen.to_csv(index=False))
    plot_edge_pareto(at, out_dir / "edge_pareto")
    return {"table": at, "recommendation": chosen,
            "figures": [out_dir / "edge_pareto.png", out_dir / "edge_pareto.pdf"]}
