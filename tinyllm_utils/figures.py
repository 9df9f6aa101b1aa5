"""Tables and figures from saved results only (metrics.json, predictions/*.jsonl), one function per figure.

    python -m tinyllm_utils.figures --run outputs/quick --out paper_figures

rebuilds every figure and its CSV from a run folder; notebooks call the same functions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; a notebook still shows the returned Figure inline
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from tinyllm_utils.data import LIVE_CATEGORIES, MULTI_TURN_CATEGORIES, NON_LIVE_CATEGORIES  # noqa: E402
from tinyllm_utils.results import read_jsonl  # noqa: E402
from tinyllm_utils.scoring import FAILURE_MODES, failure_mode  # noqa: E402

GROUP = {**{c: "non-live" for c in NON_LIVE_CATEGORIES}, **{c: "live" for c in LIVE_CATEGORIES},
         **{c: "multi-turn" for c in MULTI_TURN_CATEGORIES}}


def _model_dirs(stage_dir: Path) -> list[Path]:
    return sorted(p.parent for p in Path(stage_dir).glob("*/metrics.json"))


def metrics_table(stage_dir: str | Path) -> pd.DataFrame:
    """Long format: one row per (model, category) with accuracy %, n and the 95 % interval."""
    rows = []
    for model_dir in _model_dirs(stage_dir):
        metrics = json.loads((model_dir / "metrics.json").read_text())
        for category, m in metrics["categories"].items():
            low, high = m["ci95"] or (None, None)
            rows.append({"model": metrics.get("model", model_dir.name), "category": category,
                         "group": GROUP.get(category, "other"),
                         "accuracy": None if m["accuracy"] is None else 100 * m["accuracy"], "n": m["n"],
                         "category_size": m["category_size"], "ci_low": None if low is None else 100 * low,
                         "ci_high": None if high is None else 100 * high})
    return pd.DataFrame(rows)


def overall_table(stage_dir: str | Path) -> pd.DataFrame:
    rows = []
    for model_dir in _model_dirs(stage_dir):
        metrics = json.loads((model_dir / "metrics.json").read_text())
        for version, scores in metrics["overall"].items():
            for name, value in scores.items():
                rows.append({"model": metrics.get("model", model_dir.name), "bfcl": version, "score": name,
                             "value": None if value is None else 100 * value})
    return pd.DataFrame(rows)


def predictions_table(stage_dir: str | Path) -> pd.DataFrame:
    """Every saved prediction with its failure mode (correct, no call, unparseable, wrong function, ...)."""
    rows = []
    for model_dir in _model_dirs(stage_dir):
        for path in sorted((model_dir / "predictions").glob("*.jsonl")):
            for row in read_jsonl(path):
                rows.append({"model": model_dir.name, "category": row["category"], "id": row["id"],
                             "valid": row["valid"], "error_type": row.get("error_type"),
                             "failure_mode": failure_mode(row)})
    return pd.DataFrame(rows)


def failure_mode_table(stage_dir: str | Path) -> pd.DataFrame:
    """Counts of each failure mode per model and category."""
    df = predictions_table(stage_dir)
    table = df.groupby(["model", "category", "failure_mode"]).size().unstack(fill_value=0)
    return table.reindex(columns=[m for m in FAILURE_MODES], fill_value=0)


def plot_category_accuracy(metrics: pd.DataFrame):
    """Bar chart of accuracy per category (one colour per model) with 95 % Wilson intervals."""
    fig, ax = plt.subplots(figsize=(11, 4.5))
    data = metrics.dropna(subset=["accuracy"])
    sns.barplot(data=data, x="category", y="accuracy", hue="model", ax=ax, errorbar=None)
    categories = list(dict.fromkeys(data["category"]))
    models = list(dict.fromkeys(data["model"]))
    width = 0.8 / max(len(models), 1)
    for m_index, model in enumerate(models):
        sub = data[data["model"] == model].set_index("category").reindex(categories)
        xs = [i - 0.4 + width * (m_index + 0.5) for i in range(len(categories))]
        ax.errorbar(xs, sub["accuracy"], yerr=[sub["accuracy"] - sub["ci_low"], sub["ci_high"] - sub["accuracy"]],
                    fmt="none", ecolor="black", elinewidth=1, capsize=2)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_xlabel("")
    ax.set_title("BFCL accuracy per category (bars: 95 % Wilson interval; n in the table)")
    ax.tick_params(axis="x", rotation=60)
    fig.tight_layout()
    return fig


def plot_failure_modes(failures: pd.DataFrame):
    """Stacked bars: share of each failure mode per category."""
    shares = failures.div(failures.sum(axis=1), axis=0) * 100
    shares.index = [f"{m} · {c}" if len(failures.index.get_level_values(0).unique()) > 1 else c
                    for m, c in shares.index]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    shares.plot(kind="bar", stacked=True, ax=ax, colormap="tab10", width=0.85)
    ax.set_ylabel("share of entries (%)")
    ax.set_title("What the model did, per category")
    ax.legend(bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.tick_params(axis="x", rotation=60)
    fig.tight_layout()
    return fig


def make_figures(run_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Regenerate every figure (PNG) and its table (CSV) of a run from saved files alone."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    baseline = Path(run_dir) / "01_baseline_evaluation"
    if _model_dirs(baseline):
        metrics = metrics_table(baseline)
        failures = failure_mode_table(baseline)
        for name, table in [("baseline_accuracy", metrics), ("baseline_overall", overall_table(baseline)),
                            ("baseline_failure_modes", failures.reset_index())]:
            table.to_csv(out_dir / f"{name}.csv", index=False)
            written.append(out_dir / f"{name}.csv")
        for name, fig in [("baseline_accuracy", plot_category_accuracy(metrics)),
                          ("baseline_failure_modes", plot_failure_modes(failures))]:
            fig.savefig(out_dir / f"{name}.png", dpi=150)
            plt.close(fig)
            written.append(out_dir / f"{name}.png")
    if not written:
        raise SystemExit(f"no saved metrics under {run_dir}; run the pipeline first")
    return written


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="outputs/quick", help="a run folder, outputs/<run_id>")
    parser.add_argument("--out", default="paper_figures")
    args = parser.parse_args(argv)
    for path in make_figures(args.run, args.out):
        print(path)


if __name__ == "__main__":
    main()
