"""What text classification does inside the generic steps: read, split, evaluate.

Kept apart from text_classification.py (the task's facts and small hooks) so that each
file reads on a screen or two; nothing outside that module calls this one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.io import read_label_file, read_raw
from pipeline.label_audit import LabelAudit, audit, skipped
from pipeline.prepare import SPLITS, hash_bucket, normalise_text, split_of
from pipeline.tasks.base import Evaluation, SplitFrame, ValidationInput, baseline_column
from pipeline.validate import (
    conflicting_labels_check,
    dropped_rows,
    duplicate_rows_check,
    is_missing,
    label_type_check,
    min_examples_check,
    repeated_rows,
    single_label_check,
    two_labels_check,
)
from tuneops.errors import DataValidationError

if TYPE_CHECKING:
    from pipeline.tasks.text_classification import TextClassification
    from tuneops.config import (
        DataConfig,
        EvaluateConfig,
        ModelConfig,
        PrepareConfig,
        ValidateConfig,
    )


# --- validate -------------------------------------------------------------------------


def read_raw_in(data: DataConfig, dataset_dir: Path) -> pd.DataFrame:
    """The raw rows as data.* says to read them (columns, slice, encoding, delimiter)."""
    return read_raw(
        dataset_dir,
        data.text_column,
        data.label_column,
        data.max_rows,
        data.encoding,
        data.delimiter,
    )


def validation_input(data: DataConfig, cfg: ValidateConfig, dataset_dir: Path) -> ValidationInput:
    frame = read_raw_in(data, dataset_dir)
    label_checks = [single_label_check(frame), label_type_check(frame)]
    frame["label"] = frame["label"].map(lambda v: v if is_missing(v) else str(v))
    labels, label_source = _label_set(data, dataset_dir, frame)
    counts = frame["label"].value_counts().reindex(list(labels), fill_value=0)
    repeats = repeated_rows(frame)
    return ValidationInput(
        frame=frame,
        columns=["text", "label"],
        expectations=_suite(labels, cfg),
        suite_name="text_raw",
        labels=labels,
        label_source=label_source,
        label_counts={str(k): int(v) for k, v in counts.items()},
        checks=[
            *label_checks,
            min_examples_check(frame, labels, cfg.min_examples_per_class),
            two_labels_check(labels),
            conflicting_labels_check(repeats, len(frame), cfg),
            duplicate_rows_check(repeats, len(frame), cfg),
        ],
        dropped_rows=dropped_rows(repeats, data.label_column),
        column_names={"text": data.text_column, "label": data.label_column},
        fixes=_fixes(frame, labels, label_source, cfg),
    )


def _fixes(
    frame: pd.DataFrame, labels: tuple[str, ...], label_source: str, cfg: ValidateConfig
) -> dict[tuple[str, str], str]:
    """What the suite's failures mean in the keys a user changes."""
    lengths = frame["text"].map(lambda v: len(v) if isinstance(v, str) else None).dropna()
    longer, shorter = lengths[lengths > cfg.max_text_chars], lengths[lengths < cfg.min_text_chars]
    bounds = []
    if len(longer):
        bounds.append(
            f"validate.max_text_chars: {cfg.max_text_chars}; {len(longer)} rows are longer "
            f"(longest {int(longer.max()):,}): raise it, or fix the rows"
        )
    if len(shorter):
        bounds.append(
            f"validate.min_text_chars: {cfg.min_text_chars}; {len(shorter)} rows are shorter: "
            "lower it, or fix the rows"
        )
    where = {"params": "data.labels", "labels.json": "labels.json"}.get(label_source, "the labels")
    outside = frame["label"].dropna()
    outside = outside[~outside.isin(labels)]
    return {
        ("expect_column_value_lengths_to_be_between", "text"): "; ".join(bounds),
        ("expect_column_values_to_be_in_set", "label"): (
            f"{len(outside)} row(s) have a label outside {where} {list(labels)}: add it to "
            f"{where}, or fix the rows"
        ),
        ("expect_column_distinct_values_to_contain_set", "label"): (
            f"a label of {where} has no rows: remove it from {where}, or add rows"
        ),
    }


def _label_set(
    data: DataConfig, dataset_dir: Path, frame: pd.DataFrame
) -> tuple[tuple[str, ...], str]:
    if data.labels:
        return tuple(data.labels), "params"
    frozen = read_label_file(dataset_dir)
    if frozen:
        return frozen, "labels.json"
    return tuple(sorted(frame["label"].dropna().unique())), "inferred"


def _suite(labels: tuple[str, ...], cfg: ValidateConfig) -> list[Any]:
    import great_expectations as gx

    ex = gx.expectations
    return [
        ex.ExpectColumnValuesToNotBeNull(column="text"),
        ex.ExpectColumnValuesToNotBeNull(column="label"),
        ex.ExpectColumnValuesToBeOfType(column="text", type_="str"),
        ex.ExpectColumnValuesToNotMatchRegex(column="text", regex=r"^\s*$"),
        ex.ExpectColumnValueLengthsToBeBetween(
            column="text", min_value=cfg.min_text_chars, max_value=cfg.max_text_chars
        ),
        ex.ExpectColumnValuesToBeInSet(column="label", value_set=list(labels)),
        ex.ExpectColumnDistinctValuesToContainSet(column="label", value_set=list(labels)),
    ]


# --- prepare --------------------------------------------------------------------------


def split(
    data: DataConfig, cfg: PrepareConfig, labels: tuple[str, ...], dataset_dir: Path, seed: int
) -> SplitFrame:
    """Normalised, de-duplicated rows, each in the split its text hashes to; a label that
    no row hashes into validation or test gets one of its train rows there (_fill_split).
    Then the train rows' labels are audited (prepare.label_issues; _audit_train): under
    drop the flagged ones leave train before anything is counted or fingerprinted."""
    frame = read_raw_in(data, dataset_dir)
    frame["text"] = frame["text"].astype(str).map(normalise_text)
    frame["label"] = frame["label"].astype(str)
    repeats = repeated_rows(frame)
    dropped = dropped_rows(repeats, data.label_column)
    conflicts = _conflicts(repeats)
    dropped_duplicates = int(repeats["duplicate_of"].notna().sum())
    frame = frame[~repeats["conflicting"] & repeats["duplicate_of"].isna()]
    frame = frame.reset_index(drop=True)
    frame["split"] = [
        split_of(t, cfg.validation_fraction, cfg.test_fraction) for t in frame["text"]
    ]
    moved = {
        f"moved_to_{name}": _fill_split(frame, labels, data.label_column, name)
        for name in ("validation", "test")  # in this order: validation takes the lowest hash
    }
    label_ids = {label: i for i, label in enumerate(labels)}
    frame["label_id"] = frame["label"].map(label_ids).astype("int64")
    audited, frame = _audit_train(frame, labels, data, cfg, seed)
    counts = {s: _label_counts(frame[frame["split"] == s], labels) for s in SPLITS}
    _require_every_label(counts, frame, SPLITS)
    return SplitFrame(
        frame=frame,
        columns=["text", "label", "label_id", "source"],
        label_counts=counts,
        fingerprint=_fingerprint(frame, labels),
        dropped_duplicates=dropped_duplicates,
        conflicts=conflicts,
        max_stratification_gap=_stratification_gap(frame, labels),
        dropped_rows=dropped,
        manifest=moved
        | {"label_issues_dropped": _dropped(audited, data.label_column, cfg.label_issues)},
        label_audit=audited,
    )


def _audit_train(
    frame: pd.DataFrame,
    labels: tuple[str, ...],
    data: DataConfig,
    cfg: PrepareConfig,
    seed: int,
) -> tuple[LabelAudit, pd.DataFrame]:
    """The label audit of the train rows (pipeline.label_audit, with the TF-IDF baseline's
    model), and the frame: under drop without the flagged train rows."""
    if cfg.label_issues == "off":
        return skipped("off", "prepare.label_issues: off"), frame
    columns = {"text": data.text_column, "label": data.label_column}
    train = frame[frame["split"] == "train"]
    found, flagged = audit(train, labels, tfidf_model(seed), cfg.label_issues, seed, columns)
    if not found.audited:
        print(found.reason + "; not audited", flush=True)
    if cfg.label_issues == "drop":
        frame = frame.drop(index=flagged).reset_index(drop=True)
    return found, frame


def _dropped(audited: LabelAudit, label_column: str, setting: str) -> list[dict[str, str]]:
    """The train rows drop removed (manifest.json's label_issues_dropped): file:row, the
    given label under the user's column name, the suggested one."""
    if setting != "drop":
        return []
    keys = ("source", label_column, "suggested")
    return [{key: issue[key] for key in keys} for issue in audited.issues]


def tfidf_model(seed: int) -> Any:
    """TF-IDF (word 1-2 grams, sublinear tf) + logistic regression, unfitted: the TF-IDF
    baseline of evaluate and the label audit's model."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True),
        LogisticRegression(max_iter=2000, C=4.0, random_state=seed),
    )


def _fill_split(
    frame: pd.DataFrame, labels: tuple[str, ...], label_column: str, name: str
) -> list[dict[str, str]]:
    """Every label in split `name`: a label with train rows to spare (two or more) but none
    hashed into `name` gets one, its train row nearest the held-out buckets (the lowest
    hash_bucket among its train rows: independent of row order). Only train rows move, so
    a test row never leaves test, and a row moved into test hashes to train: a champion is
    never re-scored on it after a change of split (pipeline.prepare.held_out_under). With
    data appended and the fractions kept, the row picked is the one the champion's data
    picked too, or a new row. The moved rows are returned for the manifest."""
    moved = []
    for label in labels:
        of_label = frame["label"] == label
        if (of_label & (frame["split"] == name)).any():
            continue
        train = frame.index[of_label & (frame["split"] == "train")]
        if len(train) < 2:  # moving the only one would starve train; the check names it
            continue
        pick = min(train, key=lambda i: hash_bucket(frame.at[i, "text"]))
        frame.at[pick, "split"] = name
        moved.append(
            {"source": str(frame.at[pick, "source"]), "from": "train", label_column: label}
        )
    return moved


def _conflicts(repeats: pd.DataFrame) -> list[dict[str, str]]:
    """Each text seen with two labels (every copy is dropped: neither can be trusted),
    with its labels and source rows."""
    conflicting = repeats[repeats["conflicting"]]
    return [
        {
            "text": text[:80],
            "labels": ",".join(sorted(set(group["label"]))),
            "sources": ",".join(group["source"]),
        }
        for text, group in conflicting.groupby("key", sort=True)
    ]


def _label_counts(part: pd.DataFrame, labels: tuple[str, ...]) -> dict[str, int]:
    counts = part["label"].value_counts()
    return {label: int(counts.get(label, 0)) for label in labels}


def _require_every_label(
    counts: dict[str, dict[str, int]], frame: pd.DataFrame, splits: tuple[str, ...]
) -> None:
    for name in splits:
        empty = [label for label, n in counts[name].items() if n == 0]
        if empty:
            rows = frame.loc[frame["label"] == empty[0], "source"].tolist()
            shown = ", ".join(rows[:5]) + (", ..." if len(rows) > 5 else "")
            # train is what the two fractions leave: it has no key of its own
            key = (
                "lower prepare.validation_fraction or prepare.test_fraction"
                if name == "train"
                else f"raise prepare.{name}_fraction"
            )
            few = "; a label needs three rows or more, one per split" if len(rows) < 3 else ""
            raise DataValidationError(
                f"the {name} split has no rows of label(s) {empty}; expected every label in "
                f"{name}: the {len(rows)} row(s) of {empty[0]!r} ({shown}) all hash to other "
                f"splits (add data for those labels, or {key}){few}"
            )


def _stratification_gap(frame: pd.DataFrame, labels: tuple[str, ...]) -> float:
    overall = frame["label"].value_counts(normalize=True)
    gaps = [
        abs(
            frame[frame["split"] == s]["label"].value_counts(normalize=True).get(label, 0.0)
            - overall.get(label, 0.0)
        )
        for s in SPLITS
        for label in labels
        if (frame["split"] == s).any()
    ]
    return float(max(gaps, default=0.0))


def _fingerprint(frame: pd.DataFrame, labels: tuple[str, ...]) -> str:
    """sha256 over the label list and the sorted (split, text, label) rows."""
    digest = hashlib.sha256(json.dumps(list(labels)).encode())
    for name, text, label in sorted(
        zip(frame["split"], frame["text"], frame["label"], strict=True)
    ):
        digest.update(f"{name}\t{label}\t{text}\n".encode())
    return digest.hexdigest()


# --- evaluate -------------------------------------------------------------------------


def evaluate(
    task: TextClassification,
    cfg: EvaluateConfig,
    base: ModelConfig,
    max_length: int,
    seed: int,
    prepared_dir: Path,
    candidate_dir: Path,
) -> Evaluation:
    """The candidate and three baselines (majority class, TF-IDF + logistic regression,
    the frozen base encoder) on the same test rows."""
    from pipeline.tasks.text_classification import candidate_window, per_class_report, score
    from pipeline.training.modeling import load_tokenizer, predict_windows

    train = pd.read_parquet(prepared_dir / "train.parquet")
    test = pd.read_parquet(prepared_dir / "test.parquet")
    labels = tuple(json.loads((candidate_dir / "labels.json").read_text(encoding="utf-8")))
    y_test = test["label_id"].to_numpy()

    model = task.load_model(candidate_dir)
    tokenizer = load_tokenizer(candidate_dir)
    window = candidate_window(candidate_dir, tokenizer, max_length)
    logits, truncated = predict_windows(
        model, tokenizer, test["text"].tolist(), window, cfg.batch_size
    )
    predicted = logits.argmax(axis=1)

    metrics: dict[str, Any] = score(y_test, predicted, len(labels))
    metrics["test_rows"] = len(test)
    baselines = _baselines(task, cfg, base, window, seed, train, test, len(labels))
    predictions = _predictions(test, logits, labels)
    predictions["truncated"] = truncated  # some of the text was not read
    for name, (scores, baseline_ids) in baselines.items():
        metrics[name] = scores
        predictions[baseline_column(name)] = [labels[i] for i in baseline_ids]
    return Evaluation(
        metrics=metrics,
        per_class=per_class_report(y_test, predicted, labels),
        predictions=predictions,
        plot=lambda path: _plot_confusion(y_test, predicted, labels, path),
    )


def _baselines(
    task: TextClassification,
    cfg: EvaluateConfig,
    base: ModelConfig,
    window: Any,
    seed: int,
    train: pd.DataFrame,
    test: pd.DataFrame,
    n_labels: int,
) -> dict[str, tuple[dict[str, Any], np.ndarray]]:
    """Each baseline's test scores and its predicted label id per test row."""
    from sklearn.dummy import DummyClassifier

    from pipeline.tasks.text_classification import score

    y_train, y_test = train["label_id"].to_numpy(), test["label_id"].to_numpy()
    majority = DummyClassifier(strategy="most_frequent").fit(train[["text"]], y_train)
    tfidf = tfidf_model(seed).fit(train["text"], y_train)
    found = {
        "majority": np.asarray(majority.predict(test[["text"]])),
        "tfidf": np.asarray(tfidf.predict(test["text"])),
    }
    result = {name: (score(y_test, ids, n_labels), ids) for name, ids in found.items()}
    return result | _frozen_encoder_baselines(task, cfg, base, window, seed, train, test, n_labels)


def _frozen_encoder_baselines(
    task: TextClassification,
    cfg: EvaluateConfig,
    base: ModelConfig,
    window: Any,
    seed: int,
    train: pd.DataFrame,
    test: pd.DataFrame,
    n_labels: int,
) -> dict[str, tuple[dict[str, Any], np.ndarray]]:
    """The base encoder frozen, a linear head trained on its features (a logistic
    regression: equivalent to training only that head), once per feature of
    probe.encoder_features: before_finetuning_pooler (the head's input, BERT's pooler over
    [CLS]) and before_finetuning_mean_pooled (masked mean of the last hidden states).
    before_finetuning, the one the gate's default names, is the stronger of the two on the
    test primary metric (a tie goes to mean_pooled): the harder baseline to beat, so the
    choice on test can only make the gate stricter. Each: scores and predicted label ids."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from pipeline.tasks.text_classification import score
    from pipeline.training.modeling import load_tokenizer, resolve_model_path
    from pipeline.training.probe import FEATURES, encoder_features

    sample = train.sample(n=min(cfg.frozen_baseline_train_rows, len(train)), random_state=seed)
    path = resolve_model_path(base.name_or_path)
    model = task.load_model(path, tuple(str(i) for i in range(n_labels)), base.num_hidden_layers)
    tokenizer = load_tokenizer(path)
    x_train, x_test = (  # the texts read as the candidate reads them (its window)
        encoder_features(model, tokenizer, part["text"].tolist(), window, cfg.batch_size)
        for part in (sample, test)
    )
    found: dict[str, tuple[dict[str, Any], np.ndarray]] = {}
    for name in FEATURES:
        # Standardising first keeps it a linear head (the scaling folds into its weights)
        # but lets the regulariser treat every feature alike; pooler features saturate.
        head = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
        head.fit(x_train[name], sample["label_id"])
        predicted = np.asarray(head.predict(x_test[name]))
        scores = score(test["label_id"].to_numpy(), predicted, n_labels)
        found[f"before_finetuning_{name}"] = (scores | {"train_rows": len(sample)}, predicted)
    primary = task.primary_metric
    pick = max(reversed(FEATURES), key=lambda n: found[f"before_finetuning_{n}"][0][primary])
    scores, predicted = found[f"before_finetuning_{pick}"]
    return {"before_finetuning": (scores | {"features": pick}, predicted)} | found


def _plot_confusion(
    y_true: np.ndarray, y_pred: np.ndarray, labels: tuple[str, ...], path: Path
) -> None:
    from pipeline.plots import write_confusion_matrix

    n = len(labels)
    write_confusion_matrix(
        y_true,
        y_pred,
        list(range(n)),
        path,
        "test split",
        (1.2 * n + 3, 1.2 * n + 2.5),
        display_labels=list(labels),
    )


def _predictions(test: pd.DataFrame, logits: np.ndarray, labels: tuple[str, ...]) -> pd.DataFrame:
    """Per-example predictions: what error analysis reads."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    frame = test[["text", "label", "label_id", "source"]].copy()
    frame["predicted_id"] = logits.argmax(axis=1)
    frame["predicted"] = [labels[i] for i in frame["predicted_id"]]
    frame["confidence"] = probabilities.max(axis=1)
    return frame
