"""Pictures of results: a run's training curves and the confusion matrix."""

from __future__ import annotations

from pathlib import Path

import torch

from vitsam.files import replacing


def plot_curves(history: list[dict], path: Path) -> None:
    """Loss and accuracy per epoch, train and evaluated (the validation split when the run
    has one, else the test set), redrawn from the whole history."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in history]
    name = evaluated_on(history)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [r["train_loss"] for r in history], label="train")
    a.plot(ep, [r[f"{name}_loss"] for r in history], label=name)
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    b.plot(ep, [r["train_acc"] for r in history], label="train")
    b.plot(ep, [r[f"{name}_acc"] for r in history], label=name)
    b.set(xlabel="epoch", ylabel="top-1 accuracy", title="accuracy")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with replacing(path, path.with_name(path.stem + ".tmp.png")) as tmp:  # format from suffix
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def evaluated_on(history: list[dict]) -> str:
    """'val' when a run's epochs were evaluated on a validation split, else 'test'."""
    return "val" if history and "val_acc" in history[0] else "test"


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
