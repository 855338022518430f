"""drift: is a batch of labelled texts drawn from the data the champion was trained on?

Three two-sample tests of the batch against a reference (the champion's train split, see
tuneops.stages.drift_reference), each a statistic and a p-value from scipy or sklearn:

- label: chi-squared test of independence (scipy.stats.chi2_contingency) on the 2 x K
  table of batch and reference label counts;
- length: Kolmogorov-Smirnov (scipy.stats.ks_2samp) on the texts' lengths in whitespace
  words. Words, not the model's tokens: no tokenizer to load (no model files needed,
  milliseconds), and sub-word counts of one language rise with word counts, so a shift
  in one shows in the other;
- content: a domain classifier (TF-IDF + logistic regression) told to separate batch rows
  from reference rows; its stratified 5-fold cross-validated ROC AUC is the statistic
  (0.5: indistinguishable) and sklearn's permutation_test_score gives the p-value (the
  share of label-permuted fits that score as high). CPU, seconds: the TF-IDF is fitted once
  on both samples' texts (unsupervised, no batch/reference label is seen), liblinear fits
  each fold, the reference is a seeded sample of at most REFERENCE_MAX_ROWS rows, and
  there are just enough permutations for the p-value to fall below the threshold
  (its smallest value is 1 / (permutations + 1)).

A statistic whose p-value is below the threshold (retrain.drift_p_value) is a shift.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tuneops.paths import atomic_write_text

REFERENCE_MAX_ROWS = 2000
FOLDS = 5
MIN_PERMUTATIONS = 50
NAMES = {"label": "label chi2", "length": "length KS", "content": "content AUC"}


@dataclass(frozen=True)
class Statistic:
    name: str  # label, length or content
    test: str  # what computed it
    statistic: float | None
    p_value: float | None  # None: too few rows to compute it (never a shift)
    note: str = ""

    def shifted(self, threshold: float) -> bool:
        return self.p_value is not None and self.p_value < threshold

    def short(self) -> str:
        """`label chi2 p=0.41`, `content AUC 0.97 p=0.0099`."""
        if self.p_value is None:
            return f"{NAMES[self.name]} not computed ({self.note})"
        value = f" {self.statistic:.3f}" if self.name == "content" else ""
        return f"{NAMES[self.name]}{value} p={self.p_value:.3g}"


@dataclass(frozen=True)
class DriftResult:
    statistics: tuple[Statistic, ...]
    threshold: float
    batch_rows: int
    reference_rows: int  # rows compared (after the reference sample)
    reference: str  # what the reference is, in words

    @property
    def shifted(self) -> list[Statistic]:
        return [s for s in self.statistics if s.shifted(self.threshold)]

    @property
    def verdict(self) -> str:
        return "drift" if self.shifted else "no drift"

    def line(self) -> str:
        """One line: "no drift (label chi2 p=…, length KS p=…, content AUC … p=…)", or
        "drift: <the shifted statistics> (p < threshold); …"."""
        everything = ", ".join(s.short() for s in self.statistics)
        if not self.shifted:
            return f"no drift ({everything})"
        names = ", ".join(NAMES[s.name] for s in self.shifted)
        return f"drift in {names} (p < {self.threshold:g}; {everything})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "threshold": self.threshold,
            "batch_rows": self.batch_rows,
            "reference_rows": self.reference_rows,
            "reference": self.reference,
            "statistics": [
                asdict(s) | {"verdict": "drift" if s.shifted(self.threshold) else "no drift"}
                for s in self.statistics
            ],
        }

    def to_markdown(self) -> str:
        rows = [
            f"| {NAMES[s.name]} | {s.test} | {_fmt(s.statistic)} | {_fmt(s.p_value)} | "
            f"{self.threshold:g} | {'drift' if s.shifted(self.threshold) else 'no drift'} |"
            for s in self.statistics
        ]
        return "\n".join(
            [
                f"## Drift: {self.verdict}",
                "",
                f"Batch: {self.batch_rows} rows; reference: {self.reference_rows} rows of "
                f"{self.reference}.",
                "",
                "| statistic | test | value | p-value | threshold | verdict |",
                "| --- | --- | --- | --- | --- | --- |",
                *rows,
                "",
            ]
        )

    def write(self, reports_dir: Path) -> tuple[Path, Path]:
        """reports/drift.json and reports/drift.md."""
        reports_dir.mkdir(parents=True, exist_ok=True)
        json_path, md_path = reports_dir / "drift.json", reports_dir / "drift.md"
        atomic_write_text(json_path, json.dumps(self.to_dict(), indent=2) + "\n")
        atomic_write_text(md_path, self.to_markdown())
        return json_path, md_path


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def compare(
    batch: pd.DataFrame,
    reference: pd.DataFrame,
    threshold: float,
    reference_name: str,
    seed: int = 0,
) -> DriftResult:
    """The three statistics of `batch` against `reference` (frames with text and label
    columns); the reference is sampled (seeded) to at most REFERENCE_MAX_ROWS rows."""
    if len(reference) > REFERENCE_MAX_ROWS:
        reference = reference.sample(REFERENCE_MAX_ROWS, random_state=seed)
    batch_texts = batch["text"].astype(str).tolist()
    reference_texts = reference["text"].astype(str).tolist()
    statistics = (
        label_shift(batch["label"].astype(str), reference["label"].astype(str)),
        length_shift(batch_texts, reference_texts),
        content_shift(batch_texts, reference_texts, threshold, seed),
    )
    return DriftResult(statistics, threshold, len(batch), len(reference), reference_name)


def label_shift(batch: pd.Series, reference: pd.Series) -> Statistic:
    from scipy.stats import chi2_contingency

    test = "chi2_contingency (batch vs reference label counts)"
    table = pd.DataFrame(
        {"batch": batch.value_counts(), "reference": reference.value_counts()}
    ).fillna(0)
    if len(table) < 2:  # one label in both: the counts cannot differ in proportion
        return Statistic("label", test, 0.0, 1.0, "one label only")
    chi2, p_value, _, _ = chi2_contingency(table.T.to_numpy())
    return Statistic("label", test, float(chi2), float(p_value))


def length_shift(batch: list[str], reference: list[str]) -> Statistic:
    from scipy.stats import ks_2samp

    words = [np.array([len(t.split()) for t in texts]) for texts in (batch, reference)]
    found = ks_2samp(words[0], words[1])
    note = f"mean words: batch {words[0].mean():.1f}, reference {words[1].mean():.1f}"
    return Statistic(
        "length", "ks_2samp (whitespace words)", float(found.statistic), float(found.pvalue), note
    )


def permutations_for(threshold: float) -> int:
    """The fewest permutations (at least MIN_PERMUTATIONS) whose smallest p-value,
    1 / (permutations + 1), is below `threshold`: 100 at 0.01."""
    return max(MIN_PERMUTATIONS, math.ceil(1 / threshold))


def content_shift(batch: list[str], reference: list[str], threshold: float, seed: int) -> Statistic:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, permutation_test_score

    permutations = permutations_for(threshold)
    test = (
        f"TF-IDF + logistic regression, {FOLDS}-fold ROC AUC, permutation_test_score "
        f"({permutations} permutations)"
    )
    if min(len(batch), len(reference)) < FOLDS:
        return Statistic("content", test, None, None, f"fewer than {FOLDS} rows on a side")
    features = TfidfVectorizer(sublinear_tf=True).fit_transform(batch + reference)
    is_batch = np.r_[np.ones(len(batch), dtype=int), np.zeros(len(reference), dtype=int)]
    auc, _, p_value = permutation_test_score(
        LogisticRegression(solver="liblinear"),
        features,
        is_batch,
        cv=StratifiedKFold(FOLDS, shuffle=True, random_state=seed),
        scoring="roc_auc",
        n_permutations=permutations,
        random_state=seed,
    )
    return Statistic("content", test, float(auc), float(p_value))


# --- what is compared ------------------------------------------------------------------


def batch_file(source: str) -> str:
    """The batch file of a prepared row's source ("batch-0003.csv:12" -> "batch-0003.csv")."""
    return source.rsplit(":", 1)[0]


def split_by_files(prepared_dir: Path, files: set[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(reference, new): the prepared train rows read from `files` (the batch files of the
    champion's data version: its train split, as batches are immutable and splits a hash of
    the text), and the prepared rows of every split read from other files (rows new since)."""
    frames = {s: pd.read_parquet(prepared_dir / f"{s}.parquet") for s in SPLITS}
    train = frames["train"]
    reference = train[train["source"].map(batch_file).isin(files)]
    every = pd.concat(frames.values(), ignore_index=True)
    new = every[~every["source"].map(batch_file).isin(files)]
    return reference.reset_index(drop=True), new.reset_index(drop=True)


SPLITS = ("train", "validation", "test")
