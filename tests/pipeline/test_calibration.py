"""Calibration (issue 19): ECE over equal-mass bins, the Brier score, a temperature fitted on
the validation split, recorded per model file in bundle.json and applied by the runtime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax

from pipeline.calibration import (
    brier_score,
    calibration_figures,
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability_bins,
)
from pipeline.export import ExportResult
from pipeline.plots import reliability_curves, reliability_figure
from tests.conftest import Trained, store_client
from tuneops.runtime import OnnxClassifier
from tuneops.tracking import MlflowTracker


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


def test_reliability_bins_are_the_bins_ece_averages_over() -> None:
    probabilities = np.array([[0.6, 0.4], [0.3, 0.7], [0.8, 0.2], [0.1, 0.9]])
    labels = np.array([0, 0, 0, 1])
    assert reliability_bins(probabilities, labels, bins=2) == [
        {"confidence": pytest.approx(0.65), "accuracy": 0.5, "rows": 2},
        {"confidence": pytest.approx(0.85), "accuracy": 1.0, "rows": 2},
    ]
    rng = np.random.default_rng(1)
    many = softmax(rng.normal(0, 2, size=(1000, 4)), axis=1)
    drawn = rng.integers(0, 4, size=1000)
    found = reliability_bins(many, drawn)
    assert [b["rows"] for b in found] == [67] * 10 + [66] * 5  # 15 equal-mass bins
    gap = sum(b["rows"] * abs(b["accuracy"] - b["confidence"]) for b in found) / 1000
    assert gap == pytest.approx(expected_calibration_error(many, drawn))


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


def _drawn(seed: int, temperature: float, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits / temperature): calibrated at that T."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(rows, 3))
    return logits, np.array([rng.choice(3, p=p) for p in softmax(logits / temperature, axis=1)])


def test_a_fitted_temperature_that_does_not_lower_validation_ece_is_not_served() -> None:
    # Labels drawn at T = 1: the model is calibrated, the NLL fit lands near 1 by noise, and
    # for this draw that fit makes validation ECE worse. The model is then served unscaled.
    validation, test = _drawn(2, 1.0, 2000), _drawn(12, 1.0, 2000)
    fitted = fit_temperature(*validation)
    assert fitted != 1.0
    ece = [
        expected_calibration_error(softmax(validation[0] / t, axis=1), validation[1])
        for t in (1.0, fitted)
    ]
    assert ece[1] > ece[0]  # the premise of this case
    figures = calibration_figures(validation, test)
    assert figures["temperature"] == 1.0
    assert figures["temperature_kept"] is False
    assert figures["fitted_temperature"] == pytest.approx(fitted, abs=1e-6)
    assert (figures["validation_ece"], figures["validation_ece_fitted"]) == tuple(ece)
    assert figures["test_ece_calibrated"] == figures["test_ece"]  # nothing was scaled
    # An over-confident model (labels drawn at T = 2.5) keeps its fit, which lowers ECE.
    over = calibration_figures(_drawn(0, 2.5, 2000), _drawn(1, 2.5, 2000))
    assert over["temperature_kept"] is True
    assert over["temperature"] == over["fitted_temperature"] == pytest.approx(2.5, abs=0.2)
    assert over["validation_ece_fitted"] < over["validation_ece"]
    assert over["test_ece_calibrated"] < over["test_ece"]


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


def _own_bins(bundle: OnnxClassifier, test: pd.DataFrame, t: float) -> dict[str, list[Any]]:
    """The bins from the bundle's own test logits, before and after temperature t."""
    ids = {label: i for i, label in enumerate(bundle.labels)}
    y = test["label"].map(ids).to_numpy()
    logits = bundle.logits(test["text"].tolist(), batch_size=64)
    return {
        "uncalibrated": reliability_bins(softmax(logits, axis=1), y),
        "calibrated": reliability_bins(softmax(logits / t, axis=1), y),
    }


def test_the_bundle_shows_the_default_models_reliability_before_and_after_scaling(
    trained: Trained, exported: ExportResult
) -> None:
    from PIL import Image

    meta = json.loads((exported.export_dir / "bundle.json").read_text())
    default = meta["default_model"]
    figures = meta["models"][default]["calibration"]
    bundle = OnnxClassifier(exported.export_dir, model="default")
    test = pd.read_parquet(trained.paths.data_prepared / "test.parquet")
    own = _own_bins(bundle, test, figures["temperature"])
    for name in ("uncalibrated", "calibrated"):
        assert [b["rows"] for b in figures["reliability"][name]] == [b["rows"] for b in own[name]]
        for recorded, mine in zip(figures["reliability"][name], own[name], strict=True):
            assert recorded["accuracy"] == mine["accuracy"]
            assert recorded["confidence"] == pytest.approx(mine["confidence"], abs=1e-6)
    # Scaling moves the points: two curves, not one drawn twice.
    curves = reliability_curves(figures)
    assert curves["uncalibrated"][0] != pytest.approx(curves["calibrated"][0], abs=1e-3)
    assert curves["uncalibrated"][1] == [b["accuracy"] for b in own["uncalibrated"]]
    fig = reliability_figure(figures, "t")
    drawn = [(list(line.get_xdata()), list(line.get_ydata())) for line in fig.axes[0].lines]
    assert drawn == [([0, 1], [0, 1]), curves["uncalibrated"], curves["calibrated"]]
    png = exported.export_dir / "reliability_diagram.png"
    with Image.open(png) as image:
        assert image.format == "PNG"
        image.verify()
    card = (exported.export_dir / "README.md").read_text()
    assert "![Reliability diagram of the " + default + " model](reliability_diagram.png)" in card


def test_the_export_stage_logs_calibration_metrics_and_the_diagram_and_compare_shows_them(
    trained: Trained, tmp_path: Path
) -> None:
    from tuneops import stages
    from tuneops.compare import compare

    root = tmp_path / "project"
    shutil.copytree(trained.paths.root, root, ignore=shutil.ignore_patterns("export", "mlruns"))
    ctx = stages.load_context(root)
    artifacts = (tmp_path / "artifacts").as_uri()
    tracker = MlflowTracker.start(ctx.tracking_uri, "tests", artifacts, "run", {})
    summary_path = ctx.paths.candidate / "training_summary.json"
    summary = json.loads(summary_path.read_text())
    summary_path.write_text(json.dumps(summary | {"mlflow_run_id": tracker.run_id}))
    (ctx.paths.reports / "reliability_diagram.png").unlink(missing_ok=True)

    result = stages.step_export(ctx)
    meta = json.loads((result.export_dir / "bundle.json").read_text())
    client = store_client(ctx.tracking_uri)
    metrics = client.get_run(tracker.run_id).data.metrics
    names = [name for name, entry in meta["models"].items() if "calibration" in entry]
    assert "fp32" in names
    for name in names:
        c = meta["models"][name]["calibration"]
        assert metrics[f"export.{name}_calibration_temperature"] == c["temperature"]
        assert metrics[f"export.{name}_test_ece"] == c["test_ece"]
        assert metrics[f"export.{name}_test_ece_calibrated"] == c["test_ece_calibrated"]
        assert metrics[f"export.{name}_test_brier"] == c["test_brier"]
        assert metrics[f"export.{name}_test_brier_calibrated"] == c["test_brier_calibrated"]
    for name in ("int8", "int8_s8"):  # 7-bit weights or not, as bundle.json says (issue 20)
        reduced = meta["models"][name]["reduce_range"]
        assert metrics[f"export.{name}_reduce_range"] == float(reduced)
    copied = ctx.paths.reports / "reliability_diagram.png"
    assert copied.read_bytes() == (result.export_dir / "reliability_diagram.png").read_bytes()
    logged = [f.path for f in client.list_artifacts(tracker.run_id, "reports")]
    assert "reports/reliability_diagram.png" in logged

    # `tuneops compare` of this run's version and one whose run has no calibration.
    other = MlflowTracker.start(ctx.tracking_uri, "tests", artifacts, "older", {})
    other.log_metrics({"test_macro_f1": 0.5})
    client.create_registered_model("calibrated")
    for run_id in (tracker.run_id, other.run_id):
        client.create_model_version("calibrated", f"runs:/{run_id}/model", run_id)
    rows = {
        line.split()[0]: line.split()[1:]
        for line in compare(ctx.tracking_uri, "calibrated", "1", "2").splitlines()[1:]
    }
    fp32 = meta["models"]["fp32"]["calibration"]
    assert rows["export.fp32_test_ece_calibrated"] == [
        f"{fp32['test_ece_calibrated']:.4f}",
        "-",
        "*",
    ]
    assert rows["export.fp32_calibration_temperature"][0] == f"{fp32['temperature']:.4f}"


def test_reports_lose_a_stale_reliability_diagram_when_the_bundle_has_none(tmp_path: Path) -> None:
    from pipeline.export import RELIABILITY_FILE, _copy_diagram

    bundle, reports = tmp_path / "bundle", tmp_path / "reports"
    bundle.mkdir()
    reports.mkdir()
    (reports / RELIABILITY_FILE).write_bytes(b"an older run's diagram")
    assert _copy_diagram(bundle, reports, written=False) is None  # a token task's bundle
    assert not (reports / RELIABILITY_FILE).exists()
    (bundle / RELIABILITY_FILE).write_bytes(b"this bundle's")
    assert _copy_diagram(bundle, reports, written=True) == reports / RELIABILITY_FILE
    assert (reports / RELIABILITY_FILE).read_bytes() == b"this bundle's"
