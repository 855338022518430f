"""Text regression: one number per text (a rating, a score, a price).

Rows come from CSV/JSONL/Parquet files with a text and a numeric target column
(data.label_column); the split unit is the normalised text, as for text classification,
whose window, max_length: auto and long-text handling this task shares.

The model has one output trained on the target standardised with the train split's mean
and standard deviation (recorded with the candidate, training_summary.json
`target_scale`); loading the candidate folds that scale into the output layer, so
evaluation, the ONNX file and the runtime all give values in the target's own units.

The primary metric, the one the gate's bootstrap, the baselines and the int8 decision
compare, is MAE (lower is better): it is in the target's units and, unlike Pearson and
Spearman, it sees a shifted or stretched prediction (a model predicting 2x + 1 has a
Pearson of 1). The bootstrap statistic is the mean of the per-row scores -|error|
(pipeline.bootstrap), so every difference is an improvement (> 0: the model is better).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.io import SUPPORTED_SUFFIXES
from pipeline.tasks.base import Evaluation, SplitFrame, ValidationInput, check_keys
from pipeline.tasks.text_classification import TextClassification
from tuneops.errors import ConfigError

if TYPE_CHECKING:
    from tuneops.config import (
        DataConfig,
        EvaluateConfig,
        ModelConfig,
        Params,
        PrepareConfig,
        TrainConfig,
        ValidateConfig,
    )

# before_finetuning is the stronger (lower MAE) of the two frozen-encoder ridge probes.
BASELINES = (
    "mean",
    "tfidf",
    "before_finetuning",
    "before_finetuning_pooler",
    "before_finetuning_mean_pooled",
)
# int8 vs fp32 "agreement": the share of rows whose two predictions are within this share
# of the test targets' standard deviation (export.int8_min_label_agreement judges it).
AGREEMENT_STD_SHARE = 0.1
SCALE_FILE_KEY = "target_scale"  # training_summary.json: the train split's mean and std


def score(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, Pearson and Spearman (0 where either side is constant: undefined)."""
    from scipy.stats import pearsonr, spearmanr

    y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    errors = y_pred - y_true
    varies = len(y_true) > 1 and np.ptp(y_true) > 0 and np.ptp(y_pred) > 0
    return {
        "test_mae": float(np.abs(errors).mean()) if len(errors) else 0.0,
        "test_rmse": float(np.sqrt((errors**2).mean())) if len(errors) else 0.0,
        "test_pearson": float(pearsonr(y_true, y_pred)[0]) if varies else 0.0,
        "test_spearman": float(spearmanr(y_true, y_pred)[0]) if varies else 0.0,
    }


def error_by_range(y_true: np.ndarray, y_pred: np.ndarray, bins: int = 4) -> dict[str, Any]:
    """MAE and support per quartile of the gold target (the task's "per-class" report:
    where in the range the model is worse). No gate check reads it."""
    y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    if not len(y_true):
        return {}
    edges = np.unique(np.quantile(y_true, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, y_true, side="right") - 1, 0, max(len(edges) - 2, 0))
    report = {}
    for i in range(max(len(edges) - 1, 1)):
        rows = which == i
        high = edges[min(i + 1, len(edges) - 1)]
        report[f"[{edges[i]:.3g}, {high:.3g}]"] = {
            "mae": float(np.abs(y_pred[rows] - y_true[rows]).mean()) if rows.any() else 0.0,
            "support": int(rows.sum()),
        }
    return report


def target_scale(candidate_dir: Path) -> dict[str, float] | None:
    """The train split's target mean and std a candidate was trained with (None: not a
    regression candidate, or one trained before the scale was recorded)."""
    path = candidate_dir / "training_summary.json"
    if not path.exists():
        return None
    found = json.loads(path.read_text(encoding="utf-8")).get(SCALE_FILE_KEY)
    return dict(found) if found else None


def fold_scale(model: Any, mean: float, std: float) -> Any:
    """`model` with its one-output layer (the last Linear with one output) rescaled so it
    predicts std * z + mean, the target's units, instead of z."""
    import torch
    from torch import nn

    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 1]
    if not heads:
        raise ConfigError("text-regression: the model has no one-output layer to scale")
    head = heads[-1]
    with torch.no_grad():
        head.weight.mul_(std)
        if head.bias is not None:
            head.bias.mul_(std).add_(mean)
    return model


def huber_loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
    """Huber loss (delta 1, on the standardised target) summed over the batch and divided
    by the rows of the whole accumulated batch when the Trainer gives their count (it then
    does not divide by the accumulation steps itself), else the batch mean."""
    from torch import nn

    logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
    values = logits.view(-1)
    losses = nn.functional.huber_loss(values, labels.view(-1).to(values.dtype), reduction="none")
    if num_items_in_batch is None:
        return losses.mean()
    return losses.sum() / num_items_in_batch


class TextRegression:
    name = "text-regression"
    row_unit = "rows"
    target_column = "target"
    primary_metric = "test_mae"
    primary_metric_label = "MAE"
    accuracy_metric = "test_pearson"  # the second figure bundle.json records per model file
    test_metrics: tuple[str, ...] = ("test_mae", "test_rmse", "test_pearson", "test_spearman")
    validation_metrics: tuple[str, ...] = ("mae", "rmse", "pearson", "spearman", "loss")
    # Metrics (without test_/eval_) where lower is better: gate floors on them are
    # ceilings, train selects on them descending, the bootstrap and int8 use -|error|.
    lower_is_better: tuple[str, ...] = ("mae", "rmse")
    baselines: tuple[str, ...] = BASELINES
    reproduce_metrics: tuple[str, ...] = (
        "test_mae",
        "test_rmse",
        "test_pearson",
        "test_spearman",
        "best_validation_mae",
    )
    peft_task_type = "SEQ_CLS"
    logits_axes: tuple[str, ...] = ("batch",)
    cross_batch_conflicts = False  # ingest: no label set to check a batch against
    drift_checked = False  # pipeline.drift compares label shares: not a number's
    behaviour_module: str | None = None  # no label or entity checks apply to a number
    raw_suffixes: tuple[str, ...] = SUPPORTED_SUFFIXES
    example_inputs: tuple[str, ...] = ("a great, moving film", "dull and far too long")
    modules: tuple[str, ...] = (
        "pipeline.tasks.text_regression",
        "pipeline.tasks.regression_steps",
    )

    def check(self, params: Params) -> None:
        check_keys(self, params)
        gate = params.gate
        wrong = [
            (params.train.class_weights != "none", "train.class_weights", "none"),
            (gate.per_class, "gate.per_class", "false"),
            (gate.max_ece is not None, "gate.max_ece", "null"),
        ]
        for bad, key, fix in wrong:
            if bad:
                raise ConfigError(
                    f"{key}: {self.name} has no classes (one number per text); set {key} to "
                    f"{fix} (params.regression.yaml does)"
                )

    def validation_input(
        self, data: DataConfig, cfg: ValidateConfig, dataset_dir: Path
    ) -> ValidationInput:
        from pipeline.tasks import regression_steps

        return regression_steps.validation_input(data, cfg, dataset_dir)

    def split(
        self,
        data: DataConfig,
        cfg: PrepareConfig,
        labels: tuple[str, ...],
        dataset_dir: Path,
        seed: int,
    ) -> SplitFrame:
        from pipeline.tasks import regression_steps

        return regression_steps.split(data, cfg, labels, dataset_dir)

    def load_model(
        self,
        path: str | Path,
        labels: tuple[str, ...] | None = None,
        num_hidden_layers: int | None = None,
        attn_implementation: str | None = None,
    ) -> Any:
        """With `labels` (the base model): a new one-output head (any number of labels
        asks for one output: the frozen-encoder baseline passes its own). Without: the
        candidate, its scale folded into the head (values in the target's units)."""
        from pipeline.training.modeling import load_classifier

        head = (labels[0],) if labels else None
        model = load_classifier(path, head, num_hidden_layers, attn_implementation)
        model.config.problem_type = "regression"
        scale = target_scale(Path(path)) if labels is None else None
        if scale is not None:
            fold_scale(model, scale["mean"], scale["std"])
        return model

    def resolve(
        self, cfg: TrainConfig, tokenizer: Any, prepared_dir: Path, model_config: Any
    ) -> TrainConfig:
        return TextClassification().resolve(cfg, tokenizer, prepared_dir, model_config)

    def tokenise(self, tokenizer: Any, cfg: TrainConfig) -> Callable[..., dict[str, Any]]:
        """The text task's windows; every window of a text trains with its raw target
        (after_tokenise standardises it)."""
        from pipeline.tasks.text_classification import train_window, window_positions
        from pipeline.training.modeling import encode_window

        window = train_window(cfg, tokenizer)

        def tokenise(batch: dict[str, list[Any]]) -> dict[str, Any]:
            windows = encode_window(tokenizer, batch["text"], window)
            encoded: dict[str, Any] = dict(windows.inputs)
            encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
            encoded["labels"] = [float(batch["target"][d]) for d in windows.documents]
            encoded["window"] = window_positions(windows.documents)
            encoded["cut"] = [int(windows.truncated[d]) for d in windows.documents]
            return encoded

        return tokenise

    def collator(self, tokenizer: Any) -> Any:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def after_tokenise(self, splits: Any, cfg: TrainConfig) -> tuple[Any, dict[str, Any]]:
        """The text task's window summary, plus the standardisation: every split's labels
        become (target - mean) / std with the train split's texts' mean and std (recorded
        as `target_scale`; the validation split carries them for compute_metrics)."""
        from datasets import Value

        splits, summary = TextClassification().after_tokenise(splits, cfg)
        train = splits["train"]
        firsts = np.asarray(train["window"]) == 0
        targets = np.asarray(train["labels"], np.float64)[firsts]
        mean = float(targets.mean())
        std = float(targets.std()) or 1.0  # a constant target: validate rejects it

        def standardise(batch: dict[str, list[Any]]) -> dict[str, Any]:
            return {"labels": [(v - mean) / std for v in batch["labels"]]}

        splits = splits.map(standardise, batched=True).cast_column("labels", Value("float32"))
        rows = len(splits["validation"])
        validation = splits["validation"].add_column("target_mean", [mean] * rows)
        splits["validation"] = validation.add_column("target_std", [std] * rows)
        return splits, summary | {SCALE_FILE_KEY: {"mean": mean, "std": std}}

    def class_weights(
        self, splits: Any, cfg: TrainConfig, labels: tuple[str, ...]
    ) -> list[float] | None:
        return None  # check() rejects train.class_weights other than none

    def loss_function(self, cfg: TrainConfig) -> Callable[..., Any] | None:
        """train.regression_loss: mse is the model's own loss (None); huber is
        `huber_loss` (the Trainer's compute_loss_func)."""
        return huber_loss if cfg.regression_loss == "huber" else None

    def compute_metrics(
        self, labels: tuple[str, ...], validation: Any = None
    ) -> Callable[[Any], dict[str, float]]:
        """`score`, the test metric, on the validation split per text (a chunked text's
        prediction: the mean of its windows'), in the target's units."""
        from tuneops.runtime import document_logits

        firsts, mean, std = None, 0.0, 1.0
        if validation is not None and "target_std" in validation.column_names:
            firsts = np.asarray(validation["window"]) == 0
            mean, std = float(validation["target_mean"][0]), float(validation["target_std"][0])

        def compute(prediction: Any) -> dict[str, float]:
            logits, gold = prediction
            logits = np.asarray(logits, np.float64).reshape(len(gold), -1)
            gold = np.asarray(gold, np.float64).reshape(-1)
            if firsts is not None and len(firsts) == len(gold):
                documents = np.cumsum(firsts) - 1
                logits = document_logits(logits, documents, int(firsts.sum()))
                gold = gold[firsts]
            scores = score(gold * std + mean, logits[:, 0] * std + mean)
            return {k.removeprefix("test_"): v for k, v in scores.items()}

        return compute

    def evaluate(
        self,
        cfg: EvaluateConfig,
        base: ModelConfig,
        max_length: int,
        seed: int,
        prepared_dir: Path,
        candidate_dir: Path,
    ) -> Evaluation:
        from pipeline.tasks import regression_steps

        return regression_steps.evaluate(
            self, cfg, base, max_length, seed, prepared_dir, candidate_dir
        )

    def parity_logits(
        self, model: Any, tokenizer: Any, bundle: Any, test: pd.DataFrame, max_length: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The values (target units) of PyTorch and onnxruntime: parity is max |diff|."""
        return TextClassification().parity_logits(model, tokenizer, bundle, test, max_length)

    def calibrate(self, bundle: Any, prepared_dir: Path) -> dict[str, Any] | None:
        return None  # no probabilities to calibrate

    def bundle_meta(self, candidate_dir: Path, prepared_dir: Path) -> dict[str, Any]:
        """bundle.json's `target`: its column, the train scale the model was trained
        with, and the prepared data's range (what the runtime reports with each value)."""
        manifest = json.loads((prepared_dir / "manifest.json").read_text(encoding="utf-8"))
        found = dict(manifest.get("target", {}).get("train", {}))
        return {
            "target": {"name": manifest["labels"][0], **found, "scale": target_scale(candidate_dir)}
        }

    def describe(self, labels: list[str]) -> str:
        return f"Text regression: one value of {labels[0]!r} per text, in its own units."

    def test_split(self, prepared_dir: Path, labels: list[str]) -> RegressionTestSplit:
        """The test texts and targets; `labels` (the model's target name) must be the
        prepared data's (export and register check it first)."""
        test = pd.read_parquet(prepared_dir / "test.parquet")
        return RegressionTestSplit(
            test["text"].tolist(), test["target"].to_numpy(np.float64), list(labels)
        )

    def dataset_frame(self, split: pd.DataFrame) -> pd.DataFrame:
        return split[["text", "target"]]


@dataclass
class RegressionTestSplit:
    """The current test split of a regression task, as export and the gate score it."""

    texts: list[str]
    targets: np.ndarray
    labels: list[str]  # [the target's name]: what require_same_labels compares

    def rescore(self, bundle: Any) -> np.ndarray:
        """A bundle's values (its ONNX output is in the target's units)."""
        return np.asarray(bundle.logits(self.texts, batch_size=64)[:, 0], np.float64)

    def report(self, predicted: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        return score(self.targets, predicted), error_by_range(self.targets, predicted)

    def gate_labels(self, per_class: dict[str, Any]) -> list[str]:
        return []  # no classes: check() keeps gate.per_class off

    def row_counts(self, predicted: Any) -> np.ndarray:
        """Per row: -|error|, whose mean (pipeline.bootstrap) is -MAE: higher is better."""
        return -np.abs(np.asarray(predicted, np.float64) - self.targets)

    @property
    def strata(self) -> None:
        return None

    def recorded(self, column: list[Any]) -> np.ndarray:
        return np.asarray(column, np.float64)

    def agreement(self, predicted: Any, other: Any) -> float:
        """The share of rows whose two values are within AGREEMENT_STD_SHARE of the test
        targets' standard deviation of each other."""
        if not len(predicted):
            return 1.0
        tolerance = AGREEMENT_STD_SHARE * float(np.std(self.targets) or 1.0)
        diff = np.abs(np.asarray(predicted, np.float64) - np.asarray(other, np.float64))
        return float((diff <= tolerance).mean())

    def subset(self, keep: list[bool]) -> RegressionTestSplit:
        texts = [text for text, kept in zip(self.texts, keep, strict=True) if kept]
        return RegressionTestSplit(texts, self.take(self.targets, keep), self.labels)

    def take(self, predicted: Any, keep: list[bool]) -> np.ndarray:
        return np.asarray(predicted)[np.asarray(keep, dtype=bool)]
