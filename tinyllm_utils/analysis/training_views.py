"""What the training notebooks (stages 04-06) show: a trained model's curves (loss, learning rate, reward).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd


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
