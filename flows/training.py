"""The training flow: fetch → validate → prepare → version → train → evaluate → export → gate.

Each step is a Prefect task over the same function the DVC stage runs. Only the DVC
push is retried (a remote can fail transiently); every other step is deterministic,
and retrying a deterministic failure only wastes time. Reports become artifacts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from pipeline import label_audit
from pipeline.gate import GateVerdict, to_markdown
from pipeline.validate import ValidationResult
from tuneops import stages
from tuneops.errors import DataValidationError, GateRejected, TuneopsError
from tuneops.runlock import project_lock
from tuneops.tracking import check_tracking_server, redact_uri


class _NoTracebackForTuneopsErrors(logging.Filter):
    """Prefect logs a failed task or flow run with its traceback. A TuneopsError (bad data,
    an unreachable store, a rejected gate) is an outcome whose message says what to fix:
    its log line keeps the message and drops the traceback. Other errors (bugs) keep it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], TuneopsError):
            record.exc_info, record.exc_text = None, None
        return True


for _name in ("prefect.task_runs", "prefect.flow_runs"):
    logging.getLogger(_name).addFilter(_NoTracebackForTuneopsErrors())


@dataclass
class RunSummary:
    """What `tuneops run` prints at the end."""

    data_version: str
    rows: dict[str, int]
    metrics: dict[str, Any]
    model_name: str
    model_version: str
    aliases: list[str]
    champion_version: str | None
    onnx_path: str
    parity_max_abs_diff: float
    parity_label_agreement: float
    int8: str
    mlflow_run_id: str
    tracking_uri: str
    gate: str
    # The task's metric names: (accuracy key, primary metric key, its label for people).
    metric_names: tuple[str, str, str] = ("test_accuracy", "test_macro_f1", "macro-F1")

    def text(self) -> str:
        accuracy, f1, label = self.metric_names
        rows = comparison_rows(self.metrics)
        width = max([30, *(len(name) for name, _ in rows)])
        table = "\n".join(
            f"  {name:<{width}} {r[accuracy]:>8.4f} {r[f1]:>9.4f}" for name, r in rows
        )
        return (
            f"data version      {self.data_version}\n"
            f"rows              train {self.rows['train']}, validation "
            f"{self.rows['validation']}, test {self.rows['test']}\n"
            f"test metrics\n  {'model':<{width}} {'accuracy':>8} {label:>9}\n{table}\n"
            f"gate              {self.gate}\n"
            f"registered        {self.model_name} version {self.model_version} "
            f"(aliases: {', '.join(self.aliases) or 'none'}; champion is "
            f"{self.champion_version or 'none'})\n"
            f"ONNX              {self.onnx_path} (max |logit diff| "
            f"{self.parity_max_abs_diff:.1e}, label agreement {self.parity_label_agreement:.1%})\n"
            f"int8              {self.int8}\n"
            f"MLflow run        {self.mlflow_run_id} in {redact_uri(self.tracking_uri)}\n"
            f"open the UI       tuneops ui"
        )


BASELINE_NAMES = {
    "before_finetuning": "before fine-tuning",
    "before_finetuning_pooler": "before fine-tuning, pooler features",
    "before_finetuning_mean_pooled": "before fine-tuning, mean-pooled features",
    "tfidf": "TF-IDF + logistic regression",
    "majority": "majority class",
    "most_frequent_tag": "most frequent tag per word",
}


def comparison_rows(metrics: dict[str, Any]) -> list[tuple[str, Any]]:
    """[(model, its metrics)]: the fine-tuned model, then each baseline."""
    baselines = [(BASELINE_NAMES.get(k, k), v) for k, v in metrics.items() if isinstance(v, dict)]
    return [("fine-tuned", metrics), *baselines]


def metric_names(ctx: stages.Context) -> tuple[str, str, str]:
    """The task's accuracy and primary metric keys, and the primary metric's label."""
    task = ctx.task
    return task.accuracy_metric, task.primary_metric, task.primary_metric_label


@task(name="preflight", cache_policy=NO_CACHE)
def preflight_task(ctx: stages.Context) -> None:
    """The tracking store answers (seconds), before any step that costs minutes."""
    check_tracking_server(ctx.tracking_uri)
    get_run_logger().info(f"MLflow tracking store {redact_uri(ctx.tracking_uri)} answers")


@task(name="fetch-data", cache_policy=NO_CACHE)
def fetch_task(ctx: stages.Context) -> None:
    result = stages.step_fetch(ctx)
    get_run_logger().info(
        f"raw data: {result.dataset_dir} ({'written' if result.created else 'already present'})"
    )


@task(name="version-data", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def version_task(ctx: stages.Context) -> str:
    version = stages.step_version_data(ctx)
    get_run_logger().info(
        f"data version {version.version} (pushed to DVC remote: {version.remote or 'none'})"
    )
    return version.version


@task(name="validate", cache_policy=NO_CACHE)
def validate_task(ctx: stages.Context) -> None:
    try:
        result = stages.step_validate(ctx)
    except DataValidationError:
        _publish_validation(ctx)
        raise
    _publish_validation(ctx, result)


@task(name="prepare", cache_policy=NO_CACHE)
def prepare_task(ctx: stages.Context) -> dict[str, int]:
    result = stages.step_prepare(ctx)
    get_run_logger().info(
        f"prepared {result.rows} (fingerprint {result.fingerprint[:12]}, dropped "
        f"{result.dropped_duplicates} duplicates, {result.dropped_conflicts} conflicting)"
    )
    _publish_label_issues(ctx)
    return result.rows


@task(name="train", cache_policy=NO_CACHE)
def train_task(ctx: stages.Context) -> str:
    # Progress lines (every train.logging_steps steps, each epoch) to the Prefect run log.
    result, run_id = stages.step_train(ctx, log=get_run_logger())
    assert run_id is not None  # one process: the CLI runs only `stage train` data-parallel
    get_run_logger().info(
        f"trained on {result.device} in {result.train_runtime_s:.0f}s "
        f"({result.tokens_per_s:.0f} tokens/s); MLflow run {run_id}"
    )
    return run_id


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(ctx: stages.Context) -> dict[str, Any]:
    result = stages.step_evaluate(ctx)
    accuracy, f1, _ = metric_names(ctx)
    rows = [
        {"model": name, accuracy: r[accuracy], f1: r[f1]}
        for name, r in comparison_rows(result.metrics)
    ]
    create_table_artifact(key="test-metrics", table=rows, description="Test split, same rows")
    return result.metrics


@task(name="export", cache_policy=NO_CACHE)
def export_task(ctx: stages.Context) -> tuple[str, float, float, str]:
    result = stages.step_export(ctx)
    if result.int8_kept:
        int8 = (
            f"{result.export_dir / 'model.int8.onnx'} ({(result.int8_bytes or 0) / 2**20:.1f} MB, "
            f"test F1 {result.int8_f1:.4f} vs fp32 {result.fp32_f1:.4f}, "
            f"label agreement {result.int8_label_agreement:.1%}; the bundle's default)"
        )
    else:
        int8 = result.int8_reason
    s8 = result.variants.get("int8_s8", {})
    int8 += "; int8_s8 (int8 weights, picked on VNNI/AMX CPUs): " + (
        f"model.int8s8.onnx, test F1 {s8['f1']:.4f}, label agreement {s8['label_agreement']:.1%}"
        + (", 7-bit weights (export.int8_reduce_range)" if s8.get("reduce_range") else "")
        if s8.get("kept")
        else s8.get("reason", "not built")
    )
    shipped = result.calibration.get("int8" if result.int8_kept else "fp32")
    calibrated = (
        f"; calibration T {shipped['temperature']:.3f}"
        f"{'' if shipped['temperature_kept'] else ' (unscaled: no lower validation ECE)'}"
        f", test ECE {shipped['test_ece']:.4f} -> "
        f"{shipped['test_ece_calibrated']:.4f} (reports/reliability_diagram.png)"
        if shipped
        else ""
    )
    get_run_logger().info(f"ONNX bundle {result.export_dir}; int8: {int8}{calibrated}")
    return str(result.onnx_path), result.parity_max_abs_diff, result.parity_label_agreement, int8


@task(name="register", cache_policy=NO_CACHE)
def register_task(ctx: stages.Context) -> tuple[GateVerdict, stages.RegistrationResult]:
    verdict, result = stages.step_register(ctx)
    create_markdown_artifact(
        key="gate", markdown=to_markdown(verdict), description=verdict.summary()
    )
    get_run_logger().info(
        f"{verdict.summary()}; {result.model_name} v{result.version} aliases "
        f"{', '.join(result.aliases)}"
    )
    return verdict, result


# No log_prints: Prefect's print patch breaks dill's stdout capture, which HF datasets
# uses to fingerprint the tokenise function (it would log pages of bytecode).
@flow(name="tuneops-training")
def training_flow(
    root: str = ".", params_file: str | None = None, overrides: dict[str, Any] | None = None
) -> RunSummary:
    """Run the whole chain once on params.yaml (plus dotted `overrides`)."""
    ctx = stages.load_context(Path(root), Path(params_file) if params_file else None, overrides)
    with project_lock(ctx.paths.root, "the training flow (tuneops run)"):
        return _run_chain(ctx)


def _run_chain(ctx: stages.Context) -> RunSummary:
    preflight_task(ctx)
    fetch_task(ctx)
    rows, data_version = validated_version(ctx)
    run_id = train_task(ctx)
    metrics = evaluate_task(ctx)
    onnx_path, max_diff, agreement, int8 = export_task(ctx)
    verdict, registered = register_task(ctx)
    if not verdict.passed:
        # A rejection is an outcome, not a crash: a Failed state with the one-line
        # verdict (no traceback); its result raises GateRejected for callers and the CLI.
        message = verdict.summary()
        return Failed(message=message, data=GateRejected(message))  # type: ignore[return-value]
    return RunSummary(
        data_version,
        rows,
        metrics,
        registered.model_name,
        registered.version,
        registered.aliases,
        registered.champion_version,
        onnx_path,
        max_diff,
        agreement,
        int8,
        run_id,
        ctx.tracking_uri,
        verdict.summary(),
        metric_names(ctx),
    )


def validated_version(ctx: stages.Context) -> tuple[dict[str, int], str]:
    """validate → prepare → version, all under the data lock: validation and preparation
    (which refuses, e.g., a label that no row hashes into the test split) run before
    `dvc add`/`dvc push`, so bad data never becomes a version; and no ingest can change
    data/raw between the reads and `dvc add`, so the version is the data prepared (the
    train step checks it against the prepared files, recording.prepared_data_version)."""
    with stages.data_lock(ctx):
        validate_task(ctx)
        rows = prepare_task(ctx)
        return rows, version_task(ctx)


def _publish_label_issues(ctx: stages.Context) -> None:
    """The label audit (reports/label_issues.json) as a markdown artifact: the counts and
    the most suspect rows (every row is in reports/label_issues.md)."""
    import json

    report = json.loads((ctx.paths.reports / "label_issues.json").read_text(encoding="utf-8"))
    counts = report["flagged"], report["rows_audited"]
    get_run_logger().info(
        f"label audit: {counts[0]} of {counts[1]} train rows flagged (reports/label_issues.md)"
        if report["audited"]
        else f"label audit: not run ({report['reason']})"
    )
    create_markdown_artifact(
        key="label-issues",
        markdown=label_audit.to_markdown(report, limit=ARTIFACT_ROWS),
        description="Train rows whose label looks wrong (cleanlab, before training)",
    )


# The label-issues artifact shows the most suspect rows; the report lists them all.
ARTIFACT_ROWS = 50


def _publish_validation(ctx: stages.Context, result: ValidationResult | None = None) -> None:
    path = ctx.paths.reports / "validation.json"
    if result is None and not path.exists():
        return
    import json

    report = json.loads(path.read_text(encoding="utf-8"))
    lines = [
        f"| {'pass' if c['success'] else '**FAIL**'} | {c['name']} | {c['column']} | "
        f"{c['expected']} | {c['unexpected_count']} |"
        for c in report["checks"]
    ]
    create_markdown_artifact(
        key="data-validation",
        markdown=(
            f"## Data validation: {'passed' if report['success'] else 'FAILED'} "
            f"({report['rows']} rows)\n\n| result | expectation | column | expected | "
            f"failing rows |\n| --- | --- | --- | --- | --- |\n" + "\n".join(lines)
        ),
    )
