"""The confusion-matrix PNG every task writes to reports/confusion_matrix.png (DVC plots)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneops.paths import atomic_file


def write_confusion_matrix(
    y_true: Any,
    y_pred: Any,
    labels: list[Any],
    path: Path,
    title: str,
    figsize: tuple[float, float],
    display_labels: list[str] | None = None,
    rotation: int = 45,
    dpi: int = 110,
) -> None:
    """sklearn's confusion matrix of `labels` (in that order), written atomically."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=figsize)
    ConfusionMatrixDisplay.from_predictions(
        y_true,
        y_pred,
        labels=labels,
        display_labels=display_labels,
        ax=ax,
        colorbar=False,
        xticks_rotation=rotation,
    )
    ax.set_title(title)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
