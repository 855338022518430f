"""The retraining flow: retrain, gate and promote only when the data changed.

The current data version (DVC's hash of data/raw, after `dvc add`) is compared with the
`data.version` tag of the champion (and of the latest challenger, if it was trained with
the same params and rejected). Equal: the run ends Completed with "no new data since
version …" and trains nothing. Different (or no champion yet): the training
flow runs as a subflow, with the full gate against the champion, and its final state
(Completed, or Failed with the gate's verdict) becomes this run's state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, Failed, State

from flows.training import (
    RunSummary,
    preflight_task,
    training_flow,
    validate_task,
    version_task,
)
from pipeline.registry import version_by_alias
from tuneops import stages
from tuneops.runlock import project_lock
from tuneops.tracking import store_client


@task(name="trained-data-versions", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def trained_task(ctx: stages.Context) -> dict[str, tuple[str, str | None, str | None]]:
    """alias -> (version, data.version tag, params.hash tag) for champion and challenger."""
    client = store_client(ctx.tracking_uri)
    found = {}
    for alias in ("champion", "challenger"):
        mv = version_by_alias(client, ctx.params.registry.model_name, alias)
        if mv is not None:
            found[alias] = (
                str(mv.version),
                mv.tags.get("data.version"),
                mv.tags.get("params.hash"),
            )
    return found


def skip_reason(
    current: str, params_hash: str, trained: dict[str, tuple[str, str | None, str | None]]
) -> str | None:
    """Why there is nothing to retrain, or None.

    The champion was trained on this data; or the latest challenger was, with the same
    params, and was rejected: training again would rebuild the same model (training is
    deterministic) and the gate would reject it again.
    """
    if "champion" in trained and trained["champion"][1] == current:
        return f"no new data since version {current} (champion v{trained['champion'][0]})"
    if "challenger" in trained and trained["challenger"][1:] == (current, params_hash):
        return (
            f"no new data since version {current} (v{trained['challenger'][0]} was trained "
            f"on it with these params and not promoted; champion "
            f"v{trained.get('champion', ('none',))[0]})"
        )
    return None


@flow(name="tuneops-retrain")
def retrain_flow(
    root: str = ".", params_file: str | None = None, overrides: dict[str, Any] | None = None
) -> State[Any]:
    """Retrain when data/raw changed since the last model was trained; otherwise skip."""
    ctx = stages.load_context(Path(root), Path(params_file) if params_file else None, overrides)
    # The whole run, subflow included (re-entrant in this process), under the project lock.
    with project_lock(ctx.paths.root, "the retrain flow (tuneops retrain)"):
        preflight_task(ctx)
        validate_task(ctx)  # bad data stops here, before `dvc add`/`dvc push` version it
        current = version_task(ctx)
        trained = trained_task(ctx)
        logger = get_run_logger()
        reason = skip_reason(current, ctx.params.params_hash(), trained)
        if reason is not None:
            message = f"{reason}; nothing trained"
            logger.info(message)
            create_markdown_artifact(key="retrain", markdown=message, description=message)
            return Completed(message=message)
        logger.info(f"data version {current} is new (trained so far: {trained}): retraining")
        state = training_flow(
            root=root, params_file=params_file, overrides=overrides, return_state=True
        )
        # Re-issued, not returned as is: Prefect summarised a returned subflow state as
        # "1/1 states failed."; the training flow's own message (a failed run) or its
        # summary's gate line (a completed one) is the one-line verdict.
        outcome = state.result(raise_on_failure=False)
        if isinstance(outcome, RunSummary):
            return Completed(message=outcome.gate, data=outcome)
        return Failed(message=state.message, data=outcome)
