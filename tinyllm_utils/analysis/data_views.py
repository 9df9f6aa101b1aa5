"""What the training-data notebooks show: prompt and answer lengths per split (stage 02), pairs per kind (stage 03).
"""

from __future__ import annotations

import pandas as pd

from tinyllm_utils.data.pairs import KINDS


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
