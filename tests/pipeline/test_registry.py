"""Registry semantics on MLflow's real SQLite store and model registry."""

import os
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from pipeline.export import ExportResult
from pipeline.registry import register, registry_lock, rollback
from tests.conftest import store_client
from tuneops.errors import ConfigError, ExternalToolError
from tuneops.tracking import MlflowTracker, mlflow_store

NAME = "tiny-sentiment"
TAGS = {"data.version": "abc123", "git.commit": "deadbeef", "params.hash": "0123"}


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def new_run(uri: str, tmp_path: Path) -> MlflowTracker:
    return MlflowTracker.start(uri, "tests", (tmp_path / "artifacts").as_uri(), "run", {})


def aliases(uri: str) -> dict[str, str]:
    return {a: str(v) for a, v in store_client(uri).get_registered_model(NAME).aliases.items()}


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
    version = store_client(tracking_uri).get_model_version_by_alias(NAME, "champion")
    assert str(version.version) == "1"
    assert {k: version.tags[k] for k in TAGS} == TAGS
    assert aliases(tracking_uri) == {"challenger": "1", "champion": "1"}
    assert (tmp_path / "registry.json").exists()
    # Logging the model used MLflow's global URIs; they must not leak into the environment.
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ


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
    with mlflow_store(tracking_uri):  # scoped: MLflow's global URI is restored after
        model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    out = model.predict(pd.DataFrame({"text": ["lovely", "awful", "fine"]}))
    assert list(out.columns) == ["label", "score", "p_negative", "p_positive"]
    assert len(out) == 3
    assert ((out["p_negative"] + out["p_positive"]).round(5) == 1.0).all()
    with pytest.raises(MlflowException):
        model.predict(pd.DataFrame({"sentence": ["no text column"]}))


def test_the_registry_lock_excludes_a_second_holder_and_is_released(tracking_uri: str) -> None:
    client = store_client(tracking_uri)
    with registry_lock(client, NAME):
        assert client.get_registered_model(f"{NAME}.promotion-lock").tags["holder"]
        held = r"'tiny-sentiment\.promotion-lock' still held"
        with pytest.raises(ExternalToolError, match=held), registry_lock(client, NAME, 0.5):
            pass
    assert [m.name for m in client.search_registered_models()] == []


def test_a_stale_lock_left_by_a_crashed_holder_is_broken(tracking_uri: str) -> None:
    client = store_client(tracking_uri)
    client.create_registered_model(f"{NAME}.promotion-lock", tags={"acquired_at": "0"})
    with registry_lock(client, NAME, timeout_s=5, stale_after_s=60):
        acquired = client.get_registered_model(f"{NAME}.promotion-lock").tags["acquired_at"]
        assert float(acquired) > 0


def test_rollback_swaps_champion_and_previous_and_needs_both(
    tracking_uri: str, tmp_path: Path, exported: ExportResult
) -> None:
    client = store_client(tracking_uri)
    register(
        NAME, exported.export_dir, TAGS, True, new_run(tracking_uri, tmp_path), tmp_path / "r.json"
    )
    with pytest.raises(ConfigError, match="champion=1, previous=None"):
        rollback(client, NAME, {})
    register(
        NAME, exported.export_dir, TAGS, True, new_run(tracking_uri, tmp_path), tmp_path / "r.json"
    )
    assert rollback(client, NAME, {"rollback.reason": "r"}) == ("2", "1")
    assert aliases(tracking_uri) == {"challenger": "2", "champion": "1", "previous": "2"}
    assert client.get_model_version(NAME, "1").tags["rollback.reason"] == "r"
