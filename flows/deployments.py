"""The retraining flow as a Prefect deployment, on a server that outlives the command.

Two ways to run it: `tuneops schedule` serves it from this process (the process is the
worker); `tuneops deploy` registers it with a work pool, whose workers (a process, a Docker
host, a Kubernetes cluster) start each flow run. The deployment names the flow by module
path (`flows.retrain.retrain_flow`), so any worker where tuneops is installed, or
any image that has it, can run it; no code is uploaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from tuneops.errors import ConfigError

if TYPE_CHECKING:
    from prefect.client.schemas.objects import ConcurrencyLimitConfig


def require_server(command: str) -> None:
    """A deployment needs a Prefect server: the temporary one dies with this command."""
    from prefect.settings import PREFECT_API_URL

    if not (os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()):
        raise ConfigError(
            f"tuneops {command} needs a Prefect server that outlives this command: start one "
            "with `prefect server start` (it serves http://127.0.0.1:4200) and run "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api`, then run this again"
        )


def retrain_parameters(
    root: Path, params_file: Path | None, overrides: dict[str, Any]
) -> dict[str, Any]:
    """The flow's parameters, paths absolute: flow runs start in another working directory."""
    return {
        "root": str(root.resolve()),
        "params_file": str(params_file.resolve()) if params_file else None,
        "overrides": overrides or None,
    }


def one_at_a_time() -> ConcurrencyLimitConfig:
    """The deployment's concurrency limit: one run at a time, on the Prefect server.

    A second run (a manual `prefect deployment run` during the weekly one, two workers
    polling one pool) waits as "AwaitingConcurrencySlot" and starts when the first ends,
    rather than failing on the project lock (ProjectBusy) or being cancelled."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    return ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


def serve_retrain(name: str, cron: str, parameters: dict[str, Any]) -> None:
    """Serve the deployment on `cron` from this process until it is stopped: one run at a
    time across every process serving it (`global_limit`) and in this one (`limit`)."""
    from flows.retrain import retrain_flow

    retrain_flow.serve(
        name=name, cron=cron, parameters=parameters, global_limit=one_at_a_time(), limit=1
    )


def deploy_retrain(
    pool: str,
    name: str,
    parameters: dict[str, Any],
    cron: str | None = None,
    image: str | None = None,
    env: dict[str, str] | None = None,
) -> UUID:
    """Register the deployment with work pool `pool` and return its id; it runs one at a
    time (`one_at_a_time`).

    `image`: for Docker and Kubernetes pools, an image with tuneops installed (used as it
    is: nothing is built or pushed). `env`: variables set in every flow run's environment
    (e.g. MLFLOW_TRACKING_URI), as the pool's job variables.
    """
    from prefect.client.orchestration import get_client
    from prefect.deployments.runner import EntrypointType, RunnerDeployment
    from prefect.exceptions import ObjectNotFound

    from flows.retrain import retrain_flow

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound as exc:
            raise ConfigError(
                f"work pool {pool!r} not found on the Prefect server: create it with "
                f"`prefect work-pool create {pool} --type process` (or docker, kubernetes)"
            ) from exc
    # to_deployment + apply rather than `retrain_flow.deploy`: that one also lists the
    # pool's workers, with a request that FastAPI >= 0.151 rejects (limit: null -> 422).
    deployment = retrain_flow.to_deployment(
        name=name,
        cron=cron,
        parameters=parameters,
        work_pool_name=pool,
        job_variables={"env": env} if env else None,
        entrypoint_type=EntrypointType.MODULE_PATH,
        concurrency_limit=one_at_a_time(),
    )
    assert isinstance(deployment, RunnerDeployment)  # called from sync code
    deployed = deployment.apply(work_pool_name=pool, image=image)
    assert isinstance(deployed, UUID)
    return deployed
