"""The report PNGs: the confusion matrix every task writes to reports/confusion_matrix.png
(DVC plots), and a calibrated classifier's reliability diagram (the export step's)."""

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


CURVES = {"uncalibrated": "before", "calibrated": "after temperature scaling"}


def reliability_curves(calibration: dict[str, Any]) -> dict[str, tuple[list[float], list[float]]]:
    """The reliability diagram's curves from a bundle.json calibration entry: per
    equal-mass bin, (mean confidence, accuracy) before and after temperature scaling."""
    return {
        name: (
            [float(b["confidence"]) for b in calibration["reliability"][name]],
            [float(b["accuracy"]) for b in calibration["reliability"][name]],
        )
        for name in CURVES
    }


def reliability_figure(calibration: dict[str, Any], title: str) -> Any:
    """One axes: the diagonal (perfect calibration), then the two curves of
    `reliability_curves`, each labelled with its test ECE.

    Drawn by hand: sklearn's CalibrationDisplay is for one binary classifier's positive
    class, not a multi-class top probability over equal-mass bins."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    curves = reliability_curves(calibration)
    ece = {
        "uncalibrated": calibration["test_ece"],
        "calibrated": calibration["test_ece_calibrated"],
    }
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    for name, (confidence, accuracy) in curves.items():
        temperature = 1.0 if name == "uncalibrated" else calibration["temperature"]
        ax.plot(
            confidence,
            accuracy,
            marker="o",
            label=f"{CURVES[name]}: T {temperature:.3f}, ECE {ece[name]:.4f}",
        )
    # A fine-tuned model's confidences crowd near 1: show the range the bins cover.
    low = min([0.5, *(v for c in curves.values() for v in (*c[0], *c[1]))])
    ax.set_xlim(max(0.0, low - 0.05), 1.01)
    ax.set_ylim(max(0.0, low - 0.05), 1.02)
    ax.set_xlabel(f"mean top probability ({calibration['ece_bins']} equal-mass bins)")
    ax.set_ylabel("accuracy in the bin")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    return fig


def write_reliability_diagram(
    calibration: dict[str, Any], path: Path, title: str, dpi: int = 110
) -> None:
    """`reliability_figure` as a PNG, written atomically."""
    import matplotlib.pyplot as plt

    fig = reliability_figure(calibration, title)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
