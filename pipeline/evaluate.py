"""evaluate: score the candidate and the task's baselines on the same test split.

The task predicts and scores (`task.evaluate`): for text classification the majority
class, TF-IDF + logistic regression and "before fine-tuning" (the frozen base encoder
with a trained linear head); for token classification the most frequent tag per word
and the frozen encoder. A fine-tuned model that does not beat them has not earned its
compute. This step writes what the task found, each file atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.tasks.base import require_candidate_labels
from tuneops.config import EvaluateConfig, ModelConfig
from tuneops.paths import atomic_file, atomic_write_text

if TYPE_CHECKING:
    from pipeline.tasks.base import Task

METRIC_DIGITS = 6  # reports/metrics.json and MLflow: rounded once, here


@dataclass
class EvaluationResult:
    metrics: dict[str, Any]  # the content of reports/metrics.json
    per_class: dict[str, dict[str, float]]
    metrics_path: Path
    report_path: Path
    confusion_matrix_path: Path
    predictions_path: Path

    @classmethod
    def in_reports(
        cls, metrics: dict[str, Any], per_class: dict[str, Any], reports_dir: Path
    ) -> EvaluationResult:
        """A result whose files go to the standard names in `reports_dir` (as dvc.yaml says)."""
        reports_dir.mkdir(parents=True, exist_ok=True)
        return cls(
            metrics=metrics,
            per_class=per_class,
            metrics_path=reports_dir / "metrics.json",
            report_path=reports_dir / "classification_report.json",
            confusion_matrix_path=reports_dir / "confusion_matrix.png",
            predictions_path=reports_dir / "test_predictions.parquet",
        )

    def flat_metrics(self) -> dict[str, float]:
        """MLflow names: test_macro_f1, tfidf.test_macro_f1, ... (as `dvc metrics show`)."""
        return {k: v for k, v in self._flat().items() if not isinstance(v, str)}

    def flat_tags(self) -> dict[str, str]:
        """The text entries (before_finetuning.features: which probe it is), as MLflow tags."""
        return {k: v for k, v in self._flat().items() if isinstance(v, str)}

    def _flat(self) -> dict[str, Any]:
        flat = {k: v for k, v in self.metrics.items() if not isinstance(v, dict)}
        for name, baseline in self.metrics.items():
            if isinstance(baseline, dict):
                flat |= {f"{name}.{k}": v for k, v in baseline.items()}
        return flat


def rounded(metrics: dict[str, Any]) -> dict[str, Any]:
    """Every float (baselines' too) to METRIC_DIGITS places; counts stay as they are."""
    return {
        k: rounded(v)
        if isinstance(v, dict)
        else round(v, METRIC_DIGITS)
        if isinstance(v, float)
        else v
        for k, v in metrics.items()
    }


def evaluate(
    task: Task,
    cfg: EvaluateConfig,
    base: ModelConfig,
    max_length: int,
    seed: int,
    prepared_dir: Path,
    candidate_dir: Path,
    reports_dir: Path,
) -> EvaluationResult:
    """Write reports/metrics.json, classification_report.json, confusion_matrix.png,
    test_predictions.parquet and the task's extra reports."""
    require_candidate_labels(candidate_dir, prepared_dir)
    found = task.evaluate(cfg, base, max_length, seed, prepared_dir, candidate_dir)
    metrics = rounded(found.metrics)
    result = EvaluationResult.in_reports(metrics, found.per_class, reports_dir)
    atomic_write_text(result.report_path, json.dumps(found.per_class, indent=2) + "\n")
    for name, report in found.reports.items():
        atomic_write_text(reports_dir / f"{name}.json", json.dumps(report, indent=2) + "\n")
    if found.plot is not None:
        found.plot(result.confusion_matrix_path)
    with atomic_file(result.predictions_path) as tmp:
        found.predictions.to_parquet(tmp, index=False)
    atomic_write_text(result.metrics_path, json.dumps(metrics, indent=2) + "\n")
    return result
