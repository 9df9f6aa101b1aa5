"""TODO docstring."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from tinyllm_utils.analysis import runs
from tinyllm_utils.analysis.runs import GROUP
from tinyllm_utils.analysis.stats import mark_pareto
from tinyllm_utils.backends.base import prompt_tokenizer  # noqa: F401  (re-exported for the notebook)
from tinyllm_utils.bfcl.scoring import FAILURE_MODES
from tinyllm_utils.data.pairs import KINDS


def plot_curves(curves: pd.DataFrame | str | Path, title: str = ""):
    """One panel per logged curve: loss (and eval loss), learning rate, grad norm, DPO reward margin and
    accuracy, GRPO mean reward with its spread."""
    import matplotlib.pyplot as plt

    if not isinstance(curves, pd.DataFrame):
        curves = pd.read_csv(curves)
    panels = [c for c in ("loss", "learning_rate", "grad_norm", "rewards/margins", "rewards/accuracies", "reward")
              if c in curves and curves[c].notna().any()]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(3.6 * max(len(panels), 1), 3), squeeze=False)
    for ax, column in zip(axes[0], panels):
        data = curves[["step", column]].dropna()
        ax.plot(data["step"], data[column], marker=".", label=column)
        if column == "loss" and "eval_loss" in curves and curves["eval_loss"].notna().any():
            ev = curves[["step", "eval_loss"]].dropna()
            ax.plot(ev["step"], ev["eval_loss"], marker="o", label="eval_loss")
            ax.legend()
        if column == "reward" and "reward_std" in curves:
            spread = curves[["step", "reward", "reward_std"]].dropna()
            ax.fill_between(spread["step"], spread["reward"] - spread["reward_std"],
                            spread["reward"] + spread["reward_std"], alpha=0.2)
        ax.set_title(column)
        ax.set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)  # the caller shows the returned figure once
    return fig


def plot_lengths(splits: dict[str, list[dict]]):
    import matplotlib.pyplot as plt
    import seaborn as sns

    frame = pd.DataFrame([{"split": s, "category": r["category"], "prompt tokens": r["prompt_tokens"]}
                          for s, rows in splits.items() for r in rows])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.histplot(frame, x="prompt tokens", hue="split", multiple="stack", bins=30, ax=ax)
    ax.set_title("Prompt length (BFCL system prompt + functions + question), model tokens")
    fig.tight_layout()
    plt.close(fig)  # the caller shows the returned figure once
    return fig


def plot_pair_stats(stats: pd.DataFrame):
    """Stacked bars: pairs per rejection kind, split by category."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    counts = stats.pivot_table(index="kind", columns="category", values="pairs", aggfunc="sum", fill_value=0)
    counts = counts.reindex([k for k in KINDS if k in counts.index])
    fig, ax = plt.subplots(figsize=(9, 4))
    counts.plot(kind="bar", stacked=True, ax=ax, colormap="tab10", width=0.7)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("")
    ax.set_ylabel("pairs")
    ax.set_title("Preference pairs per rejection kind (every pair verified by bfcl's checker)")
    ax.legend(title="category", bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    plt.close(fig)  # the caller shows the returned figure once
    return fig
BASELINE_STAGE = "01_baseline_evaluation"


# ------------------------------------------------------------------------------- stage 01 (notebook 01's tables)

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
    n = data["n"]
    ax.set_title(f"BFCL accuracy per category, {n.min()}-{n.max()} entries each "
                 f"({int(n.sum())} in all; bars: 95 % Wilson interval)" if len(n) else "BFCL accuracy per category")
    ax.tick_params(axis="x", rotation=60)
    fig.tight_layout()
    return fig


def plot_failure_modes(failures: pd.DataFrame):
    """Stacked bars: share of each failure mode per category."""
    shares = failures.div(failures.sum(axis=1), axis=0) * 100
    several = len(failures.index.get_level_values(0).unique()) > 1
    shares.index = [f"{m} · {c} (n={int(failures.loc[(m, c)].sum())})" if several
                    else f"{c} (n={int(failures.loc[(m, c)].sum())})" for m, c in shares.index]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    shares.plot(kind="bar", stacked=True, ax=ax, colormap="tab10", width=0.85)
    ax.set_ylabel("share of entries (%)")
    ax.set_title(f"What the model did, per category ({int(failures.values.sum())} selected entries)")
    ax.legend(bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.tick_params(axis="x", rotation=60)
    fig.tight_layout()
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


def plot_edge_pareto(table: pd.DataFrame, out_stem: str | Path | None = None):
    """Accuracy vs decode latency (ms/token), marker area = peak RSS, Pareto front marked; saves
    `<out_stem>.png` and `.pdf` when given. Returns the Figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    missing = [c for c in ("accuracy", "decode_ms_per_token", "peak_rss_mb") if c not in table]
    table = table.reindex(columns=[*table.columns, *missing])  # partial results: an empty plot, not an error
    data = table.dropna(subset=["accuracy", "decode_ms_per_token"]).copy()
    data["accuracy %"] = 100 * data["accuracy"]
    if "pareto" not in data:
        data = mark_pareto(data)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.scatterplot(data=data, x="decode_ms_per_token", y="accuracy %", hue="method", style="quantization",
                    size="peak_rss_mb", sizes=(40, 400), ax=ax, alpha=0.8)
    front = data[data["pareto"]].sort_values("decode_ms_per_token")
    ax.plot(front["decode_ms_per_token"], front["accuracy %"], "k--", lw=1, label="Pareto front")
    ax.scatter(front["decode_ms_per_token"], front["accuracy %"], s=160, facecolors="none", edgecolors="k")
    for _, row in data.iterrows():
        ax.annotate(row["quantization"], (row["decode_ms_per_token"], row["accuracy %"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("decode latency (ms / token, lower is better)")
    ax.set_ylabel("BFCL accuracy, categories that expect a call (%)")
    n = sorted({int(v) for v in data["n"].dropna()}) if "n" in data else []
    threads = sorted({int(v) for v in data["threads"].dropna()}) if "threads" in data else []
    ax.set_title("Quantized variants: BFCL accuracy vs llama.cpp decode latency"
                 + (f" at {'/'.join(map(str, threads))} threads" if threads else "")
                 + (f"\n(n = {'/'.join(map(str, n))} entries per variant; marker area = peak RSS)" if n else ""),
                 fontsize=9)
    ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=7)
    fig.tight_layout()
    if out_stem is not None:
        from tinyllm_utils.core.results import save_figure

        out_stem = Path(out_stem)
        out_stem.parent.mkdir(parents=True, exist_ok=True)
        save_figure(fig, out_stem.parent, out_stem.name)
    plt.close(fig)
    return fig
