"""What text regression does inside the generic steps: read, split, evaluate.

Reuses text classification's reading (text_steps.read_raw_in), repeat policy
(pipeline.validate.repeated_rows: a text rated two ways is a conflict, every copy goes)
and frozen-encoder features; its own are the numeric target check, the target's
statistics in the manifest, and the regression baselines.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.prepare import SPLITS, normalise_text, split_of
from pipeline.tasks.base import Evaluation, SplitFrame, ValidationInput, baseline_column
from pipeline.tasks.text_steps import _fixes, read_raw_in
from pipeline.validate import (
    CheckResult,
    conflicting_labels_check,
    dropped_rows,
    duplicate_rows_check,
    is_missing,
    repeated_rows,
)
from tuneops.errors import DataValidationError

if TYPE_CHECKING:
    from pipeline.tasks.text_regression import TextRegression
    from tuneops.config import (
        DataConfig,
        EvaluateConfig,
        ModelConfig,
        PrepareConfig,
        ValidateConfig,
    )

EXAMPLES_SHOWN = 5
STRATA = 10  # target quantile bins the stratification gap is measured over


def as_number(value: Any) -> float | None:
    """A cell as a finite float (a number, or a string that reads as one), else None."""
    if isinstance(value, bool | list | dict) or is_missing(value):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def numeric_target_check(frame: pd.DataFrame, column: str) -> CheckResult:
    """Every present target cell is a finite number (missing cells: the not-null check)."""
    bad = [
        (source, value)
        for source, value in zip(frame["source"], frame["label"], strict=True)
        if not is_missing(value) and as_number(value) is None
    ]
    return CheckResult(
        name="expect_target_values_to_be_numbers",
        column="label",
        per_row=True,
        success=not bad,
        expected="a finite number in every row (text regression)",
        observed=f"{len(bad)} non-numeric row(s)" if bad else "all numeric",
        unexpected_count=len(bad),
        examples=[{"source": s, "value": v} for s, v in bad[:EXAMPLES_SHOWN]],
        fix=f"fix those rows of {column!r}, or point data.label_column at the numeric column",
    )


def varying_target_check(values: pd.Series) -> CheckResult:
    """The target takes at least two values (a constant has nothing to learn, and its
    standard deviation, the training scale, is 0)."""
    distinct = values.dropna().nunique()
    return CheckResult(
        name="expect_target_to_vary",
        column="label",
        success=distinct >= 2,
        expected="at least 2 distinct target values",
        observed=f"{distinct} distinct value(s)",
        fix="add rows with other values, or point data.label_column at another column",
    )


def _numbers(frame: pd.DataFrame) -> pd.Series:
    return frame["label"].map(as_number).astype("float64")


def _canonical(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows with the target as one string per value ("1.50" and 1.5 alike), so the
    shared repeat policy sees equal ratings as equal."""
    values = _numbers(frame)
    return frame.assign(label=[repr(v) if not math.isnan(v) else None for v in values])


def validation_input(data: DataConfig, cfg: ValidateConfig, dataset_dir: Path) -> ValidationInput:
    import great_expectations as gx

    frame = read_raw_in(data, dataset_dir)
    numbers = _numbers(frame)
    repeats = repeated_rows(_canonical(frame))
    ex = gx.expectations
    name = data.label_column
    return ValidationInput(
        frame=frame,
        columns=["text", "label"],
        expectations=[
            ex.ExpectColumnValuesToNotBeNull(column="text"),
            ex.ExpectColumnValuesToNotBeNull(column="label"),
            ex.ExpectColumnValuesToBeOfType(column="text", type_="str"),
            ex.ExpectColumnValuesToNotMatchRegex(column="text", regex=r"^\s*$"),
            ex.ExpectColumnValueLengthsToBeBetween(
                column="text", min_value=cfg.min_text_chars, max_value=cfg.max_text_chars
            ),
        ],
        suite_name="regression_raw",
        labels=(name,),
        label_source="target",
        label_counts={name: int(numbers.notna().sum())},
        checks=[
            numeric_target_check(frame, name),
            varying_target_check(numbers),
            conflicting_labels_check(repeats, len(frame), cfg),
            duplicate_rows_check(repeats, len(frame), cfg),
        ],
        dropped_rows=dropped_rows(repeats, name),
        column_names={"text": data.text_column, "label": name},
        fixes=_fixes(frame, (), "target", cfg),
    )


# --- prepare --------------------------------------------------------------------------


def split(
    data: DataConfig, cfg: PrepareConfig, labels: tuple[str, ...], dataset_dir: Path
) -> SplitFrame:
    """Normalised, de-duplicated rows (a text rated two ways: every copy dropped), each in
    the split its text hashes to (prepare.split_of, as text classification: the champion
    is re-scored only on rows it held out, pipeline.champion); the manifest records the
    target's statistics per split, and the gap of each split's share of the target's
    decile bins is the stratification gap."""
    frame = read_raw_in(data, dataset_dir)
    frame["text"] = frame["text"].astype(str).map(normalise_text)
    frame["target"] = _numbers(frame)
    if frame["target"].isna().any():
        sources = frame.loc[frame["target"].isna(), "source"].tolist()
        raise DataValidationError(
            f"{len(sources)} row(s) of {data.label_column!r} are not numbers "
            f"({', '.join(sources[:EXAMPLES_SHOWN])}): run the validate stage first"
        )
    repeats = repeated_rows(_canonical(frame))
    dropped = dropped_rows(repeats, data.label_column)
    conflicts = [
        {
            "text": text[:80],
            "labels": ",".join(sorted(set(group["label"]))),
            "sources": ",".join(group["source"]),
        }
        for text, group in repeats[repeats["conflicting"]].groupby("key", sort=True)
    ]
    keep = ~repeats["conflicting"] & repeats["duplicate_of"].isna()
    frame = frame[keep].reset_index(drop=True)
    frame["split"] = [
        split_of(t, cfg.validation_fraction, cfg.test_fraction) for t in frame["text"]
    ]
    for name in SPLITS:
        if not (frame["split"] == name).any():
            raise DataValidationError(
                f"the {name} split has no rows ({len(frame)} rows in all): add rows, or "
                "raise prepare.validation_fraction / prepare.test_fraction"
            )
    name = labels[0] if labels else data.label_column
    return SplitFrame(
        frame=frame,
        columns=["text", "target", "source"],
        label_counts={s: {name: int((frame["split"] == s).sum())} for s in SPLITS},
        fingerprint=_fingerprint(frame, name),
        dropped_duplicates=int(repeats["duplicate_of"].notna().sum()),
        conflicts=conflicts,
        max_stratification_gap=stratification_gap(frame),
        dropped_rows=dropped,
        manifest={"target": target_statistics(frame, name)},
        label_audit=None,  # no label to audit: prepare reports it as skipped
    )


def describe_values(values: pd.Series) -> dict[str, float | int]:
    return {
        "rows": len(values),
        "mean": float(values.mean()),
        "std": float(values.std(ddof=0)),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def target_statistics(frame: pd.DataFrame, name: str) -> dict[str, Any]:
    """manifest.json's `target`: the column, and its rows, mean, std, min and max over
    all rows and per split."""
    found: dict[str, Any] = {"column": name, "all": describe_values(frame["target"])}
    for s in SPLITS:
        found[s] = describe_values(frame.loc[frame["split"] == s, "target"])
    return found


def stratification_gap(frame: pd.DataFrame) -> float:
    """The largest gap between a split's share of a target decile bin (edges over all
    rows) and that bin's share overall."""
    edges = np.unique(np.quantile(frame["target"], np.linspace(0, 1, STRATA + 1)))
    bins = pd.Series(np.searchsorted(edges[1:-1], frame["target"], side="right"))
    overall = bins.value_counts(normalize=True)
    gaps = [
        abs(bins[frame["split"] == s].value_counts(normalize=True).get(b, 0.0) - share)
        for s in SPLITS
        for b, share in overall.items()
    ]
    return float(max(gaps, default=0.0))


def _fingerprint(frame: pd.DataFrame, name: str) -> str:
    """sha256 over the target's name and the sorted (split, text, target) rows."""
    digest = hashlib.sha256(json.dumps([name]).encode())
    for split_name, text, target in sorted(
        zip(frame["split"], frame["text"], frame["target"], strict=True)
    ):
        digest.update(f"{split_name}\t{target!r}\t{text}\n".encode())
    return digest.hexdigest()


# --- evaluate -------------------------------------------------------------------------


def evaluate(
    task: TextRegression,
    cfg: EvaluateConfig,
    base: ModelConfig,
    max_length: int,
    seed: int,
    prepared_dir: Path,
    candidate_dir: Path,
) -> Evaluation:
    """The candidate and the baselines (the train mean, TF-IDF + ridge, the frozen base
    encoder + ridge) on the same test rows, in the target's units."""
    from pipeline.tasks.text_classification import candidate_window
    from pipeline.tasks.text_regression import error_by_range, score
    from pipeline.training.modeling import load_tokenizer, predict_windows

    train = pd.read_parquet(prepared_dir / "train.parquet")
    test = pd.read_parquet(prepared_dir / "test.parquet")
    model = task.load_model(candidate_dir)  # its scale folded in: target units
    tokenizer = load_tokenizer(candidate_dir)
    window = candidate_window(candidate_dir, tokenizer, max_length)
    values, truncated = predict_windows(
        model, tokenizer, test["text"].tolist(), window, cfg.batch_size
    )
    predicted = values[:, 0].astype(np.float64)
    y_test = test["target"].to_numpy(np.float64)

    metrics: dict[str, Any] = score(y_test, predicted)
    metrics["test_rows"] = len(test)
    predictions = test[["text", "target", "source"]].copy()
    predictions["predicted"] = predicted
    predictions["error"] = predicted - y_test
    predictions["truncated"] = truncated
    for name, (scores, baseline_values) in _baselines(task, cfg, base, window, seed, train, test):
        metrics[name] = scores
        predictions[baseline_column(name)] = baseline_values
    return Evaluation(
        metrics=metrics,
        per_class=error_by_range(y_test, predicted),
        predictions=predictions,
        plot=lambda path: _plot_scatter(y_test, predicted, path),
    )


def _baselines(
    task: TextRegression,
    cfg: EvaluateConfig,
    base: ModelConfig,
    window: Any,
    seed: int,
    train: pd.DataFrame,
    test: pd.DataFrame,
) -> list[tuple[str, tuple[dict[str, Any], np.ndarray]]]:
    """Each baseline's test scores and its value per test row."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline

    from pipeline.tasks.text_regression import score

    y_train, y_test = train["target"].to_numpy(np.float64), test["target"].to_numpy(np.float64)
    tfidf = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True), Ridge(alpha=1.0)
    ).fit(train["text"], y_train)
    found = {
        "mean": np.full(len(test), float(y_train.mean())),
        "tfidf": np.asarray(tfidf.predict(test["text"]), np.float64),
    }
    result = [(name, (score(y_test, v), v)) for name, v in found.items()]
    return result + _frozen_encoder(task, cfg, base, window, seed, train, test)


def _frozen_encoder(
    task: TextRegression,
    cfg: EvaluateConfig,
    base: ModelConfig,
    window: Any,
    seed: int,
    train: pd.DataFrame,
    test: pd.DataFrame,
) -> list[tuple[str, tuple[dict[str, Any], np.ndarray]]]:
    """The base encoder frozen and a ridge head on its features (standardised), once per
    feature of probe.FEATURES; before_finetuning is the one with the lower test MAE (the
    harder baseline: choosing it on test only makes the gate stricter)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from pipeline.tasks.text_regression import score
    from pipeline.training.modeling import load_tokenizer, resolve_model_path
    from pipeline.training.probe import FEATURES, encoder_features

    sample = train.sample(n=min(cfg.frozen_baseline_train_rows, len(train)), random_state=seed)
    path = resolve_model_path(base.name_or_path)
    model = task.load_model(path, ("target",), base.num_hidden_layers)
    tokenizer = load_tokenizer(path)
    x_train, x_test = (
        encoder_features(model, tokenizer, part["text"].tolist(), window, cfg.batch_size)
        for part in (sample, test)
    )
    y_test = test["target"].to_numpy(np.float64)
    found: dict[str, tuple[dict[str, Any], np.ndarray]] = {}
    for name in FEATURES:
        head = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13)))
        head.fit(x_train[name], sample["target"].to_numpy(np.float64))
        values = np.asarray(head.predict(x_test[name]), np.float64)
        found[f"before_finetuning_{name}"] = (
            score(y_test, values) | {"train_rows": len(sample)},
            values,
        )
    pick = min(reversed(FEATURES), key=lambda n: found[f"before_finetuning_{n}"][0]["test_mae"])
    scores, values = found[f"before_finetuning_{pick}"]
    return [("before_finetuning", (scores | {"features": pick}, values)), *found.items()]


def _plot_scatter(y_true: np.ndarray, y_pred: np.ndarray, path: Path) -> None:
    """Predicted vs gold on the test split (written where the classifiers' confusion
    matrix goes: the evaluate stage's one plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(y_true, y_pred, s=6, alpha=0.5)
    low, high = float(min(y_true.min(), y_pred.min())), float(max(y_true.max(), y_pred.max()))
    ax.plot([low, high], [low, high], color="grey", linewidth=1)
    ax.set_xlabel("gold")
    ax.set_ylabel("predicted")
    ax.set_title(f"test split: {len(y_true)} rows")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
