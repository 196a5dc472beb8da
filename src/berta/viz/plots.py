"""Pictures of a run: training curves (`curves.png`) and a classifier's confusion matrix. matplotlib is optional
(`pip install 'berta[plot]'`); without it nothing is drawn and the reason is logged."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _pyplot(what: str) -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display on servers
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: no %s drawn (pip install 'berta[plot]')", what)
        return None
    return plt


def plot_curves(history: list[dict[str, Any]], path: str | Path) -> Path | None:
    """Draw the training (and validation) loss and the learning rate against steps into a PNG.

    Returns None (and logs why) when matplotlib is not installed or nothing was logged.

    Example:
        >>> plot_curves([], "curves.png") is None
        True
    """
    if not history:
        return None
    plt = _pyplot("curves")
    if plt is None:
        return None
    figure, (loss_axis, lr_axis) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    steps = [r["step"] for r in history if "loss" in r]
    loss_axis.plot(steps, [r["loss"] for r in history if "loss" in r], label="train loss")
    validated = [r for r in history if "val_loss" in r]
    if validated:
        loss_axis.plot([r["step"] for r in validated], [r["val_loss"] for r in validated], "o-", label="val loss")
    loss_axis.set_ylabel("loss")
    loss_axis.legend()
    loss_axis.grid(alpha=0.3)
    lr_axis.plot([r["step"] for r in history if "lr" in r], [r["lr"] for r in history if "lr" in r])
    lr_axis.set_ylabel("learning rate")
    lr_axis.set_xlabel("step")
    lr_axis.grid(alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_confusion_matrix(predictions: list[str], labels: list[str], order: list[str], path: str | Path
                          ) -> Path | None:
    """Draw the confusion matrix (rows: true label, columns: prediction, cells: counts) into a PNG.

    Returns None (and logs why) when matplotlib is not installed.

    Example:
        >>> plot_confusion_matrix(["a", "b"], ["a", "a"], ["a", "b"], Path("cm.png"))  # doctest: +SKIP
    """
    from berta.metrics import confusion_matrix

    plt = _pyplot("confusion matrix")
    if plt is None:
        return None
    order, matrix = confusion_matrix(predictions=predictions, references=labels, label_order=order)
    size = max(4.0, 0.5 * len(order) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(order)), [str(x) for x in order], rotation=45, ha="right")
    axis.set_yticks(range(len(order)), [str(x) for x in order])
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    largest = matrix.max() if matrix.size else 0
    for i in range(len(order)):
        for j in range(len(order)):
            color = "white" if matrix[i, j] > largest / 2 else "black"
            axis.text(j, i, str(matrix[i, j]), ha="center", va="center", color=color)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
