"""The task interface: everything that differs between supervised tasks, and nothing else.

A task is one object in `pipeline.tasks.TASKS`. Its fixed facts are plain attributes (as
Optimum's TasksManager keeps them as data); what varies in code is a hook (the five
things HF's run_glue.py and run_ner.py differ in, plus reading, scoring and the gate's
unit). The steps (validate, prepare, train, evaluate, export, register) call these hooks
and never ask which task they run. Heavy libraries are imported inside the hooks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from tuneops.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.validate import CheckResult
    from tuneops.config import (
        DataConfig,
        EvaluateConfig,
        ModelConfig,
        Params,
        PrepareConfig,
        TrainConfig,
        ValidateConfig,
    )


@dataclass
class ValidationInput:
    """What the validate step runs Great Expectations on, as a task read it."""

    frame: pd.DataFrame  # one row per example, plus a "source" column (file:row)
    columns: list[str]  # the columns GX sees
    expectations: list[Any]
    suite_name: str
    labels: tuple[str, ...]
    label_source: str  # "params", "labels.json" or "inferred"
    label_counts: dict[str, int]
    checks: list[CheckResult] = field(default_factory=list)  # hand-written, after GX's
    dropped_rows: list[dict[str, str]] = field(default_factory=list)  # what prepare will drop
    # The user's names of the frame's columns ("text" -> data.text_column): what messages say.
    column_names: dict[str, str] = field(default_factory=dict)
    # (expectation, frame column) -> what was found beyond the examples and the key to change.
    fixes: dict[tuple[str, str], str] = field(default_factory=dict)


@dataclass
class SplitFrame:
    """A task's examples, de-duplicated and each assigned a split (column "split")."""

    frame: pd.DataFrame
    columns: list[str]  # written to each {train,validation,test}.parquet
    label_counts: dict[str, dict[str, int]]
    fingerprint: str
    dropped_duplicates: int
    conflicts: list[dict[str, str]]
    max_stratification_gap: float = 0.0
    dropped_rows: list[dict[str, str]] = field(default_factory=list)  # file:row, reason, label
    manifest: dict[str, Any] = field(default_factory=dict)  # task-specific manifest keys
    # The train split's label audit (pipeline.label_audit.LabelAudit); None: the task has
    # no one label per row to audit (token classification).
    label_audit: Any = None


@dataclass
class Evaluation:
    """A task's test evaluation: unrounded scores, baselines, the per-class report."""

    metrics: dict[str, Any]  # test_* scores, then one dict per baseline
    per_class: dict[str, Any]
    # One row per test example (reports/test_predictions.parquet): "text", the candidate's
    # prediction, and each baseline's in `baseline_column(name)` (the gate bootstraps them).
    predictions: pd.DataFrame
    reports: dict[str, Any] = field(default_factory=dict)  # extra reports/<name>.json
    plot: Callable[[Path], None] | None = None  # writes the confusion matrix PNG


@dataclass(frozen=True)
class Scores:
    """A model file's test figures as bundle.json records them, and its primary metric."""

    figures: dict[str, float]
    primary: float  # the task's primary metric (macro-F1, entity-F1)
    accuracy: float  # accuracy, or token accuracy
    per_class: dict[str, Any] = field(default_factory=dict)  # TestSplit.report's per class
    # The primary metric is one where lower is better (MAE): int8's drop is its rise.
    lower_is_better: bool = False
    label: str = "F1"  # the primary metric's name in the int8 decision's reasons


class TestSplit(Protocol):
    """The current test split, as the gate re-scores bundles on it."""

    labels: list[str]

    @property
    def texts(self) -> list[str]: ...

    def rescore(self, bundle: Any) -> Any: ...

    def report(self, predicted: Any) -> tuple[dict[str, Any], dict[str, Any]]: ...

    def gate_labels(self, per_class: dict[str, Any]) -> list[str]: ...

    def row_counts(self, predicted: Any) -> np.ndarray: ...

    @property
    def strata(self) -> np.ndarray | None:
        """One value per row that the paired bootstrap resamples within (the gold class of
        a single-label row), or None: resample all rows alike (pipeline.bootstrap)."""

    def recorded(self, column: list[Any]) -> Any:
        """A predictions column the evaluate hook wrote (one entry per test row: a label,
        a tag list), in rescore's form: what `report` and `row_counts` take."""

    def agreement(self, predicted: Any, other: Any) -> float:
        """The fraction of prediction units (rows, words) on which two models agree."""

    def subset(self, keep: list[bool]) -> TestSplit:
        """The rows whose `keep` is True (a model re-scored only on its own test rows)."""

    def take(self, predicted: Any, keep: list[bool]) -> Any:
        """`predicted` (rescore's form) for the rows whose `keep` is True."""


class Task(Protocol):
    name: str
    row_unit: str  # what one example is called in messages: "rows", "sentences"
    raw_suffixes: tuple[str, ...]  # the batch files it reads from data/raw/<name>/
    target_column: str  # the prepared splits' gold column
    primary_metric: str  # the metric the gate, baselines and int8 decision compare
    primary_metric_label: str  # its name for people ("macro-F1")
    accuracy_metric: str
    test_metrics: tuple[str, ...]  # what TestSplit.report scores: the keys gate.floors may name
    validation_metrics: tuple[str, ...]  # what compute_metrics returns, without "eval_"
    baselines: tuple[str, ...]
    reproduce_metrics: tuple[str, ...]  # MLflow metrics `tuneops reproduce` compares
    peft_task_type: str  # peft.TaskType member name
    logits_axes: tuple[str, ...]  # the ONNX logits output's dynamic axes, in order
    cross_batch_conflicts: bool  # ingest checks a batch's labels against the batches there
    # ingest and the retrain flow compare new rows with the champion's (pipeline.drift: rows
    # of one text and one label)
    drift_checked: bool
    # The module whose CHECKER (pipeline.behaviour.Checker) runs the gate's behavioural checks
    # on its models (imported by name: only the stages that run checks depend on it,
    # tuneops.dvcfile.code_deps); None: the task has no behavioural checks.
    behaviour_module: str | None
    example_inputs: tuple[str, ...]  # texts for the MLflow signature
    # The task's own modules (dotted names): what every stage runs for it, so each is a
    # dvc.yaml dependency of every stage, with everything it imports (tuneops.dvcfile).
    modules: tuple[str, ...]

    def check(self, params: Params) -> None:
        """Raise ConfigError, before any compute, on keys that do not fit this task."""

    def validation_input(
        self, data: DataConfig, cfg: ValidateConfig, dataset_dir: Path
    ) -> ValidationInput: ...

    def split(
        self,
        data: DataConfig,
        cfg: PrepareConfig,
        labels: tuple[str, ...],
        dataset_dir: Path,
        seed: int,
    ) -> SplitFrame:
        """The examples, each in its split; `seed` (train.seed) seeds what is random in it
        (the label audit's folds)."""

    def load_model(
        self,
        path: str | Path,
        labels: tuple[str, ...] | None = None,
        num_hidden_layers: int | None = None,
        attn_implementation: str | None = None,
    ) -> Any: ...

    def tokenise(self, tokenizer: Any, cfg: TrainConfig) -> Callable[..., dict[str, Any]]: ...

    def collator(self, tokenizer: Any) -> Any: ...

    def resolve(
        self, cfg: TrainConfig, tokenizer: Any, prepared_dir: Path, model_config: Any
    ) -> TrainConfig:
        """`cfg` with what depends on the data decided (train.max_length: auto)."""

    def compute_metrics(
        self, labels: tuple[str, ...], validation: Any = None
    ) -> Callable[[Any], dict[str, float]]:
        """Validation metrics from the Trainer's predictions on the tokenised `validation`."""

    def after_tokenise(self, splits: Any, cfg: TrainConfig) -> tuple[Any, dict[str, Any]]:
        """The tokenised splits ready for the Trainer, and extra training-summary keys."""

    def class_weights(
        self, splits: Any, cfg: TrainConfig, labels: tuple[str, ...]
    ) -> list[float] | None:
        """The loss weight of each label (in `labels`' order) by train.class_weights, from
        the tokenised train split; None for the model's own unweighted loss."""

    def evaluate(
        self,
        cfg: EvaluateConfig,
        base: ModelConfig,
        max_length: int,
        seed: int,
        prepared_dir: Path,
        candidate_dir: Path,
    ) -> Evaluation: ...

    def parity_logits(
        self, model: Any, tokenizer: Any, bundle: Any, test: pd.DataFrame, max_length: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(PyTorch, onnxruntime) logits on real test examples, one row per prediction."""

    def calibrate(self, bundle: Any, prepared_dir: Path) -> dict[str, Any] | None:
        """A bundle model file's calibration (pipeline.calibration.calibration_figures: a
        temperature fitted on the validation split, test ECE and Brier before and after),
        or None where the task has no calibrated score."""

    def describe(self, labels: list[str]) -> str:
        """One sentence for the model card."""

    def test_split(self, prepared_dir: Path, labels: list[str]) -> TestSplit:
        """The current test split, labelled in `labels`' order: export scores each model
        file on it (the int8 decision, bundle.json's figures), register gates on it."""

    def dataset_frame(self, split: pd.DataFrame) -> pd.DataFrame:
        """The split as MLflow logs it: a text column and a scalar target column."""


def lower_is_better_metrics(task: Task) -> tuple[str, ...]:
    """The task's metrics (names without test_/eval_) where lower is better: its optional
    attribute `lower_is_better` (text regression: mae, rmse); () for a task without one,
    whose every metric is higher-is-better (F1, accuracy)."""
    return tuple(getattr(task, "lower_is_better", ()))


def loss_function(task: Task, cfg: TrainConfig) -> Callable[..., Any] | None:
    """The Trainer's compute_loss_func for this task and train config: its optional hook
    `loss_function(cfg)` (text regression's Huber loss), None for the model's own loss."""
    hook = getattr(task, "loss_function", None)
    return hook(cfg) if hook is not None else None


def bundle_meta(task: Task, candidate_dir: Path, prepared_dir: Path) -> dict[str, Any]:
    """Task-specific bundle.json keys: its optional hook `bundle_meta(candidate_dir,
    prepared_dir)` (text regression: the target's name and scale), {} without one."""
    hook = getattr(task, "bundle_meta", None)
    return dict(hook(candidate_dir, prepared_dir)) if hook is not None else {}


def onnx_outputs(task: Task) -> dict[str, tuple[str, ...]]:
    """The ONNX graph's outputs (model output attribute = graph output name) and their
    dynamic axes: a task's `onnx_outputs` when it has one (two heads), else one "logits"
    output with its `logits_axes`."""
    return dict(getattr(task, "onnx_outputs", None) or {"logits": task.logits_axes})


def judged_metrics(task: Task) -> tuple[str, ...]:
    """The test metrics the gate bootstraps, each on its own, the primary first: a task's
    `judged_metrics` when it has one, else its primary metric alone."""
    return tuple(getattr(task, "judged_metrics", None) or (task.primary_metric,))


def metric_counts(task: Task, split: TestSplit, predicted: Any) -> dict[str, np.ndarray]:
    """The bootstrap's per-row counts of each judged metric: a split's `metric_counts`
    when its task judges several, else {primary: row_counts}."""
    if len(judged_metrics(task)) == 1:
        return {task.primary_metric: split.row_counts(predicted)}
    counts: dict[str, np.ndarray] = split.metric_counts(predicted)  # type: ignore[attr-defined]
    return {name: counts[name] for name in judged_metrics(task)}


def baseline_column(name: str) -> str:
    """The column of reports/test_predictions.parquet that holds a baseline's predictions."""
    return f"{name}_predicted"


def check_keys(task: Task, params: Params) -> None:
    """The keys naming metrics and baselines must name this task's (before any compute)."""
    metric = params.train.metric_for_best_model
    if metric not in task.validation_metrics:
        raise ConfigError(
            f"train.metric_for_best_model: {metric!r} is not a validation metric of "
            f"{task.name}; expected one of {list(task.validation_metrics)}"
        )
    unknown = sorted(set(params.gate.baselines) - set(task.baselines))
    if unknown:
        raise ConfigError(
            f"gate.baselines: unknown baseline(s) {unknown} for {task.name}; expected "
            f"some of {list(task.baselines)}"
        )
    unknown = sorted(set(params.gate.floors) - set(task.test_metrics))
    if unknown:
        raise ConfigError(
            f"gate.floors: unknown metric(s) {unknown} for {task.name}; expected some of "
            f"{list(task.test_metrics)}"
        )


def require_candidate_labels(candidate_dir: Path, prepared_dir: Path) -> list[str]:
    """The candidate's labels (labels.json), which must be the prepared data's, in its order:
    the prepared label ids the candidate is scored against follow that order."""
    path = candidate_dir / "labels.json"
    labels = list(json.loads(path.read_text(encoding="utf-8")))
    fix = "the candidate was trained on other prepared data: train it again (tuneops stage train)"
    require_same_labels(labels, prepared_dir, str(path), fix)
    return labels


def require_same_labels(
    model_labels: list[str] | tuple[str, ...],
    prepared_dir: Path,
    model: str,
    fix: str,
    ordered: bool = True,
) -> None:
    """A model's labels are the prepared data's (in the same order, when `ordered`: the
    prepared label ids follow it); ConfigError naming both otherwise."""
    manifest = prepared_dir / "manifest.json"
    prepared = list(json.loads(manifest.read_text(encoding="utf-8"))["labels"])
    ours = list(model_labels)
    if ours == prepared or (not ordered and sorted(ours) == sorted(prepared)):
        return
    what = "labels" if sorted(ours) != sorted(prepared) else "label order"
    raise ConfigError(f"{model} has {what} {ours}, but {manifest} has {prepared}; {fix}")
