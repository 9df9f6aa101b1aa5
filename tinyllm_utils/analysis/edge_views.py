"""What the edge notebook (stage 07) shows, and the analysis draws again: accuracy vs decode latency vs memory.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tinyllm_utils.analysis.stats import mark_pareto


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
    from tinyllm_utils.analysis.runs import METHOD_LABELS

    data["method"] = data["method"].map(lambda m: METHOD_LABELS.get(m, m)) if "method" in data else "?"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.scatterplot(data=data, x="decode_ms_per_token", y="accuracy %", hue="method", style="quantization",
                    size="peak_rss_mb", sizes=(40, 400), ax=ax, alpha=0.8)
    front = data[data["pareto"]].sort_values("decode_ms_per_token")
    ax.plot(front["decode_ms_per_token"], front["accuracy %"], "k--", lw=1, label="Pareto front")
    ax.scatter(front["decode_ms_per_token"], front["accuracy %"], s=160, facecolors="none", edgecolors="k")
    for _, row in data.iterrows():
        ax.annotate(row["quantization"], (row["decode_ms_per_token"], row["accuracy %"]), fontsize=9,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("decode latency (ms / token, lower is better)")
    ax.set_ylabel("BFCL accuracy, categories that expect a call (%)")
    n = sorted({int(v) for v in data["n"].dropna()}) if "n" in data else []
    threads = sorted({int(v) for v in data["threads"].dropna()}) if "threads" in data else []
    ax.set_title("Quantized variants: BFCL accuracy vs llama.cpp decode latency"
                 + (f" at {'/'.join(map(str, threads))} threads" if threads else "")
                 + (f"\n(n = {'/'.join(map(str, n))} entries per variant; marker area = peak RSS)" if n
                    else "\n(n: not recorded in the edge table; marker area = peak RSS)"),
                 fontsize=9)
    ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=8)
    fig.tight_layout()
    if out_stem is not None:
        from tinyllm_utils.core.results import save_figure

        out_stem = Path(out_stem)
        out_stem.parent.mkdir(parents=True, exist_ok=True)
        save_figure(fig, out_stem.parent, out_stem.name)
    plt.close(fig)
    return fig
