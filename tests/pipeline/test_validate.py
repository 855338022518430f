import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline.validate import validate
from tests.conftest import TEXT
from tuneops.config import DataConfig, ValidateConfig
from tuneops.errors import DataValidationError

GOOD_ROWS = [
    (f"review number {i} was {'great' if i % 2 else 'awful'}", "positive" if i % 2 else "negative")
    for i in range(40)
]


def write_batch(
    folder: Path,
    rows: list[tuple[object, object]],
    name: str = "batch-0000.csv",
    labels: list[str] | None = None,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(folder / name, index=False)
    if labels is not None:
        (folder / "labels.json").write_text(json.dumps(labels))
    return folder


def test_clean_data_passes_and_writes_both_reports(tmp_path: Path) -> None:
    dataset = write_batch(tmp_path / "raw" / "ds", GOOD_ROWS, labels=["negative", "positive"])
    result = validate(TEXT, DataConfig(name="ds"), ValidateConfig(), dataset, tmp_path / "reports")
    assert result.success, [c.line() for c in result.failed]
    assert result.label_source == "labels.json"
    assert result.label_counts == {"negative": 20, "positive": 20}
    report = json.loads((tmp_path / "reports" / "validation.json").read_text())
    assert report["success"] is True and report["rows"] == 40
    assert (tmp_path / "reports" / "validation.html").exists()
    assert (tmp_path / "reports" / "data_docs" / "index.html").exists()


def test_failures_name_the_expectation_and_the_file_row(tmp_path: Path) -> None:
    rows = [*GOOD_ROWS, ("   ", "positive"), ("fine film", "neutral"), ("no label here", None)]
    dataset = write_batch(tmp_path / "raw" / "ds", rows, labels=["negative", "positive"])
    result = validate(TEXT, DataConfig(name="ds"), ValidateConfig(), dataset, tmp_path / "reports")
    failed = {c.name: c for c in result.failed}
    assert set(failed) == {
        "expect_column_values_to_not_match_regex",
        "expect_column_values_to_be_in_set",
        "expect_column_values_to_not_be_null",
    }
    # data rows are 1-based: the 41st data row is the whitespace-only text
    assert failed["expect_column_values_to_not_match_regex"].examples == [
        {"source": "batch-0000.csv:41", "value": "   "}
    ]
    assert failed["expect_column_values_to_be_in_set"].examples[0]["source"] == "batch-0000.csv:42"
    with pytest.raises(DataValidationError, match=r"batch-0000\.csv:42 \('neutral'\)"):
        result.raise_for_failures()


def test_labels_are_inferred_when_neither_params_nor_labels_json_give_them(tmp_path: Path) -> None:
    dataset = write_batch(tmp_path / "raw" / "ds", GOOD_ROWS)
    result = validate(TEXT, DataConfig(name="ds"), ValidateConfig(), dataset, tmp_path / "reports")
    assert result.labels == ("negative", "positive")
    assert result.label_source == "inferred"


def test_too_few_examples_of_a_class_fails_with_the_counts(tmp_path: Path) -> None:
    rows = [*GOOD_ROWS[:30], ("one lonely neutral", "neutral")]
    dataset = write_batch(tmp_path / "raw" / "ds", rows)
    result = validate(
        TEXT,
        DataConfig(name="ds"),
        ValidateConfig(min_examples_per_class=5),
        dataset,
        tmp_path / "reports",
    )
    [failure] = result.failed
    assert failure.name == "expect_each_label_to_have_min_examples"
    assert failure.examples == [{"source": "label counts", "value": "neutral: 1"}]


def test_duplicate_rate_above_the_limit_fails(tmp_path: Path) -> None:
    rows = GOOD_ROWS + GOOD_ROWS[:10]
    dataset = write_batch(tmp_path / "raw" / "ds", rows)
    result = validate(
        TEXT,
        DataConfig(name="ds"),
        ValidateConfig(max_duplicate_rate=0.05),
        dataset,
        tmp_path / "reports",
    )
    assert [c.name for c in result.failed] == [
        "expect_column_proportion_of_unique_values_to_be_between"
    ]


def test_missing_column_names_the_file_and_what_was_expected(tmp_path: Path) -> None:
    folder = tmp_path / "raw" / "ds"
    folder.mkdir(parents=True)
    (folder / "batch-0000.csv").write_text("sentence,label\nhello,positive\n")
    with pytest.raises(
        DataValidationError, match=r"batch-0000\.csv: missing column\(s\) \['text'\]"
    ):
        validate(TEXT, DataConfig(name="ds"), ValidateConfig(), folder, tmp_path / "reports")
