"""What stage 01's notebook shows, and the analysis draws again for the report: per-category accuracy with
intervals, the overall composites, failure modes, and the findings sentences of a baseline evaluation.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from tinyllm_utils.analysis import runs
from tinyllm_utils.analysis.runs import GROUP
from tinyllm_utils.bfcl.scoring import FAILURE_MODES

BASELINE_STAGE = "01_baseline_evaluation"



def evaluations_in(stage_dir: str | Path) -> list[runs.Evaluation]:
    """Evaluation folders at any depth (a hub id `org/name` used as a folder name nests one level deeper)."""
    return runs.find_evaluations(stage_dir) if Path(stage_dir).is_dir() else []


def metrics_table(stage_dir: str | Path) -> pd.DataFrame:
    """Long format: one row per (model, category) with accuracy %, n and the 95 % interval."""
    rows = []
    for ev in evaluations_in(stage_dir):
        for category, m in ev.metrics["categories"].items():
            low, high = m["ci95"] or (None, None)
            rows.append({"model": ev.model, "category": category, "group": GROUP.get(category, "other"),
                         "accuracy": None if m["accuracy"] is None else 100 * m["accuracy"], "n": m["n"],
                         "category_size": m["category_size"], "ci_low": None if low is None else 100 * low,
                         "ci_high": None if high is None else 100 * high})
    return pd.DataFrame(rows)


def overall_table(stage_dir: str | Path) -> pd.DataFrame:
    rows = []
    for ev in evaluations_in(stage_dir):
        for version, scores in ev.metrics["overall"].items():
            for name, value in scores.items():
                rows.append({"model": ev.model, "bfcl": version, "score": name,
                             "value": None if value is None else 100 * value})
    return pd.DataFrame(rows)


def predictions_table(stage_dir: str | Path) -> pd.DataFrame:
    """The selected predictions (the rows metrics.json counted, not older ones of a reused folder) with their
    failure mode (correct, no call, unparseable, wrong function, ...)."""
    table = runs.entries(evaluations_in(stage_dir))
    if not len(table):
        return pd.DataFrame(columns=["model", "category", "id", "valid", "error_type", "failure_mode"])
    return table.assign(valid=table["correct"].astype(bool))[
        ["model", "category", "id", "valid", "error_type", "failure_mode"]]


def failure_mode_table(stage_dir: str | Path) -> pd.DataFrame:
    """Counts of each failure mode per model and category (selected entries only)."""
    df = predictions_table(stage_dir)
    table = df.groupby(["model", "category", "failure_mode"]).size().unstack(fill_value=0)
    return table.reindex(columns=list(FAILURE_MODES), fill_value=0)


def plot_category_accuracy(metrics: pd.DataFrame):
    """Bar chart of accuracy per category (one colour per model) with 95 % Wilson intervals."""
    data = metrics.dropna(subset=["accuracy"])
    fig, ax = plt.subplots(figsize=(min(11, 0.55 * data["category"].nunique() + 3), 4.5))
    sns.barplot(data=data, x="category", y="accuracy", hue="model", ax=ax, errorbar=None)
    categories = list(dict.fromkeys(data["category"]))
    models = list(dict.fromkeys(data["model"]))
    width = 0.8 / max(len(models), 1)
    for m_index, model in enumerate(models):
        sub = data[data["model"] == model].set_index("category").reindex(categories)
        xs = [i - 0.4 + width * (m_index + 0.5) for i in range(len(categories))]
        ax.errorbar(xs, sub["accuracy"], yerr=np.clip([sub["accuracy"] - sub["ci_low"], sub["ci_high"] - sub["accuracy"]], 0, None),
                    fmt="none", ecolor="black", elinewidth=1, capsize=2)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_xlabel("")
    n = data["n"]
    ax.set_title(f"BFCL accuracy per category, {n.min()}-{n.max()} entries each\n"
                 f"({int(n.sum())} in all; bars: 95 % Wilson interval)" if len(n) else "BFCL accuracy per category",
                 fontsize=10)
    plt.setp(ax.get_xticklabels(), rotation=40, ha="right", rotation_mode="anchor")
    fig.tight_layout()
    return fig


def plot_failure_modes(failures: pd.DataFrame):
    """Stacked horizontal bars: share of each failure mode per category (BFCL's order, top down), one panel per
    model, each bar's n at its end."""
    from tinyllm_utils.bfcl.data import ALL_CATEGORIES

    models = list(dict.fromkeys(failures.index.get_level_values(0)))
    present = set(failures.index.get_level_values(1))
    categories = [c for c in ALL_CATEGORIES if c in present] + sorted(present - set(ALL_CATEGORIES))
    fig, axes = plt.subplots(1, len(models), sharey=True, squeeze=False,
                             figsize=(min(12, 2.6 * len(models) + 3.2), 0.32 * len(categories) + 1.8))
    for ax, model in zip(axes[0], models):
        counts = failures.loc[model].reindex(categories[::-1]).fillna(0)
        n = counts.sum(axis=1)
        (counts.div(n.replace(0, 1), axis=0) * 100).plot(kind="barh", stacked=True, ax=ax, colormap="tab10",
                                                         width=0.8, legend=False)
        for i, count in enumerate(n):
            ax.text(101, i, f"n={int(count)}" if count else "not run", va="center", fontsize=8, clip_on=False)
        ax.set_xlim(0, 100)
        ax.set_xlabel("share of entries (%)")
        ax.set_title(f"{model} ({int(n.sum())} entries)" if len(models) > 1 else "", fontsize=10)
    axes[0][0].set_ylabel("")
    handles, names = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(names), fontsize=9, frameon=False)
    fig.suptitle(f"What the model did, per category ({int(failures.values.sum())} selected entries)", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 1), w_pad=3)
    return fig


def baseline_findings(metrics: pd.DataFrame, failures: pd.DataFrame) -> str:
    """Notebook 01's closing text, written from its tables so it stays true under any profile or model."""
    lines = []
    for model, rows in metrics.groupby("model"):
        scored = rows.dropna(subset=["accuracy"])
        best = scored.sort_values("accuracy", ascending=False).head(3)
        zero = scored[scored["accuracy"] == 0]["category"].tolist()
        lines.append(f"**{model}**: mean accuracy {scored['accuracy'].mean():.1f} % over {len(scored)} categories "
                     f"({int(scored['n'].sum())} entries). Best: " + ", ".join(
                         f"{r.category} {r.accuracy:.0f} % (n = {r.n}, 95 % CI {r.ci_low:.0f}-{r.ci_high:.0f} %)"
                         for r in best.itertuples()) + ".")
        if zero:
            lines.append(f"0 % on {len(zero)} categories: {', '.join(zero)}.")
        if model in failures.index.get_level_values("model"):
            modes = failures.xs(model, level="model").sum().drop("correct", errors="ignore")
            if modes.sum():
                top = modes.sort_values(ascending=False)
                lines.append("Failures by kind: " + ", ".join(f"{k} {int(v)}" for k, v in top.items() if v) + ".")
    return "\n\n".join(lines)
