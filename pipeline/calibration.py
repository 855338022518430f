"""Calibration of a classifier's probabilities: how far a served `score` is from the share
of answers that are right, and a temperature that brings it closer (issue 19).

- Expected calibration error (ECE) over ECE_BINS equal-mass bins: the rows sorted by their
  top probability and cut into bins of (nearly) equal row counts; ECE is the row-weighted
  mean over bins of |accuracy - mean top probability|. Equal-mass bins, not equal-width:
  a fine-tuned model's confidences crowd near 1, where equal-width bins leave most bins
  empty and one bin holding nearly every row.
- Brier score: the mean over rows of the squared distance between the probability vector
  and the one-hot label (0 is perfect; 2 is the worst).
- Temperature scaling (Guo et al., 2017): probabilities softmax(logits / T) with the one
  T > 0 that minimises the negative log-likelihood on the validation split, never on test.
  It divides every logit by the same number, so no prediction changes, only its score.
  The fitted T is kept only where it lowers the validation split's ECE; otherwise the
  model is served unscaled (T = 1) and bundle.json says why. Minimising NLL always lowers
  validation NLL (T = 1 is among the candidates), but a T fitted near 1 on a model that is
  already calibrated moves ECE by noise alone, and made test ECE worse on two bundled sets.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

ECE_BINS = 15
# log T is searched in [-LOG_T_BOUND, LOG_T_BOUND]: T from about 0.05 to 20.
LOG_T_BOUND = 3.0


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE over `bins` equal-mass bins of the top probability (see the module doc).

    Written by hand: scikit-learn's calibration_curve is for binary problems only, and
    the libraries that have a multi-class ECE (torchmetrics) bin by equal width."""
    if len(labels) == 0:
        return 0.0
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    order = np.argsort(confidence, kind="stable")
    total = sum(
        len(part) * abs(correct[part].mean() - confidence[part].mean())
        for part in np.array_split(order, min(bins, len(order)))
    )
    return float(total / len(labels))


def reliability_bins(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> list[dict[str, float | int]]:
    """The equal-mass bins expected_calibration_error averages over, each as its mean top
    probability (`confidence`), the share of its rows that are right (`accuracy`) and its
    row count: the points of a reliability diagram (pipeline.plots)."""
    if len(labels) == 0:
        return []
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    order = np.argsort(confidence, kind="stable")
    return [
        {
            "confidence": float(confidence[part].mean()),
            "accuracy": float(correct[part].mean()),
            "rows": len(part),
        }
        for part in np.array_split(order, min(bins, len(order)))
    ]


def brier_score(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score: mean squared distance to the one-hot label. (scikit-learn's
    brier_score_loss gives half of it for two classes: it scores the positive class only.)"""
    onehot = np.eye(probabilities.shape[1])[labels]
    return float(((probabilities - onehot) ** 2).sum(axis=1).mean()) if len(labels) else 0.0


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logits / temperature)."""
    scaled = log_softmax(logits / temperature, axis=1)
    return float(-scaled[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising nll on these (validation) rows, searched on log T."""
    found = minimize_scalar(
        lambda log_t: nll(logits, labels, float(np.exp(log_t))),
        bounds=(-LOG_T_BOUND, LOG_T_BOUND),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(np.exp(found.x))


def calibration_figures(
    validation: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]
) -> dict[str, Any]:
    """The temperature fitted on `validation` (logits, label ids), the one served (the
    fitted one where it lowers validation ECE, else 1), and the test split's ECE and Brier
    score before and after the served one, with the reliability diagram's bins before
    (`uncalibrated`) and after (`calibrated`) it, for bundle.json."""
    fitted = fit_temperature(*validation)
    validation_ece = expected_calibration_error(softmax(validation[0], axis=1), validation[1])
    fitted_ece = expected_calibration_error(softmax(validation[0] / fitted, axis=1), validation[1])
    temperature = fitted if fitted_ece < validation_ece else 1.0
    logits, labels = test
    before, after = softmax(logits, axis=1), softmax(logits / temperature, axis=1)
    return {
        "temperature": round(temperature, 6),  # the one served
        "fitted_temperature": round(fitted, 6),
        "temperature_kept": temperature == fitted,
        "validation_rows": len(validation[1]),
        "validation_ece": validation_ece,
        "validation_ece_fitted": fitted_ece,
        "test_ece": expected_calibration_error(before, labels),
        "test_ece_calibrated": expected_calibration_error(after, labels),
        "test_brier": brier_score(before, labels),
        "test_brier_calibrated": brier_score(after, labels),
        "ece_bins": ECE_BINS,
        "reliability": {
            "uncalibrated": reliability_bins(before, labels),
            "calibrated": reliability_bins(after, labels),
        },
    }
