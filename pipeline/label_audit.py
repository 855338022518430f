"""label audit: which train rows' labels look wrong, before any model trains on them.

Confident learning (cleanlab: Northcutt et al., 2021) compares each row's given label with
out-of-sample predicted probabilities: every train row is scored by a model fitted on the
other folds (sklearn's cross_val_predict, FOLDS stratified folds seeded by train.seed).
The model is the task's cheap one, TF-IDF + logistic regression for text classification
(the same settings as its TF-IDF baseline): seconds on CPU for thousands of rows, no GPU,
and independent of the model being fine-tuned, so the audit neither waits for training
nor learns the fine-tuned model's own mistakes. cleanlab's find_label_issues flags the
rows (ranked by self-confidence, the probability of the given label), and its
get_label_quality_scores gives every row a score (the same self-confidence: lower is more
suspect). Nothing here is reimplemented.

prepare.label_issues: report writes reports/label_issues.{json,md} and leaves the splits
as they are; drop also removes the flagged rows from train (never from validation or
test: the test set stays comparable between runs); off skips the audit.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tuneops.errors import DataValidationError
from tuneops.paths import atomic_write_text

FOLDS = 5
REPORT = "label_issues"  # reports/label_issues.{json,md}
MD_TEXT_CHARS = 200  # texts are cut to this many characters in the .md (whole in the .json)


@dataclass
class LabelAudit:
    """What the audit found, as reports/label_issues.json records it."""

    setting: str  # prepare.label_issues
    audited: bool
    reason: str = ""  # why not audited
    method: str = ""
    seed: int | None = None
    folds: int = FOLDS
    text_column: str = "text"
    label_column: str = "label"
    rows_audited: int = 0
    flagged: int = 0
    flagged_share: float = 0.0
    dropped: int = 0
    # Per given label: rows audited, rows flagged.
    by_label: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0
    # The flagged rows, most suspect first: source (file:row), the given label (under the
    # user's label column name), suggested (the out-of-sample argmax), label_quality, text.
    issues: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The counts (manifest.json's label_issues; the MLflow metrics' values)."""
        return {
            "setting": self.setting,
            "audited": self.audited,
            "rows_audited": self.rows_audited,
            "flagged": self.flagged,
            "flagged_share": self.flagged_share,
            "dropped": self.dropped,
        }


def skipped(setting: str, reason: str) -> LabelAudit:
    """An audit that did not run, and why (the reports say so; prepare prints it)."""
    return LabelAudit(setting=setting, audited=False, reason=reason)


def audit(
    train: pd.DataFrame,
    labels: tuple[str, ...],
    model: Any,
    setting: str,
    seed: int,
    columns: dict[str, str],
) -> tuple[LabelAudit, pd.Index]:
    """Audit the `train` rows (columns text, label, label_id, source) with `model` (an
    unfitted sklearn classifier over texts); the audit and the frame index of the flagged
    rows. `columns`: the user's names of text and label (what the reports say).

    A label with fewer than FOLDS train rows cannot be in every fold's training part: the
    audit is skipped (report) or refused (drop: DataValidationError naming the key)."""
    counts = train["label"].value_counts().reindex(list(labels), fill_value=0)
    few = counts[counts < FOLDS]
    if len(few):
        reason = (
            f"prepare.label_issues: {setting}: the audit needs {FOLDS} train rows of every "
            f"label ({FOLDS}-fold cross-validation), label {few.index[0]!r} has "
            f"{int(few.iloc[0])}"
        )
        if setting == "drop":
            raise DataValidationError(f"{reason}; add rows of it, or set it to report or off")
        return skipped(setting, reason), pd.Index([])
    started = time.perf_counter()
    given = train["label_id"].to_numpy()
    pred_probs = out_of_sample_probabilities(model, train["text"].tolist(), given, seed)
    ranked, quality = confident_learning(given, pred_probs)
    suggested = pred_probs.argmax(axis=1)
    text_column, label_column = columns["text"], columns["label"]
    issues = [
        {
            "source": str(train["source"].iat[i]),
            label_column: labels[given[i]],
            "suggested": labels[suggested[i]],
            "label_quality": round(float(quality[i]), 6),
            text_column: str(train["text"].iat[i]),
        }
        for i in ranked
    ]
    flagged_of = pd.Series([labels[given[i]] for i in ranked], dtype=object).value_counts()
    result = LabelAudit(
        setting=setting,
        audited=True,
        method=(
            f"TF-IDF + logistic regression, out-of-sample probabilities from {FOLDS} "
            "stratified folds (sklearn cross_val_predict); cleanlab find_label_issues ranked "
            "by self_confidence, label_quality from cleanlab get_label_quality_scores"
        ),
        seed=seed,
        text_column=text_column,
        label_column=label_column,
        rows_audited=len(train),
        flagged=len(ranked),
        flagged_share=round(len(ranked) / len(train), 6),
        dropped=len(ranked) if setting == "drop" else 0,
        by_label={
            label: {"audited": int(counts[label]), "flagged": int(flagged_of.get(label, 0))}
            for label in labels
        },
        seconds=round(time.perf_counter() - started, 3),
        issues=issues,
    )
    return result, train.index[ranked]


def out_of_sample_probabilities(
    model: Any, texts: list[str], label_ids: np.ndarray, seed: int
) -> np.ndarray:
    """Each row's predicted probabilities from `model` fitted on the other folds."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    folds = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=seed)
    probabilities: np.ndarray = cross_val_predict(
        model, texts, label_ids, cv=folds, method="predict_proba"
    )
    return probabilities


def confident_learning(label_ids: np.ndarray, pred_probs: np.ndarray) -> tuple[Any, np.ndarray]:
    """cleanlab: the positions of the rows with label issues, most suspect first, and every
    row's label-quality score (self-confidence)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    # n_jobs=1: the rows are few, and worker processes would only cost start-up time
    ranked = find_label_issues(
        label_ids, pred_probs, return_indices_ranked_by="self_confidence", n_jobs=1
    )
    quality = get_label_quality_scores(label_ids, pred_probs, method="self_confidence")
    return ranked, np.asarray(quality)


def write_reports(found: LabelAudit, reports_dir: Path) -> list[Path]:
    """reports/label_issues.json and .md (each atomically); their paths."""
    from dataclasses import asdict

    report = asdict(found)
    json_path, md_path = reports_dir / f"{REPORT}.json", reports_dir / f"{REPORT}.md"
    reports_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json_path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(md_path, to_markdown(report))
    return [json_path, md_path]


def to_markdown(report: dict[str, Any], limit: int | None = None) -> str:
    """reports/label_issues.md from the .json's content; `limit`: show only the first rows
    (the Prefect artifact), None: every flagged row."""
    if not report["audited"]:
        return f"## Label issues: not audited\n\n{report['reason']}\n"
    label, text = report["label_column"], report["text_column"]
    lines = [
        f"## Label issues: {report['flagged']} of {report['rows_audited']} train rows "
        f"flagged ({report['flagged_share']:.1%}); prepare.label_issues: {report['setting']}"
        + (f", {report['dropped']} dropped from train" if report["dropped"] else ""),
        "",
        report["method"] + f"; seed {report['seed']}.",
        "",
        f"| given {label} | rows audited | flagged |",
        "| --- | --- | --- |",
        *(
            f"| {_cell(name)} | {n['audited']} | {n['flagged']} |"
            for name, n in report["by_label"].items()
        ),
        "",
        f"| source | {label} | suggested | label quality | {text} |",
        "| --- | --- | --- | --- | --- |",
    ]
    shown = report["issues"] if limit is None else report["issues"][:limit]
    for issue in shown:
        cut = issue[text][:MD_TEXT_CHARS] + ("..." if len(issue[text]) > MD_TEXT_CHARS else "")
        lines.append(
            f"| {issue['source']} | {_cell(issue[label])} | {_cell(issue['suggested'])} | "
            f"{issue['label_quality']:.4f} | {_cell(cut)} |"
        )
    if len(shown) < len(report["issues"]):
        lines += ["", f"({len(report['issues']) - len(shown)} more in reports/label_issues.md)"]
    return "\n".join(lines) + "\n"


def _cell(value: str) -> str:
    """A value as one markdown table cell: pipes escaped, line breaks as spaces."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def metrics(report: dict[str, Any]) -> dict[str, float]:
    """The audit's counts as MLflow metrics (label_issues.flagged, ...); none when it did
    not run."""
    if not report.get("audited"):
        return {}
    keys = ("rows_audited", "flagged", "flagged_share", "dropped")
    return {f"label_issues.{key}": float(report[key]) for key in keys}
