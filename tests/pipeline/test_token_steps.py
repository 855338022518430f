"""Token datasets: bundled ATIS fetched, validated per sentence and split without leakage."""

import json
from pathlib import Path

import pandas as pd

from pipeline import tasks
from pipeline.fetch_data import fetch_data
from pipeline.prepare import prepare
from pipeline.tasks.iob2 import Sentence, write_jsonl
from pipeline.validate import validate
from tuneops.config import DataConfig, PrepareConfig, ValidateConfig

ATIS = DataConfig(
    source="slot-filling-atis",
    name="atis",
    text_column="tokens",
    label_column="tags",
    hold_back_rows=0,
)
TOKENS = tasks.get("token-classification")


def test_atis_keeps_its_own_test_split_whole_and_nothing_of_it_leaks(tmp_path: Path) -> None:
    fetched = fetch_data(ATIS, tmp_path / "raw")
    labels = tuple(json.loads((fetched.dataset_dir / "labels.json").read_text()))
    assert (fetched.rows, len(labels), labels[0]) == (5871, 127, "O")
    result = prepare(TOKENS, ATIS, PrepareConfig(), labels, fetched.dataset_dir, tmp_path / "p")
    assert result.rows["test"] == 893  # as shipped, so figures compare with published ones
    splits = {s: pd.read_parquet(tmp_path / "p" / f"{s}.parquet") for s in result.rows}
    test_texts = set(splits["test"]["text"])
    assert not test_texts & set(splits["train"]["text"])
    assert not test_texts & set(splits["validation"]["text"])
    assert result.rows["train"] + result.rows["validation"] == 5871 - 893 - 354 - 2
    row = splits["train"].iloc[0]
    assert [labels[i] for i in row["tag_ids"]] == list(row["tags"])


def test_sentence_checks_name_the_line_and_what_was_expected(tmp_path: Path) -> None:
    dataset = tmp_path / "raw" / "mine"
    dataset.mkdir(parents=True)
    write_jsonl(
        dataset / "batch-0000.jsonl",
        [
            Sentence(["fly", "to", "boston"], ["O", "O", "B-city"], "x"),
            Sentence(["to", "new", "york"], ["O", "I-city", "I-city"], "x"),
            Sentence(["from", "denver"], ["O"], "x"),
            Sentence(["at", "noon"], ["O", "B-time"], "x"),
        ],
    )
    (dataset / "labels.json").write_text(json.dumps(["O", "B-city", "I-city"]))
    cfg = DataConfig(source="files", name="mine", text_column="tokens", label_column="tags")
    result = validate(TOKENS, cfg, ValidateConfig(), dataset, tmp_path / "reports")
    failed = {c.name + ":" + str(c.column): c for c in result.failed}
    assert set(failed) == {
        "expect_column_pair_values_to_be_equal:n_tokens",
        "expect_column_values_to_be_null:bio_error",
        "expect_column_values_to_be_null:unknown_tag",
    }
    bio = failed["expect_column_values_to_be_null:bio_error"]
    assert bio.examples == [
        {
            "source": "batch-0000.jsonl:2",
            "value": "tag 1 'I-city' follows 'O'; an I- tag must continue B-/I- of its type",
        }
    ]
    assert failed["expect_column_values_to_be_null:unknown_tag"].examples == [
        {"source": "batch-0000.jsonl:4", "value": "B-time"}
    ]
    assert failed["expect_column_pair_values_to_be_equal:n_tokens"].unexpected_count == 1
