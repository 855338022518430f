"""Reading labelled tables (CSV, JSONL, Parquet) with errors that name the file."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from tuneops.errors import DataValidationError

SUPPORTED_SUFFIXES = (".csv", ".jsonl", ".parquet")


def read_table(path: Path) -> pd.DataFrame:
    """Read one CSV (UTF-8, optional BOM), JSONL or Parquet file into a DataFrame of objects.

    CSV: RFC 4180 quoting (a quoted field may hold commas, quotes and newlines), LF or
    CRLF line ends. JSONL: one JSON object per line, values kept as parsed (a number stays
    a number, so validation can see a label column that mixes numbers and strings).
    """
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataValidationError(
            f"{path}: unsupported file type {suffix!r}; expected one of {SUPPORTED_SUFFIXES}"
        )
    if path.is_file() and path.stat().st_size == 0:
        raise DataValidationError(f"{path}: empty file (0 bytes); expected a header and rows")
    try:
        if suffix == ".csv":
            frame = pd.read_csv(
                path,
                encoding="utf-8-sig",
                dtype=object,
                keep_default_na=False,
                na_values=[""],
                quoting=csv.QUOTE_MINIMAL,
            )
        elif suffix == ".jsonl":
            frame = _read_jsonl(path)
        else:
            frame = pd.read_parquet(path)
    except UnicodeDecodeError:
        read_utf8(path)  # raises, naming the line and byte
        raise
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OSError) as exc:
        raise DataValidationError(f"{path}: cannot be read as {suffix[1:]}: {exc}") from exc
    return frame


def read_utf8(path: Path) -> str:
    """The file as text (UTF-8, a leading BOM dropped); an error names the first bad line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataValidationError(
            f"{path}:{line}: not valid UTF-8 (byte {exc.start}: {data[exc.start : exc.end]!r}); "
            f"expected UTF-8 text (re-save the file as UTF-8)"
        ) from exc


def _read_jsonl(path: Path) -> pd.DataFrame:
    records = [record for _, record in jsonl_records(path)]
    # dtype=object: an int column with a null must not turn into floats (1 -> 1.0).
    return pd.DataFrame(records, dtype=object)


def jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; an error names the line."""
    for number, line in enumerate(read_utf8(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataValidationError(
                f"{path}:{number}: not valid JSON ({exc.msg}, column {exc.colno}); "
                f"expected one JSON object per line"
            ) from exc
        if not isinstance(record, dict):
            raise DataValidationError(
                f"{path}:{number}: expected a JSON object, found {type(record).__name__}"
            )
        yield number, record


def raw_files(dataset_dir: Path, suffixes: tuple[str, ...] = SUPPORTED_SUFFIXES) -> list[Path]:
    """The dataset's batch files in name order (batches are appended, never rewritten)."""
    if not dataset_dir.is_dir():
        raise DataValidationError(
            f"{dataset_dir}: raw dataset folder not found (run `tuneops fetch-data`)"
        )
    files = sorted(p for p in dataset_dir.iterdir() if p.suffix.lower() in suffixes)
    if not files:
        raise DataValidationError(
            f"{dataset_dir}: no data files; expected {', '.join(suffixes)} files"
        )
    return files


def read_raw(
    dataset_dir: Path, text_column: str, label_column: str, max_rows: int | None = None
) -> pd.DataFrame:
    """All batches of a raw dataset as one frame with columns text, label, source.

    `source` is "file:row" (1-based data row, header excluded) so that every later
    error can point at the exact input line.
    """
    frames = []
    for path in raw_files(dataset_dir):
        frame = read_table(path)
        missing = [c for c in (text_column, label_column) if c not in frame.columns]
        if missing:
            raise DataValidationError(
                f"{path}: missing column(s) {missing}; expected {text_column!r} and "
                f"{label_column!r}, found {list(frame.columns)}"
            )
        if frame.empty:
            raise DataValidationError(
                f"{path}: no data rows (a header only); expected at least one labelled row"
            )
        frames.append(
            pd.DataFrame(
                {
                    "text": frame[text_column],
                    "label": frame[label_column],
                    "source": [f"{path.name}:{i + 1}" for i in range(len(frame))],
                }
            )
        )
    raw = pd.concat(frames, ignore_index=True)
    return _slice(raw, max_rows) if max_rows else raw


def _slice(raw: pd.DataFrame, max_rows: int) -> pd.DataFrame:
    """`max_rows` rows chosen by a hash of their text, kept in file order.

    Not the first N rows: files are often sorted by label. A hash keeps the slice
    independent of row order and stable as batches are appended.
    """
    # Salted, so that the slice is not correlated with the split (which hashes the text too).
    chosen = rows_by_text_hash(raw, max_rows, salt="slice")
    return raw.loc[chosen].reset_index(drop=True)


def rows_by_text_hash(frame: pd.DataFrame, rows: int, salt: str) -> list[Any]:
    """Index labels of the `rows` rows with the smallest sha256("<salt>:<text>"), in
    frame order: a choice independent of row order and stable as rows are appended."""
    keys = frame["text"].map(lambda t: hashlib.sha256(f"{salt}:{t}".encode()).hexdigest())
    return sorted(keys.sort_values(kind="stable").index[:rows])


def read_label_file(dataset_dir: Path) -> tuple[str, ...] | None:
    """The frozen label set of a dataset (labels.json beside its batches), if it has one."""
    path = dataset_dir / "labels.json"
    if not path.exists():
        return None
    labels = json.loads(path.read_text(encoding="utf-8"))
    if not (isinstance(labels, list) and all(isinstance(x, str) for x in labels) and labels):
        raise DataValidationError(f"{path}: expected a non-empty JSON list of label strings")
    return tuple(labels)
