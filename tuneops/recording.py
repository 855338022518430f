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
from pipeline.version_data import read_dvc_md5, verified_version
from tuneops.context import Context
from tuneops.errors import DataValidationError
from tuneops.lineage import git_commit
from tuneops.tracking import MlflowTracker


def current_data_version(ctx: Context) -> str:
    """The version data/raw.dvc names (what `dvc add` last recorded); never runs `dvc add`."""
    dvc_file = ctx.paths.data_raw.with_name("raw.dvc")
    if not dvc_file.exists():
        raise DataValidationError(
            f"{dvc_file}: missing, so data/raw has no data version; expected one: run "
            f"`tuneops stage version-data` (dvc add + push)"
        )
    return read_dvc_md5(dvc_file)


def prepared_data_version(ctx: Context, manifest: dict[str, Any]) -> str:
    """The data version that holds the files data/prepared was made from (its manifest's
    raw_files), checked against that version's file list; never runs `dvc add`."""
    if "raw_files" not in manifest:
        raise DataValidationError(
            f"{ctx.paths.data_prepared / 'manifest.json'}: no raw_files (prepared by an older "
            f"tuneops), so the data it was made from cannot be named; expected them: run "
            f"prepare again (`tuneops stage prepare`)"
        )
    return verified_version(ctx.paths.root, ctx.paths.data_raw, manifest["raw_files"])


# The keys of lineage_tags, for readers that only copy them (the register stage copies
# them from the training summary and need not re-run git or DVC to learn their names).
LINEAGE_KEYS = (
    "data.version",
    "data.fingerprint",
    "data.name",
    "git.commit",
    "params.hash",
    "params.build_hash",
    "code.version",
    "task",
    "base_model",
    "strategy",
)


def lineage_tags(ctx: Context, owned: Iterable[str], build_key: dict[str, str]) -> dict[str, str]:
    """The tags every run and model version carries; `owned`: the pipeline's own files,
    which do not make `git.commit` dirty (`stages.pipeline_owned()`); `build_key`: the
    hashes of the build params and code (`stages.build_key`)."""
    manifest = read_manifest(ctx.paths.data_prepared)
    return {
        "data.version": prepared_data_version(ctx, manifest),
        "data.fingerprint": manifest["fingerprint"],
        "data.name": ctx.params.data.name,
        "git.commit": git_commit(ctx.paths.root, owned),
        "params.hash": ctx.params.params_hash(),
        "params.build_hash": build_key["params.build_hash"],
        "code.version": build_key["code.version"],
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
