"""The retraining deployment runs one at a time, on a real `prefect server start`: both the
work-pool deployment (`tuneops deploy`) and the served one (`tuneops schedule`) carry a
concurrency limit of one, and the server holds a second run back while one is active."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from flows.deployments import deploy_retrain, retrain_parameters
from tests.conftest import REPO
from tests.flows.conftest import PREFECT, TUNEOPS

pytestmark = pytest.mark.integration

POOL = "tuneops-pool"


@contextmanager
def client_of(env: dict[str, str]) -> Iterator[Any]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}),
        get_client(sync_client=True) as client,
    ):
        yield client


def assert_one_at_a_time(deployment: Any) -> None:
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy

    assert deployment.global_concurrency_limit is not None, "no concurrency limit"
    assert deployment.global_concurrency_limit.limit == 1
    assert deployment.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.ENQUEUE


@pytest.mark.audit("C3")
def test_the_pool_deployment_admits_one_run_and_queues_the_next(
    tmp_path: Path, prefect_env: dict[str, str]
) -> None:
    """Two runs of the deployment asking to start, as two workers do (Scheduled ->
    Pending): the server accepts the first and sends the second back to Scheduled,
    "AwaitingConcurrencySlot"; once the first is over, the second gets the slot."""
    from prefect.states import Completed, Pending, Running

    created = subprocess.run(
        [PREFECT, "work-pool", "create", POOL, "--type", "process"],
        env=prefect_env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert created.returncode == 0, created.stdout + created.stderr
    with client_of(prefect_env) as client:  # deploy_retrain talks to the same server
        deployment_id = deploy_retrain(POOL, "retrain", retrain_parameters(tmp_path, None, {}))
        assert_one_at_a_time(client.read_deployment(deployment_id))

        first, second = (client.create_flow_run_from_deployment(deployment_id) for _ in "12")
        admitted = client.set_flow_run_state(first.id, Pending())
        assert admitted.status.value == "ACCEPT"
        held = client.set_flow_run_state(second.id, Pending())
        assert held.status.value == "REJECT"
        assert held.state is not None and held.state.name == "AwaitingConcurrencySlot"
        assert client.read_flow_run(second.id).state_name == "AwaitingConcurrencySlot"

        client.set_flow_run_state(first.id, Running())
        client.set_flow_run_state(first.id, Completed())
        assert client.set_flow_run_state(second.id, Pending()).status.value == "ACCEPT"


@pytest.mark.audit("C3")
def test_the_served_deployment_has_the_limit_of_one(
    tmp_path: Path, prefect_env: dict[str, str]
) -> None:
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        serve = subprocess.Popen(
            [*TUNEOPS, "--root", str(tmp_path), "schedule", "--cron", "0 3 * * 1"],
            env=prefect_env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deployment = wait_for(prefect_env, "tuneops-retrain/weekly-retrain", serve, log)
        finally:
            os.killpg(serve.pid, signal.SIGTERM)
            serve.wait(timeout=60)
    assert_one_at_a_time(deployment)


def wait_for(env: dict[str, str], name: str, serve: subprocess.Popen[bytes], log: Path) -> Any:
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + 120
    while True:
        with client_of(env) as client:
            try:
                return client.read_deployment_by_name(name)
            except ObjectNotFound:
                pass
        assert serve.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(1)
