"""Reading the user's raw files: encodings, delimiters, big cells, errors in their terms."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline.io import read_raw
from pipeline.tasks.iob2 import read_raw_sentences
from pipeline.validate import validate
from tests.conftest import TEXT
from tuneops.config import DataConfig, ValidateConfig, validate_params
from tuneops.errors import ConfigError, DataValidationError

ROWS = [
    (f"post {i}: {'so good' if i % 2 else 'so bad'}", "pos" if i % 2 else "neg") for i in range(30)
]


def latin1_csv(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["review,sentiment", *(f"{t},{label}" for t, label in ROWS), "un café très froid,neg"]
    (folder / "posts.csv").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    return folder


def test_a_latin1_file_reads_right_with_data_encoding(tmp_path: Path) -> None:
    frame = read_raw(latin1_csv(tmp_path / "ds"), "review", "sentiment", encoding="latin-1")
    assert frame.iloc[-1].to_dict() == {
        "text": "un café très froid",
        "label": "neg",
        "source": "posts.csv:31",
    }


def test_a_non_utf8_file_names_the_line_and_the_key_to_set(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError) as caught:
        read_raw(latin1_csv(tmp_path / "ds"), "review", "sentiment")
    assert str(caught.value) == (
        f"{tmp_path / 'ds' / 'posts.csv'}:32: not valid UTF-8 (byte 628: b'\\xe9'); expected "
        "UTF-8 text: set data.encoding to the file's encoding (e.g. latin-1, cp1252), or "
        "re-save it as UTF-8"
    )


def test_jsonl_and_conll_are_read_in_data_encoding(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    folder.mkdir()
    record = {"review": "naïve but fun", "sentiment": "pos"}
    (folder / "a.jsonl").write_bytes(
        (json.dumps(record, ensure_ascii=False) + "\n").encode("cp1252")
    )
    frame = read_raw(folder, "review", "sentiment", encoding="cp1252")
    assert frame["text"].tolist() == ["naïve but fun"]
    tokens = tmp_path / "ner"
    tokens.mkdir()
    (tokens / "a.conll").write_bytes("Zürich B-LOC\nist O\n".encode("latin-1"))
    [sentence] = read_raw_sentences(tokens, "tokens", "tags", encoding="latin-1")
    assert sentence.tokens == ["Zürich", "ist"]


def test_an_unknown_encoding_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"data\.encoding: .*unknown encoding 'klingon-8'"):
        validate_params({"data": {"encoding": "klingon-8"}}, "params.yaml")


def semicolon_csv(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(
        [(f"{t}, really", label) for t, label in ROWS], columns=["review", "sentiment"]
    )
    frame.to_csv(folder / "posts.csv", sep=";", index=False)
    return folder


def test_a_semicolon_delimited_file_is_sniffed(tmp_path: Path) -> None:
    frame = read_raw(semicolon_csv(tmp_path / "ds"), "review", "sentiment")
    assert frame.iloc[0].to_dict() == {
        "text": "post 0: so bad, really",
        "label": "neg",
        "source": "posts.csv:1",
    }
    assert len(frame) == 30


def test_a_semicolon_file_read_as_commas_says_so(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError) as caught:
        read_raw(semicolon_csv(tmp_path / "ds"), "review", "sentiment", delimiter=",")
    assert str(caught.value).endswith("; the header looks ';'-delimited: set data.delimiter: ';'")


def test_a_cell_beyond_the_csv_modules_field_limit_reads_fine(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    folder.mkdir()
    big = "word " * (csv.field_size_limit() // 4)
    pd.DataFrame([(big, "pos"), ("short", "neg")], columns=["review", "sentiment"]).to_csv(
        folder / "posts.csv", index=False
    )
    frame = read_raw(folder, "review", "sentiment")
    assert frame["text"].map(len).tolist() == [len(big), 5]


def test_validation_names_the_users_columns_and_the_key_to_change(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    folder.mkdir()
    long = [("x" * (60 + i), "pos") for i in range(7)]
    frame = pd.DataFrame([*ROWS, *long, ("a post", "meh")], columns=["review", "sentiment"])
    frame.to_csv(folder / "posts.csv", index=False)
    data = DataConfig(
        name="ds", text_column="review", label_column="sentiment", labels=("neg", "pos")
    )
    result = validate(TEXT, data, ValidateConfig(max_text_chars=50), folder, tmp_path / "reports")
    failed = {c.name: c for c in result.failed}
    assert set(failed) == {
        "expect_column_value_lengths_to_be_between",
        "expect_column_values_to_be_in_set",
    }
    length = failed["expect_column_value_lengths_to_be_between"]
    assert (length.column, length.unexpected_count, len(length.examples)) == ("review", 7, 5)
    assert length.line().endswith(
        "; validate.max_text_chars: 50; 7 rows are longer (longest 66): raise it, or fix the rows"
    )
    in_set = failed["expect_column_values_to_be_in_set"]
    assert in_set.column == "sentiment"
    assert in_set.line().endswith(
        "; 1 row(s) have a label outside data.labels ['neg', 'pos']: add it to data.labels, or "
        "fix the rows"
    )
    report = json.loads((tmp_path / "reports" / "validation.json").read_text())
    assert {c["column"] for c in report["checks"]} == {"review", "sentiment"}
