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
from tuneops.errors import ConfigError
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


@pytest.mark.audit("C1")
def test_pull_bundle_refuses_a_folder_that_is_not_a_bundle_and_keeps_its_file(
    registered: str, tmp_path: Path
) -> None:
    out = tmp_path / "dist"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n", encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        pull_bundle(registered, NAME, "champion", out)
    assert str(refused.value) == (
        f"--out {out}: is not empty and is not a tuneops bundle (no bundle.json), and "
        f"pull-bundle replaces the folder whole; pass a new or empty folder, e.g. "
        f"--out {out / 'bundle'}"
    )
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine\n"


@pytest.mark.audit("C1")
def test_pull_bundle_replaces_its_own_bundle_but_not_a_file_added_to_it(
    registered: str, tmp_path: Path
) -> None:
    out = tmp_path / "deploy"
    pull_bundle(registered, NAME, "champion", out)
    files = sorted(p.name for p in out.iterdir())
    assert json.loads((out / "bundle.json").read_text())["bundle_files"] == files
    pull_bundle(registered, NAME, "1", out)  # a bundle it pulled: replaced
    assert sorted(p.name for p in out.iterdir()) == files

    (out / "Dockerfile").write_text("FROM python:3.11\n", encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        pull_bundle(registered, NAME, "champion", out)
    assert str(refused.value) == (
        f"--out {out}: holds files that pull-bundle did not write (Dockerfile), and it "
        "replaces the folder whole; move them out or pass a new or empty folder"
    )
    assert (out / "Dockerfile").read_text(encoding="utf-8") == "FROM python:3.11\n"


@pytest.mark.audit("C1")
def test_pull_bundle_out_dot_says_why_it_cannot(
    registered: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--out .` would rename the shell's current directory away; it is refused, even empty."""
    here = tmp_path / "empty"
    here.mkdir()
    monkeypatch.chdir(here)
    with pytest.raises(ConfigError) as refused:
        pull_bundle(registered, NAME, "champion", Path("."))
    assert str(refused.value) == (
        f"--out {here}: is the current directory (or holds it); the bundle replaces its "
        "folder whole, so pull into a subfolder, e.g. --out ./bundle"
    )
    assert list(here.iterdir()) == []


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
