"""Pictures of results: the confusion matrix (training curves live with the trainer)."""

from __future__ import annotations

from pathlib import Path

import torch


def plot_confusion(cm: torch.Tensor, classes: list[str], path: Path, title: str = "") -> None:
    """Row-normalised confusion matrix with counts, true class down, predicted across."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(classes)
    rates = (cm.float() / cm.sum(1, keepdim=True).clamp(min=1)).numpy()
    size = max(5, 0.5 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if k <= 30:
        ax.set_xticks(range(k), classes, rotation=45, ha="right")
        ax.set_yticks(range(k), classes)
        for i in range(k):
            for j in range(k):
                color = "white" if rates[i, j] > 0.5 else "black"
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
