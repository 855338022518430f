"""Credentials where they really travel, recorded nowhere: a tracking URI with user:password
to a real `mlflow server` on 127.0.0.1 (the server ignores the credentials, the client sends
them), `tune.storage` with a password, the Prefect deployment's `--env`, `tuneops ui` on a
database URI with a password, and the usual secrets in the environment, through a real
`tuneops run` (Prefect server, git + DVC, tiny model)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import REPO, free_port, make_dvc_project, tiny_overrides, write_params
from tests.flows.conftest import PREFECT, TUNEOPS, tuneops
from tests.reliability.conftest import record
from tests.servers import mlflow_server
from tuneops.tracking import store_client

pytestmark = pytest.mark.integration

MODEL = "tuneops-movie-sentiment"
POOL = "tuneops-pool"

# Credentials a user may have in the environment.
ENVIRONMENT = {
    "MLFLOW_TRACKING_PASSWORD": "tuneops-test-secret-mlflow-5d1f",
    "MLFLOW_TRACKING_TOKEN": "tuneops-test-secret-token-8a2c",
    "AWS_SECRET_ACCESS_KEY": "tuneops-test-secret-aws-3e7b",
    "AWS_SESSION_TOKEN": "tuneops-test-secret-session-77c0",
    "HF_TOKEN": "hf_tuneopsTestSecret0001",
}
# ... and in the URIs it configures.
IN_URIS = {
    "tracking.uri password": "tuneops-test-secret-tracking-41aa",
    "tune.storage password": "tuneops-test-secret-optuna-9c3e",
    "ui store password": "tuneops-test-secret-store-62bd",
}
SECRETS = ENVIRONMENT | IN_URIS


def prefect_records(env: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """Every log record, flow run parameter and deployment parameter the Prefect server
    stores, as text; and the deployment's job variables (where `--env` belongs)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    texts: list[str] = []
    with (
        temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}),
        get_client(sync_client=True) as client,
    ):
        offset = 0
        while logs := client.request(
            "POST", "/logs/filter", json={"limit": 200, "offset": offset}
        ).json():
            texts += [entry["message"] for entry in logs]
            offset += len(logs)
        # The REST filter: the client's read_flow_runs sends null limit and sort (422).
        body = {"limit": 200, "sort": "START_TIME_DESC"}
        runs = client.request("POST", "/flow_runs/filter", json=body).json()
        texts += [json.dumps(run["parameters"], default=str) for run in runs]
        deployment = client.read_deployment_by_name("tuneops-retrain/retrain")
        texts += [json.dumps(deployment.parameters, default=str), deployment.description or ""]
    assert offset > 0 and runs, "no Prefect logs or flow runs to search"
    return "\n".join(texts), dict(deployment.job_variables or {})


def mlflow_records(url: str) -> str:
    """Params, tags, metric names and artifact URIs of every run; tags, descriptions and
    sources of every registered model and version."""
    client = store_client(url)
    runs = [
        run
        for experiment in client.search_experiments()
        for run in client.search_runs([experiment.experiment_id])
    ]
    models = client.search_registered_models()
    versions = client.search_model_versions(f"name='{MODEL}'")
    assert runs and versions, "nothing recorded in MLflow to search"
    return "\n".join(
        [
            json.dumps([r.data.params, r.data.tags, list(r.data.metrics), r.info.artifact_uri])
            for r in runs
        ]
        + [json.dumps([m.name, m.tags, m.description]) for m in models]
        + [json.dumps([v.tags, v.source, v.description]) for v in versions]
    )


def ui_command_lines(root: Path, env: dict[str, str], store: str) -> tuple[str, list[str]]:
    """`tuneops ui` on `store` for a few seconds: its output, and the command line of it and
    of every process it started (what `ps` shows any user of the machine)."""
    # The store in the environment, as a careful user passes a password: given with --set,
    # it would be on tuneops' own command line, which the user typed and tuneops cannot hide.
    argv = [*TUNEOPS, "--root", str(root), "ui"]
    ui = subprocess.Popen(
        [*argv, "--port", str(free_port())],
        env=env | {"MLFLOW_TRACKING_URI": store},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 60
        while ui.poll() is None and time.monotonic() < deadline:
            with_children = [psutil.Process(ui.pid), *psutil.Process(ui.pid).children(True)]
            for process in with_children:
                with contextlib.suppress(psutil.Error):
                    seen[process.pid] = " ".join(process.cmdline())
            if any(" mlflow " in line and " ui " in line for line in seen.values()):
                break
            time.sleep(0.05)
    except psutil.NoSuchProcess:
        pass
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGTERM)
        out, _ = ui.communicate(timeout=60)
    return out, list(seen.values())


@pytest.mark.audit("T2")
def test_credentials_where_they_travel_are_recorded_nowhere(
    tmp_path: Path, tiny_model_dir: Path, prefect_env: dict[str, str], record_property: Any
) -> None:
    server = tmp_path / "mlflow-server"
    server.mkdir()
    with mlflow_server(f"sqlite:///{server / 'mlflow.db'}", server) as url:
        password = IN_URIS["tracking.uri password"]
        tracking = url.replace("http://", f"http://tuneops:{password}@", 1)
        storage = (
            f"postgresql+psycopg2://optuna:{IN_URIS['tune.storage password']}@db.internal/optuna"
        )
        root = make_dvc_project(tmp_path)
        write_params(
            root,
            tiny_overrides(tiny_model_dir) | {"tracking.uri": tracking, "tune.storage": storage},
        )
        env = prefect_env | ENVIRONMENT
        run = tuneops(root, env, "run")
        assert run.returncode == 0, run.stdout + run.stderr[-3000:]

        created = subprocess.run(
            [PREFECT, "work-pool", "create", POOL, "--type", "process"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert created.returncode == 0, created.stdout + created.stderr
        deployed = tuneops(
            root, env, "deploy", "--pool", POOL, "--env", f"MLFLOW_TRACKING_URI={tracking}"
        )
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr[-3000:]

        # A database store with a password (nothing listens there: mlflow starts, then fails).
        secret, port = IN_URIS["ui store password"], free_port()
        store = f"postgresql+psycopg2://mlflow:{secret}@127.0.0.1:{port}/mlflow"
        ui_out, command_lines = ui_command_lines(root, env, store)
        http_ui = tuneops(root, env, "ui")

        prefect_text, job_variables = prefect_records(env)
        recorded = mlflow_records(url)
    files = [
        path
        for top in (root, tmp_path / "dvc-remote", server)
        for path in top.rglob("*")
        if path.is_file() and path != root / "params.yaml"  # the user's own config
    ]
    texts = {
        "MLflow params, tags, metric names, sources": recorded,
        "`tuneops run` output": run.stdout + run.stderr,
        "`tuneops deploy` output": deployed.stdout + deployed.stderr,
        "Prefect logs, flow run and deployment parameters": prefect_text,
        "`tuneops ui` output": ui_out + http_ui.stdout + http_ui.stderr,
        "`tuneops ui` command lines": "\n".join(command_lines),
    }
    leaks = [
        f"{name} in {where}"
        for name, secret in SECRETS.items()
        for where, text in texts.items()
        if secret in text
    ] + [
        f"{name} in {path}"
        for path in files
        for name, secret in SECRETS.items()
        if secret.encode() in path.read_bytes()
    ]
    record(
        record_property,
        "security",
        f"{len(SECRETS)} secrets: in the environment, a tracking URI, tune.storage, a deployment's "
        "--env and `tuneops ui`'s store URI",
        "not recorded" if not leaks else "LEAKED",
        f"searched {len(recorded)} characters of MLflow records, {len(files)} files, the run's, "
        f"deploy's and ui's output, the Prefect logs and parameters, {len(command_lines)} "
        f"command lines; found: {leaks or 'none'}",
    )
    # There was something to search, and each credential was used where it was put.
    assert len(files) > 50 and len(run.stdout + run.stderr) > 200
    assert "tracking.uri" in recorded and "***@127.0.0.1" in recorded
    assert job_variables == {"env": {"MLFLOW_TRACKING_URI": tracking}}  # where --env belongs
    assert any(" mlflow ui " in line for line in command_lines), command_lines
    assert "(store postgresql+psycopg2://***@127.0.0.1:" in ui_out, ui_out
    assert http_ui.returncode == 0 and "serves its own UI" in http_ui.stdout, http_ui.stdout
    assert leaks == [], "leaks:\n" + "\n".join(leaks)
