"""Reading labelled tables (CSV, JSONL, Parquet) with errors that name the file."""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from tuneops.errors import DataValidationError
from tuneops.paths import atomic_write_text

SUPPORTED_SUFFIXES = (".csv", ".jsonl", ".parquet")


CANDIDATE_DELIMITERS = ",;\t|"


def read_table(path: Path, encoding: str = "utf-8", delimiter: str | None = None) -> pd.DataFrame:
    """Read one CSV, JSONL or Parquet file (text in `encoding`) into a DataFrame of objects.

    CSV: RFC 4180 quoting (a quoted field may hold the delimiter, quotes and newlines), LF
    or CRLF line ends, any cell size; `delimiter` None sniffs it from the header line
    (csv.Sniffer over , ; tab |). UTF-8 may start with a BOM. JSONL: one JSON object per
    line, values kept as parsed (a number stays a number, so validation can see a label
    column that mixes numbers and strings).
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
                sep=delimiter or sniff_delimiter(path, encoding),
                encoding=_codec(encoding),
                dtype=object,
                keep_default_na=False,
                na_values=[""],
                quoting=csv.QUOTE_MINIMAL,
            )
        elif suffix == ".jsonl":
            frame = _read_jsonl(path, encoding)
        else:
            frame = pd.read_parquet(path)
    except UnicodeDecodeError:
        read_text(path, encoding)  # raises, naming the line and byte
        raise
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OSError) as exc:
        raise DataValidationError(f"{path}: cannot be read as {suffix[1:]}: {exc}") from exc
    return frame


def sniff_delimiter(path: Path, encoding: str = "utf-8") -> str:
    """The delimiter of a CSV file's header line (csv.Sniffer); "," when it cannot tell
    (a one-column header). The header only: quoted texts in the rows hold every kind of
    punctuation, and a header is what must split into the configured columns."""
    # A bad byte here is named by the full read that follows; the header is only sniffed.
    with path.open(encoding=_codec(encoding), errors="replace", newline="") as handle:
        header = handle.readline().rstrip("\r\n")
    try:
        return csv.Sniffer().sniff(header, delimiters=CANDIDATE_DELIMITERS).delimiter
    except csv.Error:
        return ","


def _codec(encoding: str) -> str:
    # utf-8-sig reads UTF-8 with or without a BOM (spreadsheet exports add one).
    return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """The file as text (a leading UTF-8 BOM dropped); an error names the first bad line
    and the key that names the encoding."""
    data = path.read_bytes()
    try:
        return data.decode(_codec(encoding))
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        name = "UTF-8" if _codec(encoding) == "utf-8-sig" else encoding
        raise DataValidationError(
            f"{path}:{line}: not valid {name} (byte {exc.start}: "
            f"{data[exc.start : exc.end]!r}); expected {name} text: set data.encoding to the "
            f"file's encoding (e.g. latin-1, cp1252), or re-save it as UTF-8"
        ) from exc


def _read_jsonl(path: Path, encoding: str = "utf-8") -> pd.DataFrame:
    records = [record for _, record in jsonl_records(path, encoding)]
    # dtype=object: an int column with a null must not turn into floats (1 -> 1.0).
    return pd.DataFrame(records, dtype=object)


def jsonl_records(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; an error names the line."""
    for number, line in enumerate(read_text(path, encoding).splitlines(), start=1):
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
    dataset_dir: Path,
    text_column: str,
    label_column: str,
    max_rows: int | None = None,
    encoding: str = "utf-8",
    delimiter: str | None = None,
) -> pd.DataFrame:
    """All batches of a raw dataset as one frame with columns text, label, source.

    `source` is "file:row" (1-based data row, header excluded) so that every later
    error can point at the exact input line.
    """
    frames = []
    for path in raw_files(dataset_dir):
        frame = read_table(path, encoding, delimiter)
        missing = [c for c in (text_column, label_column) if c not in frame.columns]
        if missing:
            raise DataValidationError(
                f"{path}: missing column(s) {missing}; expected {text_column!r} and "
                f"{label_column!r} (data.text_column, data.label_column), found "
                f"{list(frame.columns)}{_delimiter_hint(path, encoding, delimiter)}"
            )
        if frame.empty:
            raise DataValidationError(
                f"{path}: no data rows (a header only); expected at least one labelled row"
            )
        frames.append(
            pd.DataFrame(
                {
                    "text": frame[text_column],
                    "label": _labels(frame[label_column]),
                    "source": [f"{path.name}:{i + 1}" for i in range(len(frame))],
                }
            )
        )
    raw = pd.concat(frames, ignore_index=True)
    return _slice(raw, max_rows) if max_rows else raw


def _labels(column: pd.Series) -> pd.Series:
    """Whole numbers as ints: 1.0 and 1 are one label, "1" (a JSONL export may write
    either; a Parquet int column with a null is stored as floats). Object dtype, so that
    pandas does not turn them back into floats beside a missing value. CSV cells are
    text, compared as written ("1.0" is not "1")."""
    values = [int(v) if isinstance(v, float) and v.is_integer() else v for v in column.tolist()]
    return pd.Series(values, index=column.index, dtype=object)


def _delimiter_hint(path: Path, encoding: str, delimiter: str | None) -> str:
    """For a CSV read with a delimiter its header does not use: which one it looks like."""
    if path.suffix.lower() != ".csv" or delimiter is None:
        return ""
    sniffed = sniff_delimiter(path, encoding)
    if sniffed == delimiter:
        return ""
    return f"; the header looks {sniffed!r}-delimited: set data.delimiter: {sniffed!r}"


def _slice(raw: pd.DataFrame, max_rows: int) -> pd.DataFrame:
    """`max_rows` rows chosen by a hash of their text, kept in file order.

    Not the first N rows: files are often sorted by label. A hash keeps the slice
    independent of row order. It is a sample of the current data, not a fixed subset: an
    appended row whose hash is smaller takes the place of the row with the largest one
    (audit m2), so a sliced run's rows, test rows included, change as batches are appended.
    """
    # Salted, so that the slice is not correlated with the split (which hashes the text too).
    chosen = rows_by_text_hash(raw, max_rows, salt="slice")
    return raw.loc[chosen].reset_index(drop=True)


def rows_by_text_hash(frame: pd.DataFrame, rows: int, salt: str) -> list[Any]:
    """Index labels of the `rows` rows with the smallest sha256("<salt>:<text>"), in
    frame order: a choice independent of row order (not of appended rows)."""
    keys = frame["text"].map(lambda t: hashlib.sha256(f"{salt}:{t}".encode()).hexdigest())
    return sorted(keys.sort_values(kind="stable").index[:rows])


def freeze_labels(dataset_dir: Path, labels: tuple[str, ...]) -> Path:
    """Write the label set inferred from a dataset that passed validation as its
    labels.json: versioned with the batches (it is under data/raw/), it is the set every
    later batch is checked against, and the label order of every model trained on it."""
    path = dataset_dir / "labels.json"
    atomic_write_text(path, json.dumps(list(labels)) + "\n")
    return path


def read_label_file(dataset_dir: Path) -> tuple[str, ...] | None:
    """The frozen label set of a dataset (labels.json beside its batches), if it has one."""
    path = dataset_dir / "labels.json"
    if not path.exists():
        return None
    labels = json.loads(path.read_text(encoding="utf-8"))
    if not (isinstance(labels, list) and all(isinstance(x, str) for x in labels) and labels):
        raise DataValidationError(f"{path}: expected a non-empty JSON list of label strings")
    return tuple(labels)
