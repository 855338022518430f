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
    [failure] = result.failed
    assert failure.name == "expect_no_duplicate_rows"
    assert failure.unexpected_count == 10
    assert len(failure.examples) == 5
    assert failure.examples[0] == {
        "source": "batch-0000.csv:41",
        "value": "repeats batch-0000.csv:1",
    }
    assert "10 row(s) fail" in failure.line()
    assert failure.line().endswith(
        "; 10 rows are 20.00% of 50, above validate.max_duplicate_rate: 0.05 "
        "(raise it to drop them, or remove the repeats)"
    )


def test_missing_column_names_the_file_and_what_was_expected(tmp_path: Path) -> None:
    folder = tmp_path / "raw" / "ds"
    folder.mkdir(parents=True)
    (folder / "batch-0000.csv").write_text("sentence,label\nhello,positive\n")
    with pytest.raises(
        DataValidationError, match=r"batch-0000\.csv: missing column\(s\) \['text'\]"
    ):
        validate(TEXT, DataConfig(name="ds"), ValidateConfig(), folder, tmp_path / "reports")


def write_reviews(folder: Path, rows: list[tuple[object, object]]) -> Path:
    """A batch in the user's own column names (review, sentiment)."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows, columns=["review", "sentiment"])
    frame.to_csv(folder / "batch-0000.csv", index=False)
    return folder


MINE = DataConfig(name="ds", text_column="review", label_column="sentiment")
MANY_ROWS = [
    (f"review {i} was {'great' if i % 2 else 'awful'}", "pos" if i % 2 else "neg")
    for i in range(300)
]


def test_a_few_conflicting_labels_are_dropped_and_listed_under_the_default_policy(
    tmp_path: Path,
) -> None:
    # "review 4 was awful" (neg, data row 5) comes back as pos: 2 rows of 301, 0.66% <= 1%.
    dataset = write_reviews(tmp_path / "raw" / "ds", [*MANY_ROWS, ("review  4 was awful", "pos")])
    result = validate(TEXT, MINE, ValidateConfig(), dataset, tmp_path / "reports")
    assert result.success, [c.line() for c in result.failed]
    expected = [
        {"source": "batch-0000.csv:5", "reason": "conflicting_label", "sentiment": "neg"},
        {"source": "batch-0000.csv:301", "reason": "conflicting_label", "sentiment": "pos"},
    ]
    assert result.dropped_rows == expected
    report = json.loads((tmp_path / "reports" / "validation.json").read_text())
    assert report["dropped_rows"] == expected
    [check] = [c for c in result.checks if c.name == "expect_no_text_with_conflicting_labels"]
    assert (check.success, check.unexpected_count) == (True, 1)


def test_conflicts_above_the_rate_fail_with_five_examples_the_count_and_the_key(
    tmp_path: Path,
) -> None:
    flipped = [(text, "pos" if label == "neg" else "neg") for text, label in MANY_ROWS[:8]]
    dataset = write_reviews(tmp_path / "raw" / "ds", [*MANY_ROWS, *flipped])
    result = validate(TEXT, MINE, ValidateConfig(), dataset, tmp_path / "reports")
    [failure] = result.failed
    assert failure.name == "expect_no_text_with_conflicting_labels"
    assert failure.unexpected_count == 8
    assert len(failure.examples) == 5
    assert failure.examples[0]["source"] == "batch-0000.csv:1 (neg), batch-0000.csv:301 (pos)"
    line = failure.line()
    assert "8 text(s) with two labels, e.g. batch-0000.csv:1 (neg), batch-0000.csv:301" in line
    assert line.endswith(
        "; their 16 rows are 5.19% of 308, above validate.max_conflicting_rate: 0.01 "
        "(raise it to drop them, or fix the labels)"
    )


def test_the_reject_policy_fails_on_a_single_conflict_and_names_the_key(tmp_path: Path) -> None:
    dataset = write_reviews(tmp_path / "raw" / "ds", [*MANY_ROWS, ("review 4 was awful", "pos")])
    cfg = ValidateConfig(conflicting_labels="reject")
    result = validate(TEXT, MINE, cfg, dataset, tmp_path / "reports")
    [failure] = result.failed
    assert failure.name == "expect_no_text_with_conflicting_labels"
    assert failure.examples == [
        {
            "source": "batch-0000.csv:5 (neg), batch-0000.csv:301 (pos)",
            "value": "review 4 was awful",
        }
    ]
    assert failure.line().endswith(
        "; validate.conflicting_labels: reject (set it to drop to drop such rows, up to "
        "validate.max_conflicting_rate)"
    )


def test_exact_duplicates_within_the_rate_are_dropped_and_listed(tmp_path: Path) -> None:
    # Row 302 repeats row 3 (after whitespace normalisation) with its own label: 1 of 302.
    rows = [*MANY_ROWS, ("review 2 was awful", "neg"), ("review  2 was  awful ", "neg")]
    dataset = write_reviews(tmp_path / "raw" / "ds", rows)
    result = validate(TEXT, MINE, ValidateConfig(), dataset, tmp_path / "reports")
    assert result.success, [c.line() for c in result.failed]
    assert result.dropped_rows == [
        {
            "source": "batch-0000.csv:301",
            "reason": "duplicate",
            "sentiment": "neg",
            "duplicate_of": "batch-0000.csv:3",
        },
        {
            "source": "batch-0000.csv:302",
            "reason": "duplicate",
            "sentiment": "neg",
            "duplicate_of": "batch-0000.csv:3",
        },
    ]


def test_the_reject_policy_for_duplicates_fails_on_one_repeat(tmp_path: Path) -> None:
    dataset = write_reviews(tmp_path / "raw" / "ds", [*MANY_ROWS, ("review 2 was awful", "neg")])
    cfg = ValidateConfig(duplicates="reject")
    result = validate(TEXT, MINE, cfg, dataset, tmp_path / "reports")
    [failure] = result.failed
    assert failure.name == "expect_no_duplicate_rows"
    assert failure.examples == [
        {"source": "batch-0000.csv:301", "value": "repeats batch-0000.csv:3"}
    ]
    assert failure.line().endswith(
        "; validate.duplicates: reject (set it to drop to drop such rows, up to "
        "validate.max_duplicate_rate)"
    )


def test_a_long_document_is_valid_by_default_and_only_garbage_sizes_fail(tmp_path: Path) -> None:
    article = "word " * 5_097  # 25,485 characters: a long news article
    rows = [*MANY_ROWS, (article, "pos"), ("x" * 1_000_001, "neg")]
    dataset = write_reviews(tmp_path / "raw" / "ds", rows)
    result = validate(TEXT, MINE, ValidateConfig(), dataset, tmp_path / "reports")
    [failure] = result.failed
    assert failure.name == "expect_column_value_lengths_to_be_between"
    assert [e["source"] for e in failure.examples] == ["batch-0000.csv:302"]
    assert failure.line().endswith(
        "; validate.max_text_chars: 1000000; 1 rows are longer (longest 1,000,001): raise it, "
        "or fix the rows"
    )


@pytest.mark.audit("m5")
def test_numeric_labels_that_are_equal_numbers_are_one_label(tmp_path: Path) -> None:
    """1 and 1.0 are the same number: one class "1" (a JSONL export writes either; a
    Parquet int column with a null is stored as floats)."""
    folder = tmp_path / "raw" / "ds"
    folder.mkdir(parents=True)
    rows = [{"text": f"review {i}", "label": [0, 1, 1.0, 0.0][i % 4]} for i in range(40)]
    (folder / "batch-0000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = validate(TEXT, DataConfig(name="ds"), ValidateConfig(), folder, tmp_path / "reports")
    assert result.success, [c.line() for c in result.failed]
    assert result.labels == ("0", "1")
    assert result.label_counts == {"0": 20, "1": 20}
    floats = pd.DataFrame({"text": ["review 40", "review 41"], "label": [1, None]})
    assert str(floats["label"].dtype) == "float64"
    floats.to_parquet(folder / "batch-0001.parquet", index=False)
    again = validate(TEXT, DataConfig(name="ds"), ValidateConfig(), folder, tmp_path / "r2")
    assert again.labels == ("0", "1")
    assert again.label_counts == {"0": 20, "1": 21}
