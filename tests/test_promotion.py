"""Promotion under concurrency: two gate-and-register processes finishing at once against a
real `mlflow server`.

What this holds is the registry lock only: each worker has its own reports folder and both
read one finished export, so it is not two flows in one project folder (the project lock
stops a second run there: tests/test_runlock.py). The registry lock must serialise them:
the second is compared with the first one's result. "Never two champions" holds by
construction (an alias names one version); that there is a champion at every moment once
there is one is what the polling can catch.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.exceptions import MlflowException

from pipeline.export import ExportResult
from tests.conftest import REPO, Trained, store_client, tool_env
from tests.servers import mlflow_server as serve_mlflow

pytestmark = pytest.mark.integration

NAME = "race-model"


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend, stopped after the test."""
    with serve_mlflow(f"sqlite:///{tmp_path / 'server.db'}", tmp_path, workers=2) as uri:
        yield uri


def _worker(uri: str, tmp_path: Path, name: str, trained: Trained, export_dir: Path) -> Any:
    """A process that gates and registers `export_dir` once released by the start file."""
    reports = tmp_path / "race" / name
    reports.mkdir(parents=True)
    # Only the champion comparison and export parity are switched on in the worker's
    # gate, so these two reports are read but not judged.
    (reports / "metrics.json").write_text(json.dumps({"test_macro_f1": 0.5}))
    (reports / "classification_report.json").write_text("{}")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.promotion_worker",
            uri,
            (tmp_path / "artifacts").as_uri(),
            str(export_dir),
            str(trained.paths.data_prepared),
            str(reports),
        ],
        cwd=REPO,
        env=tool_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_flows_finishing_at_once_leave_one_champion_compared_with_the_other(
    mlflow_server: str, tmp_path: Path, trained: Trained, exported: ExportResult
) -> None:
    client = store_client(mlflow_server)
    workers = [_worker(mlflow_server, tmp_path, n, trained, exported.export_dir) for n in "ab"]
    deadline = time.monotonic() + 180
    while len(client.search_runs([_experiment_id(client)])) < 2:
        assert all(w.poll() is None for w in workers), [w.communicate() for w in workers]
        assert time.monotonic() < deadline, "workers did not start their runs"
        time.sleep(0.2)
    (tmp_path / "race" / "go").touch()

    snapshots = []
    while any(w.poll() is None for w in workers):
        try:
            snapshots.append(dict(client.get_registered_model(NAME).aliases))
        except MlflowException:
            snapshots.append({})  # not registered yet
        time.sleep(0.05)
    for worker in workers:
        _, err = worker.communicate()
        assert worker.returncode == 0, err[-3000:]

    first_champion = next(i for i, s in enumerate(snapshots) if "champion" in s)
    assert all("champion" in s for s in snapshots[first_champion:])
    aliases = {k: str(v) for k, v in client.get_registered_model(NAME).aliases.items()}
    # v2 equals v1 (the same bundle): no gain over the anchor, so `best` stays on v1.
    assert aliases == {"champion": "2", "challenger": "2", "previous": "1", "best": "1"}
    # Serialised: the second registration was gated against the first, not against "none".
    compared = {v: client.get_model_version(NAME, v).tags["gate.champion_compared"] for v in "12"}
    assert compared == {"1": "none", "2": "1"}
    assert [m.name for m in client.search_registered_models()] == [NAME]  # lock released


def _experiment_id(client: Any) -> str:
    experiment = client.get_experiment_by_name("concurrency")
    return experiment.experiment_id if experiment else "-1"
