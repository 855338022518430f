"""The retraining flow: retrain, re-gate or skip, by what the model would be built from.

First, as in the training flow, validate → prepare → `dvc add`/`dvc push` under the data
lock (data that validation or prepare refuses never becomes a version). Then the skip key
of the data as prepared, (this dataset's prepared fingerprint, the build params' hash,
the code version: `stages.build_key`), is compared with the tags of the champion and of
the latest challenger:

- same key and same gate params (`params.gate_hash`): skip; training again would rebuild
  the same model (training is deterministic) and the gate would judge it the same;
- same key, other gate params (only gate.* or registry.* changed): re-gate that version
  without training, on the current test split; a pass makes it the champion;
- otherwise (new prepared rows, build params or code; or no model yet): the training
  flow runs as a subflow, with the full gate against the champion, and its final state
  (Completed, or Failed with the gate's verdict) becomes this run's state.

Another dataset of the project getting a batch, or a batch of rows this dataset already
has (a re-export), changes DVC's version of data/raw but not the prepared fingerprint:
nothing is trained. The verdict (which, and why) is logged, published as the `retrain`
artifact and starts the run's final message.

retrain.trigger then narrows "train" when only the data changed since the champion (same
build params and code; `policy`): drift trains only when a drift statistic of the rows new
since the champion's data version, against its train split (tuneops.drift_reference), has
a p-value below retrain.drift_p_value (published as the `drift` artifact, written to
reports/drift.{json,md} and logged to the training run); min_new_rows trains only when at
least retrain.min_new_rows rows are new since then.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, Failed, State

from flows.training import (
    RunSummary,
    preflight_task,
    training_flow,
    validated_version,
)
from pipeline.drift import NAMES, DriftResult
from pipeline.gate import GateVerdict, to_markdown
from pipeline.registry import version_by_alias
from pipeline.train import read_manifest
from tuneops import recording, stages
from tuneops.config import RetrainConfig
from tuneops.drift_reference import champion_data, drift_since_champion
from tuneops.errors import GateRejected
from tuneops.runlock import project_lock
from tuneops.tracking import store_client

# The tags that say what a model was built from (the skip key), and with what it was gated.
KEY_TAGS = ("data.fingerprint", "params.build_hash", "code.version")
KEY_NAMES = {
    "data.fingerprint": "prepared data",
    "params.build_hash": "build params",
    "code.version": "code",
}


@dataclass(frozen=True)
class Built:
    """What a model was (or would now be) built from, and the gate params it was judged by."""

    version: str | None  # None: the current project, not a registered version
    key: tuple[str | None, ...]  # KEY_TAGS' values
    gate_hash: str | None
    verdict: str | None = None  # gate.verdict under gate_hash


@dataclass(frozen=True)
class Decision:
    action: Literal["train", "regate", "skip"]
    reason: str
    version: str | None = None  # the version re-gated, or the one that made training moot


@task(name="trained-models", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def trained_task(ctx: stages.Context) -> dict[str, Built]:
    """alias -> what the champion and the latest challenger were built from."""
    client = store_client(ctx.tracking_uri)
    found = {}
    for alias in ("champion", "challenger"):
        mv = version_by_alias(client, ctx.params.registry.model_name, alias)
        if mv is not None:
            found[alias] = Built(
                str(mv.version),
                tuple(mv.tags.get(tag) for tag in KEY_TAGS),
                mv.tags.get(stages.GATE_KEY),
                mv.tags.get("gate.verdict"),
            )
    return found


def current_build(ctx: stages.Context) -> Built:
    """What a model trained now would be built from (after prepare)."""
    fingerprint = read_manifest(ctx.paths.data_prepared)["fingerprint"]
    key = stages.build_key(ctx)
    return Built(
        None,
        (fingerprint, key["params.build_hash"], key["code.version"]),
        stages.gate_params_hash(ctx),
    )


def decide(current: Built, trained: dict[str, Built]) -> Decision:
    """Train, re-gate or skip (see the module docstring), and why, in words."""
    champion = trained.get("champion")
    for alias in ("champion", "challenger"):
        model = trained.get(alias)
        if model is None or model.key != current.key:
            continue
        built = (
            f"v{model.version} was built from this data (prepared fingerprint "
            f"{_short(current.key[0])}), these build params and this code"
        )
        if model.gate_hash != current.gate_hash:
            return Decision(
                "regate",
                f"{built}; only the gate params changed (params.gate_hash "
                f"{_short(model.gate_hash)} -> {_short(current.gate_hash)}): re-gating "
                f"v{model.version} without training",
                model.version,
            )
        if champion is not None and model.version == champion.version:
            outcome = f"it is the champion (gate {model.verdict or 'verdict unknown'})"
        else:
            outcome = (
                f"the gate {'rejected' if model.verdict == 'failed' else 'judged'} it with "
                f"these gate params (champion v{champion.version if champion else 'none'})"
            )
        return Decision(
            "skip",
            f"{built}, and {outcome}: training again would rebuild the same model",
            model.version,
        )
    against = champion or trained.get("challenger")
    if against is None:
        return Decision("train", "no model is registered yet: training")
    changed = [
        f"{KEY_NAMES[tag]} ({tag} {_short(old)} -> {_short(new)})"
        for tag, old, new in zip(KEY_TAGS, against.key, current.key, strict=True)
        if old != new
    ]
    who = "champion" if against is champion else "latest challenger"
    return Decision(
        "train", f"{' and '.join(changed)} changed since the {who} v{against.version}: training"
    )


def policy(
    decision: Decision,
    cfg: RetrainConfig,
    champion: str,
    drift: DriftResult | None,
    new_rows: int | None,
) -> Decision:
    """`decision` (to train on new data, build params and code as the champion's) under
    retrain.trigger: train, or skip naming the statistic or the row count that decided.
    `new_rows` None: the champion's data version could not be listed (nothing to measure
    against), so the flow trains as under new_data and says so."""
    if decision.action != "train" or cfg.trigger == "new_data":
        return decision
    unmeasured = (
        f"; retrain.trigger {cfg.trigger}: champion v{champion}'s data version is not in "
        "the local DVC cache (`dvc pull` it), so the new rows were not measured: training"
    )
    if new_rows is None:
        return Decision("train", decision.reason + unmeasured)
    if cfg.trigger == "min_new_rows":
        counted = f"{new_rows} rows new since champion v{champion}'s data version"
        if new_rows < cfg.min_new_rows:
            return Decision(
                "skip", f"only {counted}, fewer than retrain.min_new_rows {cfg.min_new_rows}"
            )
        return Decision("train", f"{counted} (retrain.min_new_rows {cfg.min_new_rows}): training")
    if drift is None:
        return Decision("skip", f"no rows new since champion v{champion}'s data version")
    if not drift.shifted:
        return Decision(
            "skip",
            f"retrain.trigger drift: no statistic of the {drift.batch_rows} new rows has a "
            f"p-value below retrain.drift_p_value {cfg.drift_p_value:g} against champion "
            f"v{champion}'s train split: {drift.line()}",
        )
    names = ", ".join(NAMES[s.name] for s in drift.shifted)
    return Decision(
        "train",
        f"retrain.trigger drift: the {drift.batch_rows} new rows shifted in {names} against "
        f"champion v{champion}'s train split ({drift.line()}): training",
    )


@task(name="retrain-policy", cache_policy=NO_CACHE)
def policy_task(
    ctx: stages.Context, decision: Decision, current: Built, trained: dict[str, Built]
) -> tuple[Decision, DriftResult | None]:
    """`policy` when only the data changed since the champion; the drift it measured."""
    champion = trained.get("champion")
    cfg = ctx.params.retrain
    if (
        cfg.trigger == "new_data"
        or decision.action != "train"
        or champion is None
        or champion.key[1:] != current.key[1:]  # build params or code changed: train
    ):
        return decision, None
    if not ctx.task.drift_checked:
        return Decision(
            "train",
            f"{decision.reason}; retrain.trigger {cfg.trigger} is measured for tasks of texts "
            f"with one label each, not {ctx.params.task}'s: training as under new_data",
        ), None
    assert champion.version is not None
    data = champion_data(ctx)
    if data is None:
        return policy(decision, cfg, champion.version, None, None), None
    drift, new_rows = drift_since_champion(ctx, data, measure=cfg.trigger == "drift")
    if drift is not None:
        drift.write(ctx.paths.reports)
        create_markdown_artifact(
            key="drift", markdown=drift.to_markdown(), description=drift.line()
        )
    return policy(decision, cfg, champion.version, drift, new_rows), drift


def log_drift(ctx: stages.Context, drift: DriftResult) -> None:
    """The drift the policy measured on the training run it started (metrics drift.<name>
    and drift.<name>_p_value, reports/drift.{json,md})."""
    tracker = recording.candidate_run(ctx)
    tracker.log_metrics(
        {
            key: value
            for s in drift.statistics
            for key, value in (
                (f"drift.{s.name}", s.statistic),
                (f"drift.{s.name}_p_value", s.p_value),
            )
            if value is not None
        }
    )
    tracker.set_tags({"drift.verdict": drift.verdict})
    for name in ("drift.json", "drift.md"):
        tracker.log_artifact(ctx.paths.reports / name, "reports")


def _short(value: str | None) -> str:
    return "none" if value is None else value[:12]


@task(name="re-gate", cache_policy=NO_CACHE)
def regate_task(ctx: stages.Context, decision: Decision) -> GateVerdict:
    from pipeline.register import regate

    assert decision.version is not None
    verdict = regate(
        stages.register_inputs(ctx),
        decision.version,
        "retrain: only the gate params changed",
        {stages.GATE_KEY: stages.gate_params_hash(ctx)},
    )
    create_markdown_artifact(
        key="gate", markdown=to_markdown(verdict), description=verdict.summary()
    )
    get_run_logger().info(verdict.summary())
    return verdict


@flow(name="tuneops-retrain")
def retrain_flow(
    root: str = ".", params_file: str | None = None, overrides: dict[str, Any] | None = None
) -> State[Any]:
    """Retrain when what the model is built from changed; re-gate or skip otherwise."""
    ctx = stages.load_context(Path(root), Path(params_file) if params_file else None, overrides)
    # The whole run, subflow included (re-entrant in this process), under the project lock.
    with project_lock(ctx.paths.root, "the retrain flow (tuneops retrain)"):
        preflight_task(ctx)
        _, data_version = validated_version(ctx)
        current, trained = current_build(ctx), trained_task(ctx)
        decision, drift = policy_task(ctx, decide(current, trained), current, trained)
        logger = get_run_logger()
        logger.info(f"retrain verdict: {decision.action}: {decision.reason}")
        create_markdown_artifact(
            key="retrain",
            markdown=f"## Retrain: {decision.action}\n\n{decision.reason} (data version "
            f"{data_version})",
            description=decision.reason,
        )
        if decision.action == "skip":
            return Completed(message=f"{decision.reason}; nothing trained")
        if decision.action == "regate":
            verdict = regate_task(ctx, decision)
            message = f"{decision.reason}; {verdict.summary()}"
            if verdict.passed:
                return Completed(message=message, data=verdict)
            return Failed(message=message, data=GateRejected(message))
        state = training_flow(
            root=root, params_file=params_file, overrides=overrides, return_state=True
        )
        # Re-issued, not returned as is: Prefect summarised a returned subflow state as
        # "1/1 states failed."; the training flow's own message (a failed run) or its
        # summary's gate line (a completed one) is the one-line verdict, then why it ran.
        outcome = state.result(raise_on_failure=False)
        if drift is not None and isinstance(outcome, RunSummary):
            log_drift(ctx, drift)
        if isinstance(outcome, RunSummary):
            return Completed(message=f"{outcome.gate}; {decision.reason}", data=outcome)
        return Failed(message=f"{state.message}; {decision.reason}", data=outcome)
