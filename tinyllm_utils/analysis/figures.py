"""The report's figures, one function per figure, each drawn from the analysis' tables and returning a Figure:
the category heatmap, the method ablation, multi-turn accuracy vs parameters, accuracy vs training compute, error
kinds and training curves. The analysis stage (stages/analysis.py) saves them; the plots a stage's own notebook
shows are in the *_views modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from tinyllm_utils.analysis import stats
from tinyllm_utils.analysis.reference import TABLE_IV, TABLE_IV_LABELS, reference_table_iv
from tinyllm_utils.bfcl.data import ALL_CATEGORIES, expects_call
from tinyllm_utils.bfcl.scoring import FAILURE_MODES

# pandas, matplotlib, torch are imported where used: a profiling process should hold only llama.cpp.
if TYPE_CHECKING:
    import pandas as pd


def table_iv_long(results: pd.DataFrame) -> pd.DataFrame:
    """Our Table IV values in long form with their intervals: label, column, value, ci_low, ci_high, n."""
    rows = []
    for _, r in results.iterrows():
        for column, (formula, component) in TABLE_IV.items():
            if r["scoring"] == formula and r["category"] == component and pd.notna(r["accuracy"]):
                rows.append({"label": r["label"], "method": r["method"], "column": column,
                             "value": r["accuracy"], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "n": r["n"]})
    return pd.DataFrame(rows, columns=["label", "method", "column", "value", "ci_low", "ci_high", "n"])


def _n_span(n: pd.Series) -> str:
    n = n.dropna().astype(int)
    if not len(n):
        return "n = 0"
    return f"n = {n.min()}" if n.min() == n.max() else f"n = {n.min()}-{n.max()}"


def plot_category_heatmap(results: pd.DataFrame):
    """Accuracy (%) per BFCL category (rows) x model/method (columns, the short labels); empty cells were not run."""
    cats = results[results["kind"] == "category"]
    order = [c for c in ALL_CATEGORIES if c in set(cats["category"])]
    pivot = cats.pivot_table(index="category", columns="label", values="accuracy", sort=False).reindex(order)
    n = cats.pivot_table(index="category", columns="label", values="n", sort=False).reindex(order)
    fig, ax = plt.subplots(figsize=(max(6.5, 0.85 * pivot.shape[1] + 4), max(3, 0.36 * len(order) + 2)))
    sns.heatmap(pivot, annot=True, fmt=".0f", vmin=0, vmax=100, cmap="viridis", linewidths=0.5, ax=ax,
                annot_kws={"fontsize": 9}, cbar_kws={"label": "accuracy (%)", "shrink": 0.8})
    ax.set_xlabel("")
    ax.set_ylabel("")
    # the n of each row, where it is one number across the row (it is, within one run's protocol)
    ax.set_yticks(np.arange(len(order)) + 0.5, [
        f"{c} (n={int(row.min())})" if row.notna().any() and row.min() == row.max() else c
        for c, row in n.iterrows()], rotation=0)
    plt.setp(ax.get_xticklabels(), rotation=35, ha="right", rotation_mode="anchor")
    ax.set_title(f"BFCL accuracy (%) per category and model/method\n{pivot.shape[1]} models/methods; "
                 f"{_n_span(cats['n'])} selected entries per cell (blank: not run)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_method_ablation(results: pd.DataFrame):
    """Top: Table IV scores per model/method with 95 % intervals (Wilson; a composite: its categories' Wilson
    intervals combined). Bottom: accuracy on each category that every model/method was evaluated on (trained
    models are evaluated on a subset of stage 01's categories, so they have no composite scores), Wilson
    intervals. Quantized variants (stage 07) have their own figure."""
    long = table_iv_long(results)
    columns = [c for c in TABLE_IV if c in set(long["column"])]
    cats = results[(results["kind"] == "category") & ~results["stage"].astype(str).str.endswith("_edge_profile")]
    labels = list(dict.fromkeys([*long["label"], *cats["label"]]))
    per_label = [set(cats.loc[cats["label"] == label, "category"]) for label in dict.fromkeys(cats["label"])]
    shared = [c for c in ALL_CATEGORIES if per_label and all(c in s for s in per_label)]
    cat_long = cats[cats["category"].isin(shared)].rename(columns={"category": "column", "accuracy": "value"})
    palette = dict(zip(labels, sns.color_palette("tab10", len(labels))))
    panels = [(long, columns, [TABLE_IV_LABELS[c] for c in columns],
               f"Table IV columns on BFCL v4 data ({_n_span(long['n'])} entries per score)"),
              (cat_long, shared, shared,
               f"Categories every method was evaluated on ({_n_span(cat_long['n'])} entries each)")]
    panels = [panel for panel in panels[:1] if panel[1]] + panels[1:]  # a few categories: no Table IV score
    width_of = min(11, max(7, 0.25 * max(len(columns), len(shared)) * len(labels) + 4))
    fig, axes = plt.subplots(len(panels), 1, figsize=(width_of, 3.6 * len(panels) + 0.8), squeeze=False)
    axes = axes[:, 0]
    for ax, (data, cols, ticks, subtitle) in zip(axes, panels):
        present = [label for label in labels if label in set(data["label"])]
        width = 0.8 / max(len(present), 1)
        for i, label in enumerate(present):
            sub = data[data["label"] == label].set_index("column").reindex(cols)
            xs = np.arange(len(cols)) - 0.4 + width * (i + 0.5)
            ax.bar(xs, sub["value"], width, label=label, color=palette[label])
            # clip: an interval can sit a rounding error past the point estimate (a category answered all wrong)
            yerr = np.clip([sub["value"] - sub["ci_low"], sub["ci_high"] - sub["value"]], 0, None)
            ax.errorbar(xs, sub["value"], yerr=yerr, fmt="none", ecolor="black", elinewidth=1, capsize=2)
        ax.set_xticks(range(len(cols)), ticks)
        plt.setp(ax.get_xticklabels(), rotation=20, ha="right", rotation_mode="anchor")
        ax.set_ylim(0, 100)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(subtitle, fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=palette[label]) for label in labels]
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=9, frameon=False)
    fig.suptitle("Method ablation: BFCL accuracy per model/method (bars: 95 % interval)", fontsize=11)
    rows_of_legend = -(-len(labels) // 6)
    fig.tight_layout(rect=(0, 0.02 + 0.03 * rows_of_legend, 1, 1))
    return fig


def plot_multi_turn_vs_params(results: pd.DataFrame, reference: pd.DataFrame | None = None):
    """Multi-turn accuracy vs parameter count: published v3 and v4 rows side by side (marker = version; the two
    versions' multi-turn data differ), the paper's headline, and our evaluations with 95 % intervals."""
    reference = reference_table_iv() if reference is None else reference
    ref = reference.dropna(subset=["multi_turn", "params_b"])
    fig, ax = plt.subplots(figsize=(8.5, 5))
    markers = {"v3": "o", "v4": "s"}
    for version, group in ref.groupby("bfcl"):
        ax.scatter(group["params_b"], group["multi_turn"], marker=markers.get(version, "^"), alpha=0.6, s=40,
                   label=f"published, BFCL {version} ({group['date'].iloc[0]})")
    headline = reference[(reference["label"].str.contains("paper, best", na=False)) & reference["multi_turn"].notna()]
    for _, row in headline.iterrows():
        ax.axhline(row["multi_turn"], color="grey", ls="--", lw=1)
        ax.text(0.26, row["multi_turn"] + 1, f"paper headline {row['multi_turn']:.2f} % (BFCL {row['bfcl']}, 1-3B)",
                fontsize=8, color="grey")
    ax.axvspan(0.2, 1.0, color="orange", alpha=0.08, label="< 1B (paper: near zero)")
    long = table_iv_long(results)
    ours = long[long["column"] == "multi_turn"]
    if len(ours):
        ours = ours.merge(results.drop_duplicates("label")[["label", "params_b"]], on="label").dropna(subset=["params_b"])
    n_text = "ours: none with all four multi-turn categories"
    if len(ours):
        ax.errorbar(ours["params_b"], ours["value"], yerr=np.clip([ours["value"] - ours["ci_low"], ours["ci_high"] - ours["value"]], 0, None),
                    fmt="*", color="crimson", ms=12, capsize=3, label="ours (BFCL v4 data, 95 % interval)")
        for _, row in ours.iterrows():
            ax.annotate(row["label"], (row["params_b"], row["value"]), fontsize=8, xytext=(5, -10),
                        textcoords="offset points")
        n_text = f"ours: {_n_span(ours['n'])} entries"
    ax.set_xscale("log")
    ax.set_xlim(0.2, 10)
    ax.set_ylim(-2, 100)
    ax.set_xlabel("parameters (billions, nominal; log scale)")
    ax.set_ylabel("multi-turn accuracy (%)")
    ax.set_title(f"Multi-turn accuracy vs model size: BFCL v3 and v4 side by side (not comparable data)\n"
                 f"{n_text}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def _score_for(long: pd.DataFrame, labels) -> str | None:
    """The first Table IV column that every given evaluation has (overall v3 when all ran everything)."""
    for column in TABLE_IV:
        if set(labels) <= set(long[long["column"] == column]["label"]):
            return column
    return None


def _call_category_mean(results: pd.DataFrame, labels) -> tuple[str, pd.DataFrame]:
    """(name, rows of label / value / ci_low / ci_high / n): the mean accuracy over the categories that expect a
    call and every given evaluation ran, with its categories' Wilson intervals combined (a run of a few
    categories has no Table IV score)."""
    cats = results[(results["kind"] == "category") & results["label"].isin(set(labels))]
    shared = [c for c in ALL_CATEGORIES if expects_call(c)
              and set(labels) <= set(cats.loc[cats["category"] == c, "label"])]
    rows = []
    for label, group in cats[cats["category"].isin(shared)].groupby("label"):
        samples = {r.category: np.r_[np.ones(int(r.correct)), np.zeros(int(r.n - r.correct))]
                   for r in group.itertuples()}
        weights = {c: 1 / len(shared) for c in shared}
        low, high = stats.composite_accuracy_interval(samples, weights)
        value = sum(w * samples[c].mean() for c, w in weights.items())
        rows.append({"label": label, "value": 100 * value, "ci_low": 100 * low, "ci_high": 100 * high,
                     "n": int(group["n"].sum())})
    name = f"call-category mean ({len(shared)}: {', '.join(shared)})" if len(shared) < 5 else \
        f"mean of {len(shared)} call categories"
    return name, pd.DataFrame(rows, columns=["label", "value", "ci_low", "ci_high", "n"])


def plot_accuracy_vs_compute(results: pd.DataFrame):
    """Accuracy vs training wall time (training.json, summed over the parent stages) per trained model/method:
    a Table IV score every trained model has, else the mean over the call categories they all ran."""
    trained = results.drop_duplicates("label").dropna(subset=["training_seconds_total"])
    long = table_iv_long(results)
    column = _score_for(long, trained["label"])
    scores = long[long["column"] == column]
    if column is None:
        column, scores = _call_category_mean(results, trained["label"])
    data = scores.merge(trained[["label", "training_seconds_total"]], on="label")
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.errorbar(data["training_seconds_total"] / 60, data["value"],
                yerr=np.clip([data["value"] - data["ci_low"], data["ci_high"] - data["value"]], 0, None), fmt="o", capsize=3)
    for _, row in data.iterrows():
        ax.annotate(row["label"], (row["training_seconds_total"] / 60, row["value"]), fontsize=9, xytext=(5, 4),
                    textcoords="offset points")
    ax.set_xlabel("training wall time, including parent stages (minutes)")
    label = TABLE_IV_LABELS.get(column, column)
    ax.set_ylabel(f"{label.split(' (')[0]} (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{label} vs training compute,\n{len(data)} trained models; {_n_span(data['n'])} entries "
                 "(95 % interval)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_error_kinds(entry_table: pd.DataFrame):
    """Share of each failure mode per model/method over all its selected entries."""
    counts = entry_table.groupby(["label", "failure_mode"]).size().unstack(fill_value=0)
    counts = counts.reindex(columns=list(FAILURE_MODES), fill_value=0)
    shares = counts.div(counts.sum(axis=1), axis=0) * 100
    shares.index = [f"{label} (n={int(counts.loc[label].sum())})" for label in shares.index]
    fig, ax = plt.subplots(figsize=(9, max(2.5, 0.45 * len(shares) + 1.5)))
    shares.plot(kind="barh", stacked=True, ax=ax, colormap="tab10", width=0.8)
    ax.set_xlabel("share of selected entries (%)")
    ax.set_ylabel("")
    ax.set_xlim(0, 100)
    ax.set_title(f"What each model/method answered, by BFCL error kind ({int(counts.values.sum())} entries)",
                 fontsize=10)
    ax.legend(bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=9)
    fig.tight_layout()
    return fig


def plot_training_curves(curves: pd.DataFrame):
    """Training (and evaluation) loss per step for each training run found under the run folder, named by the
    methods' short labels."""
    from matplotlib.ticker import MaxNLocator

    from tinyllm_utils.analysis.runs import METHOD_LABELS

    metrics = [m for m in ("loss", "eval_loss", "train_loss") if m in set(curves["metric"])] or \
        sorted(set(curves["metric"]))[:2]
    curves = curves.assign(method=curves["method"].map(lambda m: METHOD_LABELS.get(m, m)))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.8 * len(metrics) + 1, 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        data = curves[curves["metric"] == metric]
        sns.lineplot(data=data, x="step", y="value", hue="method", marker="o", ax=ax)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if data["step"].nunique() == 1:  # one logged step: one tick, not fractions around it
            ax.set_xticks(data["step"].unique())
        steps = data.groupby("training")["step"].nunique()
        ax.set_title(f"{metric} per optimizer step\n({len(steps)} training runs, {_n_span(steps)} logged steps "
                     "each)", fontsize=10)
        ax.set_ylabel(metric)
        ax.legend(fontsize=9, title=None)
    fig.tight_layout()
    return fig
