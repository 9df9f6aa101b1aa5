"""What the training notebooks (stages 04-06) show: a trained model's curves (loss, learning rate, reward).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def plot_curves(curves: pd.DataFrame | str | Path, title: str = ""):
    """One panel per logged curve: loss (and eval loss), learning rate, grad norm, DPO reward margin and
    accuracy, GRPO mean reward with its spread."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if not isinstance(curves, pd.DataFrame):
        curves = pd.read_csv(curves)
    panels = [c for c in ("loss", "learning_rate", "grad_norm", "rewards/margins", "rewards/accuracies", "reward")
              if c in curves and curves[c].notna().any()]
    columns = min(max(len(panels), 1), 3)  # rows of three: a notebook shows the figure at its page's width
    rows = -(-max(len(panels), 1) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3 * rows), squeeze=False)
    for ax in axes.flat[max(len(panels), 1):]:
        fig.delaxes(ax)  # fig.axes: the panels only
    steps = int(curves["step"].nunique()) if "step" in curves else 0
    for ax, column in zip(axes.flat, panels):
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
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if data["step"].nunique() == 1:  # a one-step run: one tick, not fractions around it
            ax.set_xticks(data["step"].unique())
    fig.suptitle(title or f"{steps} logged steps")
    fig.tight_layout()
    plt.close(fig)  # the caller shows the returned figure once
    return fig
