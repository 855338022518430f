"""Shared servers, as a team runs them: `prefect server start` with a process work pool and a
worker (`prefect worker start`), and MLflow's tracking server on PostgreSQL. `tuneops deploy`
registers the retraining flow with the pool; runs triggered through the Prefect API are
executed by the worker, and the full flow registers and promotes a version in the
PostgreSQL-backed registry, its artifacts served by the MLflow server. Tiny model."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.version_data import read_dvc_md5
from tests.conftest import (
    free_port,
    local_server,
    make_dvc_project,
    store_client,
    tiny_overrides,
    write_params,
)
from tests.flows.conftest import PREFECT, trigger, tuneops
from tests.servers import mlflow_server, postgres
from tuneops import stages
from tuneops.cli import main as cli_main

pytestmark = pytest.mark.integration

POOL = "tuneops-pool"
DEPLOYMENT = "tuneops-retrain/retrain"
MODEL = "tuneops-movie-sentiment"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """MLflow's tracking server on a fresh PostgreSQL database: its URL, and psql on the
    database (`[*psql, "SELECT ..."]` prints the rows)."""
    with postgres("mlflow") as (database, psql), mlflow_server(database, tmp_path) as uri:
        yield uri, psql


def sql(psql: list[str], query: str) -> list[str]:
    done = subprocess.run([*psql, query], capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_a_worker_runs_the_retraining_deployment_and_promotes_through_mlflow_on_postgres(
    tmp_path: Path,
    tiny_model_dir: Path,
    prefect_env: dict[str, str],
    registry: tuple[str, list[str]],
) -> None:
    mlflow_uri, psql = registry
    env = prefect_env
    root = make_dvc_project(tmp_path)
    write_params(root, tiny_overrides(tiny_model_dir))
    stages.step_fetch(stages.load_context(root))  # data/raw, for the retraining flow to version

    created = subprocess.run(
        [PREFECT, "work-pool", "create", POOL, "--type", "process"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = tuneops(
        root, env, "deploy", "--pool", POOL, "--env", f"MLFLOW_TRACKING_URI={mlflow_uri}"
    )
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    assert f"deployment {DEPLOYMENT} (" in deployed.stdout

    port = free_port()
    worker_env = env | {
        "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
        "PREFECT_WORKER_WEBSERVER_PORT": str(port),
        "PREFECT_WORKER_QUERY_SECONDS": "1",  # pick the run up at once (default: every 10 s)
    }
    worker = [PREFECT, "worker", "start", "--pool", POOL, "--type", "process"]
    log = tmp_path / "worker.log"
    with local_server(
        [*worker, "--with-healthcheck"], worker_env, f"http://127.0.0.1:{port}/health", log
    ):
        trained = trigger(env, DEPLOYMENT)
    assert trained.state.is_completed(), (trained.state, log.read_text()[-3000:])

    assert trained.work_pool_name == POOL  # run by the pool's worker, not served in-process
    assert trained.state.message.startswith("gate passed: challenger v1,")
    client = store_client(mlflow_uri)
    assert client.get_registered_model(MODEL).aliases == {"champion": "1", "challenger": "1"}
    data_version = read_dvc_md5(root / "data" / "raw.dvc")
    assert client.get_model_version(MODEL, "1").tags["data.version"] == data_version
    # The registry is PostgreSQL's: the aliases are rows there.
    aliases = sql(psql, "SELECT alias || '=' || version FROM registered_model_aliases")
    assert sorted(aliases) == ["challenger=1", "champion=1"]
    # Artifacts went through the server to its store, not to a folder of the project.
    assert list((tmp_path / "artifacts").rglob("model.onnx"))
    assert not (root / "mlartifacts").exists()


def test_deploy_to_a_missing_work_pool_says_how_to_create_it(
    prefect_server: None, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["--root", str(project), "deploy", "--pool", "nowhere"]) == 2
    err = capsys.readouterr().err
    assert "work pool 'nowhere' not found on the Prefect server" in err
    assert "`prefect work-pool create nowhere --type process`" in err
