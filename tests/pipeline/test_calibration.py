"""Calibration (issue 19): ECE over equal-mass bins, the Brier score, a temperature fitted on
the validation split, recorded per model file in bundle.json and applied by the runtime."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax

from pipeline.calibration import (
    brier_score,
    expected_calibration_error,
    fit_temperature,
    nll,
)
from pipeline.export import ExportResult
from tests.conftest import Trained
from tuneops.runtime import OnnxClassifier


def test_ece_is_the_row_weighted_gap_over_equal_mass_bins() -> None:
    # Top probabilities 0.6, 0.7 (one right) and 0.8, 0.9 (both right); two bins of two rows:
    # |0.5 - 0.65| and |1.0 - 0.85|, each weighing half.
    probabilities = np.array([[0.6, 0.4], [0.3, 0.7], [0.8, 0.2], [0.1, 0.9]])
    labels = np.array([0, 0, 0, 1])
    assert expected_calibration_error(probabilities, labels, bins=2) == pytest.approx(0.15)
    # Equal mass, not equal width: four rows in four bins are one row each.
    assert expected_calibration_error(probabilities, labels, bins=4) == pytest.approx(
        (0.4 + 0.7 + 0.2 + 0.1) / 4
    )


def test_brier_is_the_squared_distance_to_the_one_hot_label_for_two_classes_too() -> None:
    assert brier_score(np.array([[0.7, 0.3]]), np.array([0])) == pytest.approx(0.18)
    three = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    assert brier_score(three, np.array([0, 2])) == pytest.approx((0.14 + 0.86) / 2)


def test_the_fitted_temperature_is_the_one_the_labels_were_drawn_with() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(20000, 3))
    drawn = softmax(logits / 2.5, axis=1)
    labels = np.array([rng.choice(3, p=p) for p in drawn])
    assert fit_temperature(logits, labels) == pytest.approx(2.5, abs=0.1)
    # Scaling the logits scales the temperature: it is a property of the logits' scale.
    assert fit_temperature(logits * 2, labels) == pytest.approx(
        2 * fit_temperature(logits, labels), rel=1e-3
    )


def test_each_model_file_records_its_validation_fitted_temperature_and_serves_with_it(
    trained: Trained, exported: ExportResult
) -> None:
    meta = json.loads((exported.export_dir / "bundle.json").read_text())
    validation = pd.read_parquet(trained.paths.data_prepared / "validation.parquet")
    test = pd.read_parquet(trained.paths.data_prepared / "test.parquet")
    names = [name for name, entry in meta["models"].items() if "file" in entry]
    assert "fp32" in names
    for name in names:
        figures = meta["models"][name]["calibration"]
        bundle = OnnxClassifier(exported.export_dir, model=name)
        ids = {label: i for i, label in enumerate(bundle.labels)}
        y = validation["label"].map(ids).to_numpy()
        logits = bundle.logits(validation["text"].tolist(), batch_size=64)  # as export reads
        t = figures["temperature"]
        assert bundle.temperature == t
        card = (exported.export_dir / "README.md").read_text()
        assert f"- {name}: temperature {t:.3f} (fitted on {len(validation)} validation" in card
        assert figures["validation_rows"] == len(validation)
        # Fitted on this file's own validation logits (never on test). The tiny model's
        # answers barely depend on the text, so its temperature flattens them (about 20);
        # that the fit finds the NLL minimiser is the synthetic test's above.
        assert t == pytest.approx(fit_temperature(logits, y), rel=1e-3)
        assert nll(logits, y, t) <= nll(logits, y, 1.0)
        assert t != pytest.approx(1.0, abs=0.1)  # else serving with it would not be tested
        # Served probabilities are softmax(logits / T); the predicted label is unchanged.
        texts = test["text"].head(16).tolist()
        raw = bundle.logits(texts)
        served = bundle.predict(texts)
        want = softmax(raw / t, axis=1)
        for prediction, row, raw_row in zip(served, want, raw, strict=True):
            assert [prediction.probabilities[k] for k in bundle.labels] == pytest.approx(
                list(row), abs=1e-6
            )
            assert prediction.label == bundle.labels[int(raw_row.argmax())]
        y_test = test["label"].map(ids).to_numpy()
        test_logits = bundle.logits(test["text"].tolist(), batch_size=64)
        assert figures["test_ece"] == pytest.approx(
            expected_calibration_error(softmax(test_logits, axis=1), y_test)
        )
        assert figures["test_ece_calibrated"] == pytest.approx(
            expected_calibration_error(softmax(test_logits / t, axis=1), y_test)
        )
