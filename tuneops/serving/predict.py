"""`tuneops predict`: labels and probabilities for texts, or for a CSV/JSONL file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from tuneops.errors import ConfigError, DataValidationError
from tuneops.paths import atomic_write_text
from tuneops.runtime import OnnxBundle

READERS = {".csv": "csv", ".jsonl": "jsonl"}


def read_texts(path: Path, text_column: str) -> pd.DataFrame:
    """The input rows; every `text_column` value must be a non-empty string."""
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(f"{path}: expected a .csv or .jsonl file, found {path.suffix!r}")
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        if kind == "csv":
            frame = pd.read_csv(
                path, dtype=str, keep_default_na=False, skip_blank_lines=False, encoding="utf-8"
            )
        else:
            frame = pd.read_json(path, lines=True, dtype=False)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataValidationError(f"{path}: cannot be read as {kind}: {exc}") from exc
    if text_column not in frame.columns:
        raise DataValidationError(
            f"{path}: no {text_column!r} column; found {list(frame.columns)} "
            f"(choose one with --text-column)"
        )
    for row, value in enumerate(frame[text_column], start=2 if kind == "csv" else 1):
        if not isinstance(value, str) or not value.strip():
            line = "line" if kind == "jsonl" else "row"
            raise DataValidationError(
                f"{path}: {line} {row}, field {text_column!r}: expected a non-empty text, "
                f"found {value!r}"
            )
    return frame


def predict_file(
    classifier: OnnxBundle, input_path: Path, text_column: str, batch_size: int, flat: bool = False
) -> list[dict[str, Any]]:
    """Every input row with its prediction added: the bundle's JSON record, or with
    `flat` its flat columns (for a CSV: p_<label> probabilities, entities as JSON)."""
    frame = read_texts(input_path, text_column)
    predictions: list[Any] = list(classifier.predict(frame[text_column].tolist(), batch_size))
    shape = classifier.frame_row if flat else classifier.record
    return [row | shape(p) for row, p in zip(frame.to_dict("records"), predictions, strict=True)]


def write_records(records: list[dict[str, Any]], output_path: Path) -> None:
    """.jsonl: one JSON object per record; .csv: one row per (flat) record."""
    suffix = output_path.suffix.lower()
    if suffix == ".jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    elif suffix == ".csv":
        text = pd.DataFrame(records).to_csv(index=False)
    else:
        raise ConfigError(f"{output_path}: expected a .csv or .jsonl output file")
    atomic_write_text(output_path, text)
