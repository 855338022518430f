"""The retraining flow: retrain, gate and promote only when the data changed.

The current data version (DVC's hash of data/raw, after `dvc add`) is compared with the
`data.version` tag of the registered champion. Equal: the run ends Completed with "no new
data since version …" and trains nothing. Different (or no champion yet): the training
flow runs as a subflow, with the full gate against the champion, and its final state
(Completed, or Failed with the gate's verdict) becomes this run's state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

from tuneops import steps
from tuneops.flows.training import training_flow, version_task


@task(name="champion-data-version", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def champion_task(ctx: steps.Context) -> tuple[str | None, str | None]:
    """(champion version, its recorded data version), or (None, None) without a champion."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=ctx.tracking_uri, registry_uri=ctx.tracking_uri)
    try:
        champion = client.get_model_version_by_alias(ctx.params.registry.model_name, "champion")
    except MlflowException:
        return None, None
    return str(champion.version), champion.tags.get("data.version")


@flow(name="tuneops-retrain")
def retrain_flow(
    root: str = ".", params_file: str | None = None, overrides: dict[str, Any] | None = None
) -> State[Any]:
    """Retrain when data/raw changed since the champion was trained; otherwise skip."""
    ctx = steps.load_context(Path(root), Path(params_file) if params_file else None, overrides)
    current = version_task(ctx)
    champion, champion_data = champion_task(ctx)
    logger = get_run_logger()
    if champion is not None and champion_data == current:
        message = f"no new data since version {current} (champion v{champion}); nothing trained"
        logger.info(message)
        create_markdown_artifact(key="retrain", markdown=message, description=message)
        return Completed(message=message)
    logger.info(
        f"data version {current} differs from champion v{champion}'s {champion_data}: retraining"
        if champion
        else f"no champion yet: training on data version {current}"
    )
    return training_flow(root=root, params_file=params_file, overrides=overrides, return_state=True)
