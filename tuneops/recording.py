"""What the stages record: lineage tags, the resolved params, dataset inputs, a resume,
and the MLflow run that later stages log to (its id is in training_summary.json)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.train import TrainResult, read_manifest
from pipeline.version_data import read_dvc_md5, version_data
from tuneops.context import Context
from tuneops.lineage import git_commit
from tuneops.tracking import MlflowTracker


def current_data_version(ctx: Context) -> str:
    dvc_file = ctx.paths.data_raw.with_name("raw.dvc")
    if dvc_file.exists():
        return read_dvc_md5(dvc_file)
    return version_data(ctx.paths.root, ctx.paths.data_raw, push=False).version


# The keys of lineage_tags, for readers that only copy them (the register stage copies
# them from the training summary and need not re-run git or DVC to learn their names).
LINEAGE_KEYS = (
    "data.version",
    "data.fingerprint",
    "data.name",
    "git.commit",
    "params.hash",
    "task",
    "base_model",
    "strategy",
)


def lineage_tags(ctx: Context, owned: Iterable[str] = ()) -> dict[str, str]:
    """The tags every run and model version carries; `owned`: the pipeline's own files,
    which do not make `git.commit` dirty (`stages.pipeline_owned()`)."""
    manifest = read_manifest(ctx.paths.data_prepared)
    return {
        "data.version": current_data_version(ctx),
        "data.fingerprint": manifest["fingerprint"],
        "data.name": ctx.params.data.name,
        "git.commit": git_commit(ctx.paths.root, owned),
        "params.hash": ctx.params.params_hash(),
        "task": ctx.params.task,
        "base_model": ctx.params.model.name_or_path,
        "strategy": ctx.params.train.strategy,
    }


def record_resume(ctx: Context, tracker: MlflowTracker, result: TrainResult) -> None:
    tracker.set_tags(
        {
            "train.resumed_from": result.resumed_from,
            "train.resumed_run_id": result.resumed_run_id or "",
        }
    )
    killed = result.resumed_run_id
    if killed and killed != tracker.run_id:
        from mlflow.exceptions import MlflowException

        try:
            if tracker.client.get_run(killed).info.status == "RUNNING":
                tracker.client.set_terminated(killed, status="KILLED")
        except MlflowException as exc:  # e.g. that run lived in another tracking store
            warnings.warn(f"could not mark the killed run {killed} KILLED: {exc}", stacklevel=2)


def log_resolved_params(ctx: Context, tracker: MlflowTracker) -> None:
    """params/params.yaml on the run: the whole config, defaults filled in (for reproduce),
    credentials in URIs redacted."""
    import tempfile

    import yaml

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "params.yaml"
        path.write_text(yaml.safe_dump(ctx.params.recorded(), sort_keys=False), "utf-8")
        tracker.log_artifact(path, "params")


def training_summary(ctx: Context) -> dict[str, Any]:
    path = ctx.paths.candidate / "training_summary.json"
    return dict(json.loads(path.read_text(encoding="utf-8")))


def candidate_run(ctx: Context) -> MlflowTracker:
    return MlflowTracker(ctx.tracking_uri, str(training_summary(ctx)["mlflow_run_id"]))


@contextmanager
def run_scope(tracker: MlflowTracker, finish: bool) -> Iterator[None]:
    """Mark the run FAILED if the step raises; FINISHED after the last step."""
    try:
        yield
    except BaseException:
        tracker.end("FAILED")
        raise
    if finish:
        tracker.end("FINISHED")


def log_datasets(ctx: Context, tracker: MlflowTracker) -> None:
    """The prepared splits as MLflow run inputs (name, digest, source, schema)."""
    import mlflow
    import pandas as pd
    from mlflow.data.pandas_dataset import from_pandas

    with tracker.active():
        for split in ("train", "validation", "test"):
            path = ctx.paths.data_prepared / f"{split}.parquet"
            frame = ctx.task.dataset_frame(pd.read_parquet(path))
            dataset = from_pandas(
                frame,
                source=str(path),
                name=f"{ctx.params.data.name}-{split}",
                targets=ctx.task.target_column,
            )
            mlflow.log_input(dataset, context=split)
