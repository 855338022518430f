"""validate for token classification: the same GX run and reports, over one row per sentence.

GX has no expectation over a sequence, so two per-sentence facts are computed here and
then checked by GX like any column: `bio_error` (the first IOB2 violation, see
tokens.bio_error) and `unknown_tag` (the first tag outside the tag set). Both must be null.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import great_expectations as gx
import pandas as pd

from tuneops.config import DataConfig, ValidateConfig
from tuneops.pipeline.io import raw_files, read_label_file
from tuneops.pipeline.tokens import OUTSIDE, TOKEN_SUFFIXES, bio_error, read_raw_sentences
from tuneops.pipeline.validate import ValidationResult, run_suite, write_reports

COLUMNS = ["text", "n_tokens", "n_tags", "bio_error", "unknown_tag"]


def validate_tokens(
    data: DataConfig, cfg: ValidateConfig, dataset_dir: Path, reports_dir: Path
) -> ValidationResult:
    sentences = read_raw_sentences(dataset_dir, data.text_column, data.label_column, data.max_rows)
    labels = tuple(data.labels) if data.labels else read_label_file(dataset_dir)
    label_source = "params" if data.labels else "labels.json"
    if labels is None:
        labels = (OUTSIDE, *sorted({t for s in sentences for t in s.tags} - {OUTSIDE}))
        label_source = "inferred"
    known = set(labels)
    frame = pd.DataFrame(
        {
            "text": [" ".join(s.tokens) for s in sentences],
            "n_tokens": [len(s.tokens) for s in sentences],
            "n_tags": [len(s.tags) for s in sentences],
            "bio_error": [bio_error(s.tags) for s in sentences],
            "unknown_tag": [next((t for t in s.tags if t not in known), None) for s in sentences],
            "source": [s.source for s in sentences],
        }
    )
    checks = run_suite(
        frame, _suite(cfg), COLUMNS, reports_dir / "data_docs", "token_classification_raw"
    )
    counts = Counter(t for s in sentences for t in s.tags)
    files = raw_files(dataset_dir, TOKEN_SUFFIXES)
    result = ValidationResult(
        success=all(c.success for c in checks),
        rows=len(frame),
        files=[str(p) for p in files],
        labels=labels,
        label_source=label_source,
        label_counts={tag: counts.get(tag, 0) for tag in labels},
        checks=checks,
        report_json=reports_dir / "validation.json",
        report_html=reports_dir / "validation.html",
    )
    write_reports(result)
    return result


def _suite(cfg: ValidateConfig) -> list[Any]:
    ex = gx.expectations
    return [
        ex.ExpectColumnValuesToBeBetween(
            column="n_tokens", min_value=max(cfg.min_tokens, 1), max_value=cfg.max_tokens
        ),
        ex.ExpectColumnPairValuesToBeEqual(column_A="n_tokens", column_B="n_tags"),
        ex.ExpectColumnValuesToBeNull(column="bio_error"),
        ex.ExpectColumnValuesToBeNull(column="unknown_tag"),
        ex.ExpectColumnProportionOfUniqueValuesToBeBetween(
            column="text", min_value=1.0 - cfg.max_duplicate_rate
        ),
    ]
