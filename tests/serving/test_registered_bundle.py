"""The registered version as a deployment: pulled as a bundle, served by `mlflow models serve`."""

import json
import os
import sys
from pathlib import Path

import httpx
import pytest

from pipeline.export import ExportResult
from pipeline.registry import register
from tests.conftest import free_port, local_server, tool_env
from tuneops.runtime import OnnxClassifier
from tuneops.serving.pull import pull_bundle
from tuneops.tracking import MlflowTracker

NAME = "tiny-sentiment"
TAGS = {"data.version": "abc123", "git.commit": "deadbeef", "params.hash": "0123"}


@pytest.fixture
def registered(tmp_path: Path, exported: ExportResult) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = MlflowTracker.start(uri, "tests", (tmp_path / "artifacts").as_uri(), "run", {})
    register(NAME, exported.export_dir, TAGS, True, run, tmp_path / "registry.json")
    return uri


def test_pull_bundle_stamps_the_version_and_lineage_and_predicts_like_the_local_one(
    registered: str, tmp_path: Path, exported: ExportResult
) -> None:
    out = tmp_path / "deploy"
    stamp = pull_bundle(registered, NAME, "champion", out)
    meta = json.loads((out / "bundle.json").read_text())
    assert stamp["model_version"] == meta["model_version"] == "1"
    assert meta["model_uri"] == f"models:/{NAME}/1"
    assert {k: meta[k] for k in TAGS} == TAGS
    texts = ["a wonderful film", "dull"]
    pulled = OnnxClassifier(out).predict(texts)
    local = OnnxClassifier(exported.export_dir).predict(texts)
    assert [p.probabilities for p in pulled] == [p.probabilities for p in local]
    assert (out / "tuneops_runtime.py").is_file()


@pytest.mark.integration
def test_mlflow_models_serve_answers_invocations_for_the_champion_alias(
    registered: str, tmp_path: Path, exported: ExportResult
) -> None:
    port = free_port()
    env = tool_env() | {"MLFLOW_TRACKING_URI": registered}
    argv = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@champion"]
    argv += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with local_server(argv, env, f"{url}/ping", tmp_path / "serve.log", timeout=120):
        payload = {"dataframe_split": {"columns": ["text"], "data": [["a wonderful film"]]}}
        response = httpx.post(f"{url}/invocations", json=payload, timeout=60)
    assert response.status_code == 200, response.text
    row = response.json()["predictions"][0]
    expected = OnnxClassifier(exported.export_dir).predict(["a wonderful film"])[0]
    assert row["label"] == expected.label
    assert row["score"] == pytest.approx(expected.score, abs=1e-6)
    assert "MLFLOW_TRACKING_URI" not in os.environ
