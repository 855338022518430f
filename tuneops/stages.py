"""The stages: resolve settings, call the pure step, record what it did; and the table.

`STAGES` lists every stage once (name, function, the pipeline module it runs, data
deps, params, outs). The CLI's `tuneops stage NAME`, the Prefect flow (`flows`) and
dvc.yaml (written from it by `tuneops dvc-yaml`) all follow that table, so the three
paths run the same code. The task is looked up once, in `load_context`. The MLflow run
is created by `train` and its id stored in models/candidate/training_summary.json;
later stages log to that run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from pipeline import label_audit
from pipeline.behaviour import Suite, checks_path
from pipeline.behaviour import load_for as load_behaviour
from pipeline.evaluate import EvaluationResult, evaluate
from pipeline.export import ExportResult, export
from pipeline.fetch_data import FetchResult, fetch_data
from pipeline.gate import GateVerdict, write_reports
from pipeline.ingest import IngestResult, ingest
from pipeline.io import freeze_labels
from pipeline.prepare import PrepareResult, prepare
from pipeline.register import RegisterInputs, gate_and_register
from pipeline.registry import RegistrationResult
from pipeline.train import TrainResult, train
from pipeline.training import distill
from pipeline.training.devices import process_rank
from pipeline.validate import ValidationResult, validate
from pipeline.version_data import DataVersion, version_data
from tuneops import recording
from tuneops.context import Context, load_context, tracking_uri_for
from tuneops.lineage import library_versions
from tuneops.runlock import project_lock
from tuneops.tracking import MlflowTracker, NullTracker, Tracker, check_tracking_server

# Re-exported: callers (CLI, flows, tests) load a context through the stages module.
__all__ = ["STAGES", "Context", "Stage", "load_context", "tracking_uri_for"]


def step_fetch(ctx: Context) -> FetchResult:
    return fetch_data(ctx.params.data, ctx.paths.data_raw)


def data_lock(ctx: Context) -> FileLock:
    """The data lock (data/raw.lock), which ingest holds while it appends and versions.

    The flows hold it from validate through prepare and `dvc add`, so the version they tag
    is the data they read. One lock object per path in this process (is_singleton), shared
    by its threads (thread_local=False): acquiring it again inside is re-entrant."""
    ctx.paths.data_lock.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(ctx.paths.data_lock, timeout=600, thread_local=False, is_singleton=True)


def step_version_data(ctx: Context, push: bool = True) -> DataVersion:
    """`dvc add` + `dvc push` data/raw, holding the data lock (an ingest may be running)."""
    with data_lock(ctx):
        return version_data(ctx.paths.root, ctx.paths.data_raw, push=push)


def step_ingest(ctx: Context, source: Path) -> tuple[IngestResult, DataVersion | None]:
    """Validate `source` (its rows alone, then the dataset it grows), append it as the
    next batch, version and push data/raw. The batch is read and checked as the task
    reads its raw files (rows, or sentences), every row of it (data.max_rows aside).
    All of it, validation and the conflict check included, under the project lock. An
    added batch of a text task is then compared with the champion's train split
    (tuneops.drift_reference): the result's `drift`, reports/drift.{json,md}."""
    with project_lock(ctx.paths.root, f"tuneops ingest {source}"):
        return _ingest(ctx, source)


def _ingest(ctx: Context, source: Path) -> tuple[IngestResult, DataVersion | None]:
    versions: list[DataVersion] = []
    task, data = ctx.task, ctx.params.data
    every_row = data.model_copy(update={"max_rows": None})  # a slice would skip batch rows
    result = ingest(
        source,
        lambda folder, reports: validate(task, every_row, ctx.params.validate_, folder, reports),
        ctx.paths.raw_dataset(data.name),
        ctx.paths.reports,
        ctx.paths.data_lock,
        lambda: versions.append(
            version_data(ctx.paths.root, ctx.paths.data_raw, require_remote=True)
        ),
        (ctx.paths.data_raw.with_name("raw.dvc"),),
        suffixes=task.raw_suffixes,
        data=data if task.cross_batch_conflicts else None,
        policy=ctx.params.validate_,
    )
    if result.added and task.drift_checked:
        from tuneops.drift_reference import batch_drift

        drift = batch_drift(ctx, result.batch_file)
        drift.write(ctx.paths.reports)
        result = dataclasses.replace(result, drift=drift)
    return result, (versions[0] if versions else None)


def step_validate(ctx: Context) -> ValidationResult:
    """Validate and raise DataValidationError (after writing the reports) on any failure.
    A label set inferred from data that passed (no data.labels, no labels.json) is frozen
    in data/raw/<name>/labels.json: versioned with the data, required by `ingest`."""
    dataset_dir = ctx.paths.raw_dataset(ctx.params.data.name)
    result = validate(
        ctx.task, ctx.params.data, ctx.params.validate_, dataset_dir, ctx.paths.reports
    )
    result.raise_for_failures()
    if result.label_source == "inferred":
        # The flows' data lock object (re-entrant): they hold it around validate already,
        # and a second lock object on the same file would wait for the first one forever.
        with data_lock(ctx):
            freeze_labels(dataset_dir, result.labels)
    return result


def step_prepare(ctx: Context) -> PrepareResult:
    """Prepare with the label set that validation fixed (reports/validation.json); the
    label audit (prepare.label_issues) writes reports/label_issues.{json,md}. The audit
    runs inside prepare, not as a stage of its own: under drop it changes the train split,
    and data/prepared can be the output of one stage only."""
    report = json.loads((ctx.paths.reports / "validation.json").read_text(encoding="utf-8"))
    return prepare(
        ctx.task,
        ctx.params.data,
        ctx.params.prepare,
        tuple(report["labels"]),
        ctx.paths.raw_dataset(ctx.params.data.name),
        ctx.paths.data_prepared,
        seed=ctx.params.train.seed,
        reports_dir=ctx.paths.reports,
    )


def step_train(
    ctx: Context, callbacks: Sequence[Any] = (), log: Any = None
) -> tuple[TrainResult, str | None]:
    """Start the MLflow run, log params, tags and datasets, then fine-tune.

    Under torchrun / accelerate launch only rank 0 does all that; the other processes
    train their share of each batch and record nothing (their run id is None). A resumed
    run (the last one was killed) is tagged `train.resumed_from`; the killed run, left
    RUNNING by its process, is marked KILLED. `callbacks`: extra Trainer callbacks; `log`:
    where the progress lines go (None: stderr).
    """
    if process_rank() != 0:
        return _train(ctx, NullTracker(), {}, callbacks, log), None
    check_tracking_server(ctx.tracking_uri)  # fail before compute, not after it
    tags = recording.lineage_tags(ctx, pipeline_owned(), build_key(ctx))
    tags |= {"seed": str(ctx.params.train.seed)}
    tracker = MlflowTracker.start(
        ctx.tracking_uri,
        ctx.params.experiment_name,
        ctx.artifact_location,
        run_name=f"train-{tags['data.version'][:8]}-{tags['params.hash'][:8]}",
        tags=tags,
    )
    with recording.run_scope(tracker, finish=False):
        tracker.log_params(ctx.params.flat())
        recording.log_resolved_params(ctx, tracker)
        tracker.set_tags({f"lib.{k}": v for k, v in library_versions().items()})
        recording.log_datasets(ctx, tracker)
        result = _train(ctx, tracker, {"mlflow_run_id": tracker.run_id} | tags, callbacks, log)
        summary = recording.training_summary(ctx)
        if ctx.params.train.max_length == "auto":  # what auto chose, beside "auto"
            tracker.log_params({"train.max_length.chosen": summary["max_length"]})
        if "distill" in summary:  # the teacher, and what it scored (train.distill)
            tracker.set_tags({"distill.teacher": summary["distill"]["teacher_source"]})
            tracker.log_metrics(
                {
                    f"distill.{k}": float(v)
                    for k, v in summary["distill"].items()
                    if k.startswith("teacher_") and isinstance(v, int | float)
                }
            )
        # Text classification: per split, texts, windows and texts not read whole.
        tracker.log_metrics(
            {
                f"windows.{split}.{key}": float(value)
                for split, counts in summary.get("windows", {}).items()
                for key, value in counts.items()
            }
        )
        tracker.set_tags(
            {
                "device": result.device,
                "precision": result.precision,
                "world_size": result.world_size,
                "global_batch_size": ctx.params.train.batch_size * result.world_size,
                "train.stopped_by": result.stopped_by,
            }
        )
        if result.resumed_from:
            recording.record_resume(ctx, tracker, result)
        tracker.log_metrics(
            {
                "train_runtime_s": result.train_runtime_s,
                "train_tokens_per_s": result.tokens_per_s,
                "trainable_params": result.trainable_params,
                "total_params": result.total_params,
                "trainable_fraction": result.trainable_params / max(result.total_params, 1),
                "peak_memory_mb": result.peak_memory_mb,
                "epochs_run": result.epochs_run,
                "epochs_planned": result.epochs_planned,
            }
            | ({"best_epoch": result.best_epoch} if result.best_epoch is not None else {})
            | {f"best_validation_{k}": v for k, v in result.best_validation.items()}
        )
        if result.adapter_dir is not None:  # the peft adapter alone, before the merge
            tracker.log_artifact(result.adapter_dir, "adapter")
    return result, tracker.run_id


def _train(
    ctx: Context,
    tracker: Tracker,
    extra_summary: dict[str, Any],
    callbacks: Sequence[Any],
    log: Any = None,
) -> TrainResult:
    teacher = None
    if ctx.params.train.distill.teacher:
        teacher = distill.open_teacher(
            ctx.params.train.distill.teacher, ctx.tracking_uri, ctx.paths.root, ctx.task.name
        )
    return train(
        ctx.task,
        ctx.params.model,
        ctx.params.train,
        ctx.paths.data_prepared,
        ctx.paths.candidate,
        ctx.paths.checkpoints,
        ctx.paths.data_cache,
        tracker,
        extra_summary=extra_summary,
        callbacks=callbacks,
        log=log,
        teacher=teacher,
    )


def window_length(ctx: Context) -> int:
    """The candidate's window in tokens: train.max_length, or what `auto` chose for it
    (training_summary.json records it)."""
    chosen = recording.training_summary(ctx).get("max_length")
    if chosen is not None:
        return int(chosen)
    setting = ctx.params.train.max_length
    return int(setting) if setting != "auto" else 0


def step_evaluate(ctx: Context) -> EvaluationResult:
    tracker = recording.candidate_run(ctx)
    with recording.run_scope(tracker, finish=False):
        result = evaluate(
            ctx.task,
            ctx.params.evaluate,
            ctx.params.model,
            window_length(ctx),
            ctx.params.train.seed,
            ctx.paths.data_prepared,
            ctx.paths.candidate,
            ctx.paths.reports,
        )
        tracker.log_metrics(result.flat_metrics())
        tracker.set_tags(result.flat_tags())
        for path in (
            result.metrics_path,
            result.report_path,
            result.confusion_matrix_path,
            ctx.paths.reports / "validation.json",
        ):
            tracker.log_artifact(path, "reports")
        log_label_issues(ctx, tracker)
    return result


def log_label_issues(ctx: Context, tracker: Tracker) -> None:
    """The prepare step's label audit (reports/label_issues.{json,md}) as artifacts of the
    run, and its counts as metrics (label_issues.flagged, ...); nothing for data prepared
    before tuneops audited labels."""
    path = ctx.paths.reports / f"{label_audit.REPORT}.json"
    if not path.exists():
        return
    tracker.log_metrics(label_audit.metrics(json.loads(path.read_text(encoding="utf-8"))))
    for found in (path, path.with_suffix(".md")):
        tracker.log_artifact(found, "reports")


def step_export(ctx: Context) -> ExportResult:
    tracker = recording.candidate_run(ctx)
    summary = recording.training_summary(ctx)
    card = {
        "mlflow_run_id": tracker.run_id,
        "data_version": summary.get("data.version"),
        "base_model": ctx.params.model.name_or_path,
        # What validation let through: `tuneops serve`'s default --max-chars.
        "max_text_chars": ctx.params.validate_.max_text_chars,
    } | {f"distill_{k}": v for k, v in summary.get("distill", {}).items() if k != "teacher"}
    with recording.run_scope(tracker, finish=False):
        result = export(
            ctx.task,
            ctx.params.export,
            window_length(ctx),
            ctx.paths.candidate,
            ctx.paths.data_prepared,
            ctx.paths.export,
            card,
            ctx.params.gate,
            ctx.paths.reports,
            behaviour_suite(ctx),
        )
        tracker.log_metrics(
            {
                "export.parity_max_abs_diff": result.parity_max_abs_diff,
                "export.parity_label_agreement": result.parity_label_agreement,
                "export.onnx_mb": result.onnx_bytes / 2**20,
                "export.fp32_test_f1": result.fp32_f1,
            }
            | _int8_metrics(result)
            | calibration_metrics(result)
        )
        tracker.log_artifact(result.export_dir / "bundle.json", "export")
        tracker.log_artifact(result.export_dir / "README.md", "export")
        if result.reliability_diagram is not None:
            tracker.log_artifact(result.reliability_diagram, "reports")
    return result


# bundle.json's calibration figures logged per model file, as export.<model>_<name>.
CALIBRATION_METRICS = {
    "temperature": "calibration_temperature",  # the served one
    "fitted_temperature": "calibration_fitted_temperature",
    "validation_ece": "validation_ece",
    "validation_ece_fitted": "validation_ece_fitted",
    "test_ece": "test_ece",
    "test_ece_calibrated": "test_ece_calibrated",
    "test_brier": "test_brier",
    "test_brier_calibrated": "test_brier_calibrated",
}


def calibration_metrics(result: ExportResult) -> dict[str, float]:
    """export.fp32_test_ece, export.int8_calibration_temperature, ...: each calibrated
    model file's figures (int8's only when it was kept, as bundle.json has them)."""
    return {
        f"export.{model}_{metric}": float(figures[key])
        for model, figures in result.calibration.items()
        for key, metric in CALIBRATION_METRICS.items()
    }


def _int8_metrics(result: ExportResult) -> dict[str, float]:
    """export.int8_test_f1, export.int8_s8_kept, ...: each int8 variant that was built."""
    return {
        f"export.{name}_{metric}": float(value or 0.0)
        for name, v in result.variants.items()
        if "bytes" in v
        for metric, value in (
            ("test_f1", v["f1"]),
            ("test_accuracy", v["accuracy"]),
            ("label_agreement", v["label_agreement"]),
            ("mb", v["bytes"] / 2**20),
            ("kept", v["kept"]),
            ("reduce_range", v["reduce_range"]),  # 7-bit weights (export.int8_reduce_range)
        )
    }


def step_register(ctx: Context) -> tuple[GateVerdict, RegistrationResult]:
    """Gate the exported candidate against the champion, register it, promote on a pass.

    Writes reports/gate.{json,md} and registry.json; raises nothing on a rejection (the
    caller decides: the flow ends Failed, the CLI exits with GateRejected's code).
    """
    tracker = recording.candidate_run(ctx)
    summary = recording.training_summary(ctx)
    tags = {k: str(summary[k]) for k in recording.LINEAGE_KEYS if k in summary}
    tags |= {"mlflow_run_id": tracker.run_id, GATE_KEY: gate_params_hash(ctx)}
    with recording.run_scope(tracker, finish=True):
        verdict, result = gate_and_register(register_inputs(ctx), tracker, ctx.paths.export, tags)
        if "distill" in summary:
            verdict.notes.append(distill.gate_note(summary["distill"], ctx.task))
        for path in write_reports(verdict, ctx.paths.reports):
            tracker.log_artifact(path, "reports")
        tracker.set_tags(
            {"registered_model": result.model_name, "registered_version": result.version}
        )
    return verdict, result


def run_register(ctx: Context) -> str:
    """The register stage as a command: says where the aliases are, and raises
    GateRejected (exit code 4) on a rejection, after registering the challenger."""
    from tuneops.errors import GateRejected

    verdict, result = step_register(ctx)
    print(f"{result.model_name} v{result.version}: aliases {', '.join(result.aliases)}")
    if not verdict.passed:
        raise GateRejected(verdict.summary())
    return verdict.summary()


def register_inputs(ctx: Context) -> RegisterInputs:
    """What the register stage and `tuneops promote` judge a model with."""
    return RegisterInputs(
        task=ctx.task,
        cfg=ctx.params.gate,
        tracking_uri=ctx.tracking_uri,
        model_name=ctx.params.registry.model_name,
        prepared_dir=ctx.paths.data_prepared,
        reports_dir=ctx.paths.reports,
        behaviour=behaviour_suite(ctx),
    )


def behaviour_suite(ctx: Context) -> Suite | None:
    """The behavioural checks gate.behaviour_checks names (auto: data/checks/<data.name>.yaml
    when it exists), or None."""
    gate, data = ctx.params.gate, ctx.params.data
    return load_behaviour(gate.behaviour_checks, data.name, ctx.paths.root, ctx.task)


@dataclass(frozen=True)
class Stage:
    """One stage: what `tuneops stage NAME` runs, a Prefect task wraps and dvc.yaml lists."""

    name: str
    run: Callable[[Context], Any]
    module: str  # the pipeline module it runs; its dvc.yaml code deps are its imports
    deps: tuple[str, ...] = ()  # data and model folders it reads
    params: tuple[str, ...] = ()  # params.yaml keys besides `task`
    outs: dict[str, list[Any]] = field(default_factory=dict)  # dvc.yaml outs/metrics/plots
    dvc: bool = True  # False: a one-off step (fetch, version) that is not a DVC stage

    @property
    def cmd(self) -> str:
        return f"python -m tuneops.cli stage {self.name}"


def _untracked(*paths: str) -> list[Any]:
    """dvc.yaml outputs that are reports, kept in git's view (`cache: false`)."""
    return [{path: {"cache": False}} for path in paths]


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage("fetch-data", step_fetch, "pipeline.fetch_data", dvc=False),
        Stage("version-data", step_version_data, "pipeline.version_data", dvc=False),
        Stage(
            "validate",
            step_validate,
            "pipeline.validate",
            deps=("data/raw",),
            params=("data", "validate"),
            outs={
                "outs": _untracked(
                    "reports/validation.json", "reports/validation.html", "reports/data_docs"
                )
            },
        ),
        Stage(
            "prepare",
            step_prepare,
            "pipeline.prepare",
            deps=("data/raw", "reports/validation.json"),
            params=("data", "prepare", "train.seed"),  # train.seed: the label audit's folds
            outs={
                "outs": [
                    "data/prepared",
                    *_untracked("reports/label_issues.json", "reports/label_issues.md"),
                ]
            },
        ),
        Stage(
            "train",
            lambda ctx: step_train(ctx)[0],
            "pipeline.train",
            deps=("data/prepared",),
            params=("model", "train"),
            outs={"outs": ["models/candidate"]},
        ),
        Stage(
            "evaluate",
            step_evaluate,
            "pipeline.evaluate",
            deps=("data/prepared", "models/candidate"),
            params=("evaluate", "model", "train.max_length", "train.seed"),
            outs={
                "metrics": _untracked("reports/metrics.json"),
                "plots": _untracked("reports/confusion_matrix.png"),
                "outs": _untracked(
                    "reports/classification_report.json", "reports/test_predictions.parquet"
                ),
            },
        ),
        Stage(
            "export",
            step_export,
            "pipeline.export",
            # data/checks: the behavioural checks, whose pass rates the model card shows
            deps=("data/prepared/test.parquet", "models/candidate", "data/checks"),
            # the gate's per-class floor decides, with export.int8_*, whether int8 ships;
            # gate.behaviour_checks picks the checks file the card's pass rates come from
            params=(
                "export",
                "train.max_length",
                "validate.max_text_chars",
                "gate.behaviour_checks",
                "gate.per_class",
                "gate.per_class_metric",
                "gate.per_class_floor",
                "gate.per_class_min_support",
                "gate.per_class_exempt",
            ),
            outs={"outs": ["models/export"]},
        ),
        # register runs the gate first: the champion is re-scored on the current test
        # split under the registry lock, and `champion` moves only on a pass.
        Stage(
            "register",
            run_register,
            "pipeline.register",
            # the shipped model file is re-scored on the test split and bootstrapped against
            # the baselines' per-row predictions (the evaluate step's)
            deps=(
                "models/export",
                "data/prepared/test.parquet",
                "reports/test_predictions.parquet",
                "data/checks",  # the behavioural checks (gate.behaviour_checks)
            ),
            params=("registry", "gate"),
            outs={
                "outs": _untracked("reports/registry.json", "reports/gate.json", "reports/gate.md")
            },
        ),
    )
}


# Written by tuneops itself besides the stages' outs: `version-data`/`ingest` write data/raw
# and data/raw.dvc, `dvc repro` writes dvc.lock.
_ALSO_OWNED = ("data/raw", "data/raw.dvc", "dvc.lock")


def pipeline_owned() -> tuple[str, ...]:
    """Paths (relative to the project root) that the pipeline writes itself: the STAGES
    outs and the data version files. A change to one does not make `git.commit` dirty."""
    outs = {
        next(iter(out)) if isinstance(out, dict) else out
        for stage in STAGES.values()
        for listed in stage.outs.values()
        for out in listed
    }
    return tuple(sorted(outs | set(_ALSO_OWNED)))


# --- what a model is built from: the retrain flow's skip key ----------------------------

# The stages that build the shipped model file (register only judges it). Their params
# (dvc.yaml's, `task` included) and the code every stage runs are in the skip key with the
# prepared data's fingerprint; the register stage's params (gate.*, registry) are not: a
# change to them alone re-gates the model already built. gate.per_class* are export
# params too (they decide whether int8 ships), so a change to them rebuilds.
BUILD_STAGES = ("validate", "prepare", "train", "evaluate", "export")
GATE_KEY = "params.gate_hash"  # tagged on each version by register (and by a re-gate)


# Export params that only change what the model card reports, not the model files: the
# gate judges them (register's params, in the gate hash), so a change re-gates, not rebuilds.
CARD_ONLY_PARAMS = ("gate.behaviour_checks",)


def build_params() -> tuple[str, ...]:
    """The params.yaml keys the model file is built from (dotted, as dvc.yaml lists them)."""
    listed = {"task", *(p for s in BUILD_STAGES for p in STAGES[s].params)}
    return tuple(sorted(listed - set(CARD_ONLY_PARAMS)))


def params_hash(ctx: Context, keys: Sequence[str]) -> str:
    """sha256 of the resolved values (defaults filled in) of `keys`, first 16 hex digits."""
    tree = ctx.params.resolved()
    chosen = {key: _dotted(tree, key) for key in sorted(keys)}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:16]


def _dotted(tree: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        tree = tree[part]
    return tree


def gate_params_hash(ctx: Context) -> str:
    """The register stage's params and, when gate.behaviour_checks finds one, the checks
    file's bytes: what the gate judges by (an edited floor re-gates in the retrain flow)."""
    keys = params_hash(ctx, STAGES["register"].params)
    gate, data = ctx.params.gate, ctx.params.data
    checks = checks_path(gate.behaviour_checks, data.name, ctx.paths.root)
    if checks is None:
        return keys
    return hashlib.sha256(keys.encode() + b"\0" + checks.read_bytes()).hexdigest()[:16]


def code_version() -> str:
    """sha256 (16 hex digits) of the code every stage runs: the union of the stages' dvc.yaml
    code deps in the imported tuneops, pipeline and flows packages, by path and bytes."""
    from tuneops.dvcfile import REPO, code_deps

    files = sorted({path for stage in STAGES.values() if stage.dvc for path in code_deps(stage)})
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.encode() + b"\0" + (REPO / path).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def build_key(ctx: Context) -> dict[str, str]:
    """The tags that, with data.fingerprint, say what a model was built from."""
    return {"params.build_hash": params_hash(ctx, build_params()), "code.version": code_version()}
