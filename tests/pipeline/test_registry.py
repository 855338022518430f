"""Registry semantics on MLflow's real SQLite store and model registry."""

from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tuneops.pipeline.export import ExportResult
from tuneops.pipeline.registry import register
from tuneops.tracking import MlflowTracker

NAME = "tiny-sentiment"
TAGS = {"data.version": "abc123", "git.commit": "deadbeef", "params.hash": "0123"}


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def new_run(uri: str, tmp_path: Path) -> MlflowTracker:
    return MlflowTracker.start(uri, "tests", (tmp_path / "artifacts").as_uri(), "run", {})


def aliases(uri: str) -> dict[str, str]:
    return {a: str(v) for a, v in MlflowClient(uri).get_registered_model(NAME).aliases.items()}


def test_first_passing_version_becomes_challenger_and_champion_with_its_tags(
    tracking_uri: str, tmp_path: Path, exported: ExportResult
) -> None:
    result = register(
        NAME,
        exported.export_dir,
        TAGS,
        True,
        new_run(tracking_uri, tmp_path),
        tmp_path / "registry.json",
    )
    assert (result.version, result.promoted, result.champion_version) == ("1", True, "1")
    version = MlflowClient(tracking_uri).get_model_version_by_alias(NAME, "champion")
    assert str(version.version) == "1"
    assert {k: version.tags[k] for k in TAGS} == TAGS
    assert aliases(tracking_uri) == {"challenger": "1", "champion": "1"}
    assert (tmp_path / "registry.json").exists()


def test_a_failing_version_is_only_challenger_and_champion_stays(
    tracking_uri: str, tmp_path: Path, exported: ExportResult
) -> None:
    register(
        NAME, exported.export_dir, TAGS, True, new_run(tracking_uri, tmp_path), tmp_path / "r.json"
    )
    result = register(
        NAME, exported.export_dir, TAGS, False, new_run(tracking_uri, tmp_path), tmp_path / "r.json"
    )
    assert (result.version, result.promoted, result.champion_version) == ("2", False, "1")
    assert aliases(tracking_uri) == {"challenger": "2", "champion": "1"}


def test_a_promoted_version_leaves_the_old_champion_as_previous(
    tracking_uri: str, tmp_path: Path, exported: ExportResult
) -> None:
    for _ in range(2):
        register(
            NAME,
            exported.export_dir,
            TAGS,
            True,
            new_run(tracking_uri, tmp_path),
            tmp_path / "r.json",
        )
    assert aliases(tracking_uri) == {"challenger": "2", "champion": "2", "previous": "1"}


def test_champion_loads_as_pyfunc_and_predicts_on_a_text_column(
    tracking_uri: str, tmp_path: Path, exported: ExportResult
) -> None:
    register(
        NAME, exported.export_dir, TAGS, True, new_run(tracking_uri, tmp_path), tmp_path / "r.json"
    )
    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    out = model.predict(pd.DataFrame({"text": ["lovely", "awful", "fine"]}))
    assert list(out.columns) == ["label", "score", "p_negative", "p_positive"]
    assert len(out) == 3
    assert ((out["p_negative"] + out["p_positive"]).round(5) == 1.0).all()
    with pytest.raises(MlflowException):
        model.predict(pd.DataFrame({"sentence": ["no text column"]}))
