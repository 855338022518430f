import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline.prepare import (
    SPLIT_VERSION,
    current_split,
    held_out_under,
    normalise_text,
    prepare,
    recorded_split,
    split_of,
    split_tags,
)
from tests.conftest import TEXT
from tuneops.config import DataConfig, PrepareConfig
from tuneops.errors import ConfigError, DataValidationError

LABELS = ("negative", "positive")


def write_rows(folder: Path, rows: list[tuple[str, str]], name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(folder / name, index=False)


def make_rows(n: int, start: int = 0) -> list[tuple[str, str]]:
    return [(f"text number {i}", LABELS[i % 2]) for i in range(start, start + n)]


def splits_by_text(prepared: Path) -> dict[str, str]:
    return {
        text: split
        for split in ("train", "validation", "test")
        for text in pd.read_parquet(prepared / f"{split}.parquet")["text"]
    }


def test_normalise_text_applies_nfc_and_collapses_whitespace() -> None:
    assert normalise_text("  Cafe\u0301 \t is\n\n  good ") == "Café is good"


def test_split_is_a_pure_function_of_the_text() -> None:
    assert split_of("same text", 0.1, 0.1) == split_of("same text", 0.1, 0.1)
    shares = pd.Series([split_of(f"t{i}", 0.1, 0.1) for i in range(20000)]).value_counts(
        normalize=True
    )
    assert shares["test"] == pytest.approx(0.1, abs=0.01)
    assert shares["validation"] == pytest.approx(0.1, abs=0.01)


@pytest.mark.audit("D4")
def test_appending_rows_never_moves_an_existing_row_between_splits(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_rows(raw, make_rows(600), "batch-0000.csv")
    prepare(TEXT, DataConfig(), PrepareConfig(), LABELS, raw, tmp_path / "before")
    write_rows(raw, make_rows(600, start=600), "batch-0001.csv")
    prepare(TEXT, DataConfig(), PrepareConfig(), LABELS, raw, tmp_path / "after")
    before, after = splits_by_text(tmp_path / "before"), splits_by_text(tmp_path / "after")
    assert len(after) == 1200
    assert {text: after[text] for text in before} == before


def test_duplicates_are_dropped_and_conflicting_labels_reported(tmp_path: Path) -> None:
    rows = [*make_rows(200), ("text   number 3", "positive"), ("text number 4", "positive")]
    write_rows(tmp_path / "raw", rows, "batch-0000.csv")
    result = prepare(
        TEXT, DataConfig(), PrepareConfig(), LABELS, tmp_path / "raw", tmp_path / "out"
    )
    # "text number 3" repeats (after whitespace normalisation) with its own label;
    # "text number 4" (negative) reappears as positive, so both of its rows go.
    assert result.dropped_duplicates == 1
    assert result.dropped_conflicts == 1
    assert result.conflict_examples == [
        {
            "text": "text number 4",
            "labels": "negative,positive",
            "sources": "batch-0000.csv:5,batch-0000.csv:202",
        }
    ]
    assert sum(result.rows.values()) == 199


def test_manifest_counts_and_fingerprint_ignore_row_order(tmp_path: Path) -> None:
    rows = make_rows(400)
    write_rows(tmp_path / "a", rows, "batch-0000.csv")
    write_rows(tmp_path / "b", rows[::-1], "batch-0000.csv")
    first = prepare(TEXT, DataConfig(), PrepareConfig(), LABELS, tmp_path / "a", tmp_path / "pa")
    second = prepare(TEXT, DataConfig(), PrepareConfig(), LABELS, tmp_path / "b", tmp_path / "pb")
    assert first.fingerprint == second.fingerprint
    manifest = json.loads((tmp_path / "pa" / "manifest.json").read_text())
    assert manifest["rows"] == first.rows and sum(first.rows.values()) == 400
    for split, counts in manifest["label_counts"].items():
        assert sum(counts.values()) == first.rows[split]
    train = pd.read_parquet(tmp_path / "pa" / "train.parquet")
    assert set(train["label_id"]) == {0, 1}
    assert (train["label"].map({"negative": 0, "positive": 1}) == train["label_id"]).all()


def test_a_label_missing_from_the_test_split_is_an_error(tmp_path: Path) -> None:
    rows = [*make_rows(300), ("the only neutral text", "neutral")]
    write_rows(tmp_path / "raw", rows, "batch-0000.csv")
    with pytest.raises(DataValidationError, match=r"split has no rows of label\(s\) \['neutral'\]"):
        prepare(
            TEXT,
            DataConfig(),
            PrepareConfig(),
            (*LABELS, "neutral"),
            tmp_path / "raw",
            tmp_path / "out",
        )
    assert not (tmp_path / "out").exists()


def test_a_label_no_row_hashes_into_validation_gets_its_lowest_hash_train_row(
    tmp_path: Path,
) -> None:
    # Eight neutral texts: seven hash to train, one to test, none to validation (before,
    # validation had no neutral row and early stopping never saw the class).
    neutral = [(f"a neutral text {i}", "neutral") for i in range(10, 18)]
    assert [split_of(t, 0.1, 0.1) for t, _ in neutral] == ["train"] * 7 + ["test"]
    folder = tmp_path / "raw"
    folder.mkdir()
    frame = pd.DataFrame([*make_rows(300), *neutral], columns=["review", "sentiment"])
    frame.to_csv(folder / "batch-0000.csv", index=False)
    data = DataConfig(text_column="review", label_column="sentiment")
    labels = (*LABELS, "neutral")
    result = prepare(TEXT, data, PrepareConfig(), labels, folder, tmp_path / "out")
    # text 15 has the lowest hash bucket of the seven train rows (0.247): the one moved
    validation = pd.read_parquet(tmp_path / "out" / "validation.parquet")
    assert validation.loc[validation["label"] == "neutral", "text"].tolist() == [
        "a neutral text 15"
    ]
    assert [result.label_counts[s]["neutral"] for s in ("train", "validation", "test")] == [
        6,
        1,
        1,
    ]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["moved_to_validation"] == [
        {"source": "batch-0000.csv:306", "from": "train", "sentiment": "neutral"}
    ]
    # the other labels hash into validation on their own: nothing else moved
    assert manifest["rows"]["validation"] == 1 + sum(
        split_of(t, 0.1, 0.1) == "validation" for t, _ in make_rows(300)
    )


def test_a_label_no_row_hashes_into_test_gets_a_train_row_there_after_validation(
    tmp_path: Path,
) -> None:
    """Every class in every split (issue 17: a rare class of a real dataset, e.g. R8's,
    had no test row and prepare refused the data). Four neutral texts all hash to train:
    validation gets the lowest-hash one, test the next; train keeps two."""
    neutral = [(f"a neutral review {i}", "neutral") for i in (0, 4, 27, 29)]
    assert {split_of(t, 0.1, 0.1) for t, _ in neutral} == {"train"}
    folder = tmp_path / "raw"
    folder.mkdir()
    frame = pd.DataFrame([*make_rows(300), *neutral], columns=["review", "sentiment"])
    frame.to_csv(folder / "batch-0000.csv", index=False)
    data = DataConfig(text_column="review", label_column="sentiment")
    result = prepare(TEXT, data, PrepareConfig(), (*LABELS, "neutral"), folder, tmp_path / "out")
    by_split = {
        name: pd.read_parquet(tmp_path / "out" / f"{name}.parquet")
        for name in ("train", "validation", "test")
    }
    picked = {
        name: split.loc[split["label"] == "neutral", "text"].tolist()
        for name, split in by_split.items()
    }
    # hash buckets: review 4 0.301, review 0 0.324, then 29 and 27
    assert picked == {
        "train": ["a neutral review 27", "a neutral review 29"],
        "validation": ["a neutral review 4"],
        "test": ["a neutral review 0"],
    }
    assert [result.label_counts[s]["neutral"] for s in ("train", "validation", "test")] == [2, 1, 1]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["moved_to_validation"] == [
        {"source": "batch-0000.csv:302", "from": "train", "sentiment": "neutral"}
    ]
    assert manifest["moved_to_test"] == [
        {"source": "batch-0000.csv:301", "from": "train", "sentiment": "neutral"}
    ]


def test_a_label_with_a_single_train_row_and_none_in_validation_is_named(tmp_path: Path) -> None:
    # Moving the only train row would starve train: the error names validation.
    neutral = [("a neutral text 17", "neutral"), ("a neutral text 15", "neutral")]
    message = refused_with_neutral(tmp_path, neutral, "batch-0000.csv")
    assert "the validation split has no rows of label(s) ['neutral']" in message


def refused_with_neutral(tmp_path: Path, neutral: list[tuple[str, str]], name: str) -> str:
    """prepare's refusal of 300 rows plus `neutral`, in the file `name`, labels + neutral."""
    write_rows(tmp_path / "raw", [*make_rows(300), *neutral], name)
    with pytest.raises(DataValidationError) as caught:
        prepare(
            TEXT,
            DataConfig(),
            PrepareConfig(),
            (*LABELS, "neutral"),
            tmp_path / "raw",
            tmp_path / "o",
        )
    assert not (tmp_path / "o").exists()
    return str(caught.value)


def test_the_manifest_lists_every_dropped_row_in_the_users_column_names(tmp_path: Path) -> None:
    rows = [*make_rows(200), ("text   number 3", "positive"), ("text number 4", "positive")]
    folder = tmp_path / "raw"
    folder.mkdir()
    frame = pd.DataFrame(rows, columns=["review", "sentiment"])
    frame.to_csv(folder / "batch-0000.csv", index=False)
    data = DataConfig(text_column="review", label_column="sentiment")
    result = prepare(TEXT, data, PrepareConfig(), LABELS, folder, tmp_path / "out")
    expected = [
        {"source": "batch-0000.csv:5", "reason": "conflicting_label", "sentiment": "negative"},
        {
            "source": "batch-0000.csv:201",
            "reason": "duplicate",
            "sentiment": "positive",
            "duplicate_of": "batch-0000.csv:4",
        },
        {"source": "batch-0000.csv:202", "reason": "conflicting_label", "sentiment": "positive"},
    ]
    assert result.dropped_rows == expected
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["dropped_rows"] == expected
    assert sum(result.rows.values()) == 199


@pytest.mark.audit("m13")
def test_a_label_missing_from_train_names_keys_that_exist(tmp_path: Path) -> None:
    # The only neutral row hashes into test: train has none. Train is what the two
    # fractions leave, so the hint names them (there is no prepare.train_fraction).
    assert split_of("a neutral text 17", 0.1, 0.1) == "test"
    message = refused_with_neutral(tmp_path, [("a neutral text 17", "neutral")], "b.csv")
    assert "the train split has no rows of label(s) ['neutral']" in message
    assert "b.csv:301" in message
    assert "train_fraction" not in message
    assert "lower prepare.validation_fraction or prepare.test_fraction" in message


@pytest.mark.audit("M4")
def test_the_manifest_records_the_split_and_rows_test_under_an_older_split_are_found(
    tmp_path: Path,
) -> None:
    raw = tmp_path / "raw"
    write_rows(raw, make_rows(1000), "batch-0000.csv")
    before = tmp_path / "before"
    prepare(TEXT, DataConfig(max_rows=900), PrepareConfig(), LABELS, raw, before)
    later = PrepareConfig(test_fraction=0.3, validation_fraction=0.2)
    prepare(TEXT, DataConfig(), later, LABELS, raw, tmp_path / "after")
    recorded, current = current_split(before), current_split(tmp_path / "after")
    assert recorded == {
        "version": SPLIT_VERSION,
        "test_fraction": 0.1,
        "validation_fraction": 0.1,
        "max_rows": 900,
        "official_test": False,
    }
    assert recorded_split(split_tags(recorded)) == recorded
    assert split_tags(recorded)["split.max_rows"] == "900"
    # Which of today's test rows were test rows under the older split: exactly those that
    # the older prepare put in test, never one of its train or validation rows.
    old = splits_by_text(before)
    test_now = pd.read_parquet(tmp_path / "after" / "test.parquet")["text"].tolist()
    keep = held_out_under(recorded, current, test_now, "v1")
    assert [t for t, k in zip(test_now, keep, strict=True) if k] == [
        t for t in test_now if old.get(t, split_of(t, 0.1, 0.1)) == "test"
    ]
    assert {old[t] for t, k in zip(test_now, keep, strict=True) if not k and t in old} == {
        "train",
        "validation",
    }
    # Same test fraction (a new validation fraction or slice moves no row into test): all.
    assert all(held_out_under(recorded | {"max_rows": None}, recorded, test_now, "v1"))


def test_rows_held_out_under_another_split_function_cannot_be_known() -> None:
    recorded = {
        "version": "0",
        "test_fraction": 0.1,
        "validation_fraction": 0.1,
        "max_rows": None,
        "official_test": False,
    }
    current = recorded | {"version": SPLIT_VERSION}
    with pytest.raises(ConfigError, match=r"v1 was split by split function version 0 \(tag "):
        held_out_under(recorded, current, ["a"], "v1")
    with pytest.raises(ConfigError, match=r"v1's test split was a hash of each row \(tag split"):
        held_out_under(current, current | {"official_test": True}, ["a"], "v1")
    assert recorded_split({"split.version": "1"}) is None  # a version from before the tags
