"""validate: the task's Great Expectations suite over the raw dataset, with JSON and HTML reports.

Each failed check names the expectation, the column and a few offending rows as
"file:row", so a person can open the input and fix it.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import great_expectations as gx
import pandas as pd
from great_expectations.data_context.types.base import ProgressBarsConfig

if TYPE_CHECKING:
    from pipeline.tasks.base import Task
    from tuneops.config import DataConfig, ValidateConfig

from pipeline.io import raw_files
from tuneops.errors import DataValidationError
from tuneops.paths import atomic_write_text

EXAMPLES_PER_CHECK = 5


@dataclass
class CheckResult:
    name: str
    column: str | None
    success: bool
    expected: str
    observed: Any = None
    unexpected_count: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    def line(self) -> str:
        rows = ", ".join(f"{e['source']} ({e['value']!r})" for e in self.examples)
        where = f" column {self.column!r}" if self.column else ""
        found = (
            f"; {self.unexpected_count} row(s) fail, e.g. {rows}"
            if self.examples
            else (f"; observed {self.observed}" if self.observed is not None else "")
        )
        return f"{self.name}{where}: expected {self.expected}{found}"


@dataclass
class ValidationResult:
    success: bool
    rows: int
    files: list[str]
    labels: tuple[str, ...]
    label_source: str  # "params", "labels.json" or "inferred"
    label_counts: dict[str, int]
    checks: list[CheckResult]
    report_json: Path
    report_html: Path

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.success]

    def raise_for_failures(self) -> None:
        if self.failed:
            lines = "\n  ".join(c.line() for c in self.failed)
            raise DataValidationError(
                f"{len(self.failed)} validation check(s) failed on {', '.join(self.files)}"
                f" (report: {self.report_json}):\n  {lines}"
            )


def validate(
    task: Task, data: DataConfig, cfg: ValidateConfig, dataset_dir: Path, reports_dir: Path
) -> ValidationResult:
    """Run the task's expectation suite on every batch of `dataset_dir`; write the reports."""
    found = task.validation_input(data, cfg, dataset_dir)
    checks = run_suite(
        found.frame,
        found.expectations,
        found.columns,
        reports_dir / "data_docs",
        found.suite_name,
    )
    checks += found.checks
    result = ValidationResult(
        success=all(c.success for c in checks),
        rows=len(found.frame),
        files=[str(p) for p in raw_files(dataset_dir, task.raw_suffixes)],
        labels=found.labels,
        label_source=found.label_source,
        label_counts=found.label_counts,
        checks=checks,
        report_json=reports_dir / "validation.json",
        report_html=reports_dir / "validation.html",
    )
    write_reports(result)
    return result


def run_suite(
    frame: pd.DataFrame,
    expectations: list[Any],
    columns: list[str],
    docs_dir: Path,
    suite_name: str,
) -> list[CheckResult]:
    """Run `expectations` on `frame[columns]` in an ephemeral GX context; Data Docs in docs_dir."""
    context = gx.get_context(mode="ephemeral")
    context.enable_analytics(False)
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.add_data_docs_site(
        site_name="tuneops",
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(docs_dir),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    batch = (
        context.data_sources.add_pandas("raw")
        .add_dataframe_asset(name="raw_dataset")
        .add_batch_definition_whole_dataframe("all_batches")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=suite_name))
    for expectation in expectations:
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(data=batch, suite=suite, name="raw_dataset")
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name="validate",
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["tuneops"])],
            result_format={"result_format": "COMPLETE"},
        )
    )
    # GX sees only `columns`; "source" (file:row) is looked up by index afterwards.
    outcome = checkpoint.run(batch_parameters={"dataframe": frame[columns]})
    return [_check_from_gx(r, frame) for run in outcome.run_results.values() for r in run.results]


def _check_from_gx(result: Any, frame: pd.DataFrame) -> CheckResult:
    config = result.expectation_config
    kwargs = dict(config.kwargs)
    column = kwargs.pop("column", None) or kwargs.get("column_A")
    kwargs.pop("batch_id", None)
    details = result.result or {}
    indices = (details.get("unexpected_index_list") or [])[:EXAMPLES_PER_CHECK]
    examples = [
        {"source": frame.at[i, "source"], "value": _short(frame.at[i, column])}
        for i in indices
        if isinstance(i, int) and column is not None
    ]
    return CheckResult(
        name=config.type,
        column=column,
        success=bool(result.success),
        expected=", ".join(f"{k}={_short(v)}" for k, v in kwargs.items()) or "to hold",
        observed=_jsonable(_observed(details)),
        unexpected_count=int(details.get("unexpected_count") or 0),
        examples=examples,
    )


def _observed(details: dict[str, Any]) -> Any:
    # ExpectColumnDistinctValuesToContainSet reports what is missing, not what it saw.
    if details.get("observed_value") is None and details.get("partial_missing_list"):
        return {"missing": details["partial_missing_list"]}
    return details.get("observed_value")


def min_examples_check(frame: pd.DataFrame, labels: tuple[str, ...], minimum: int) -> CheckResult:
    # Written by hand: GX 1.x has no pandas expectation for "every value occurs at least
    # N times" (the distribution expectations compare shares, not counts).
    counts = frame["label"].value_counts().reindex(list(labels), fill_value=0)
    short = {str(k): int(v) for k, v in counts.items() if v < minimum}
    return CheckResult(
        name="expect_each_label_to_have_min_examples",
        column="label",
        success=not short,
        expected=f"at least {minimum} rows per label",
        observed={str(k): int(v) for k, v in counts.items()},
        unexpected_count=len(short),
        examples=[{"source": "label counts", "value": f"{k}: {v}"} for k, v in short.items()],
    )


def label_type_check(frame: pd.DataFrame) -> CheckResult:
    """Labels all strings, or all numbers: a mix (1 next to "1", or "positive") is a sign of
    a broken export, and str() would silently make 1.0 and "1" different labels."""
    kinds: dict[str, tuple[str, Any]] = {}  # kind -> (source, value) of its first row
    for source, value in zip(frame["source"], frame["label"], strict=True):
        if not pd.isna(value):
            kinds.setdefault(_kind(value), (source, value))
    mixed = len(kinds) > 1
    return CheckResult(
        name="expect_label_values_to_share_one_type",
        column="label",
        success=not mixed,
        expected="every label a string, or every label a number",
        observed=sorted(kinds),
        unexpected_count=len(kinds) if mixed else 0,
        examples=[
            {"source": source, "value": f"{value!r}, a {kind}"}
            for kind, (source, value) in kinds.items()
        ]
        if mixed
        else [],
    )


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def two_labels_check(labels: tuple[str, ...]) -> CheckResult:
    return CheckResult(
        name="expect_at_least_two_labels",
        column="label",
        success=len(labels) >= 2,
        expected="at least 2 labels (a classifier needs two classes to tell apart)",
        observed=list(labels),
    )


def conflicting_labels_check(frame: pd.DataFrame, involving: str | None = None) -> CheckResult:
    """No text (after prepare's normalisation) appears with two different labels.

    `involving`: only conflicts that touch rows of this file name (an ingested batch
    checked against the batches already there).
    """
    from pipeline.prepare import normalise_text

    labelled = frame.dropna(subset=["text", "label"])
    labelled = labelled[labelled["text"].map(lambda v: isinstance(v, str))]
    key = labelled["text"].map(normalise_text)
    per_text = labelled.groupby(key)["label"].transform("nunique")
    conflicting = labelled[per_text > 1]
    examples = [
        {
            "source": ", ".join(
                f"{s} ({label})" for s, label in zip(g["source"], g["label"], strict=True)
            ),
            "value": _short(text),
        }
        for text, g in conflicting.groupby(key[per_text > 1], sort=True)
        if involving is None or any(s.startswith(f"{involving}:") for s in g["source"])
    ]
    return CheckResult(
        name="expect_no_text_with_conflicting_labels",
        column="text",
        success=not examples,
        expected="each text to have one label (the same text labelled twice differently)",
        unexpected_count=len(examples),
        examples=examples[:EXAMPLES_PER_CHECK],
    )


def _short(value: Any, limit: int = 80) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "…"
    if isinstance(value, list) and len(value) > 10:
        return [*value[:10], "…"]
    return _jsonable(value)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


def write_reports(result: ValidationResult) -> None:
    payload = asdict(result)
    payload["report_json"] = str(result.report_json)
    payload["report_html"] = str(result.report_html)
    atomic_write_text(result.report_json, json.dumps(payload, indent=2, default=str) + "\n")
    rows = "\n".join(
        f"<tr><td>{'pass' if c.success else '<b>FAIL</b>'}</td><td>{html.escape(c.name)}</td>"
        f"<td>{html.escape(str(c.column))}</td><td>{html.escape(c.expected)}</td>"
        f"<td>{html.escape(json.dumps(c.examples or c.observed, default=str))}</td></tr>"
        for c in result.checks
    )
    verdict = "passed" if result.success else "FAILED"
    atomic_write_text(
        result.report_html,
        (
            f"<!doctype html><meta charset='utf-8'><title>tuneops validation</title>"
            f"<h1>Validation {verdict}: {result.rows} rows</h1>"
            f"<p>Files: {html.escape(', '.join(result.files))}</p>"
            f"<p>Labels ({result.label_source}): {html.escape(str(result.label_counts))}</p>"
            f"<table border=1 cellpadding=4><tr><th>result</th><th>expectation</th><th>column</th>"
            f"<th>expected</th><th>examples / observed</th></tr>{rows}</table>"
            "<p>Great Expectations Data Docs: "
            "<a href='data_docs/index.html'>data_docs/index.html</a></p>"
        ),
    )
