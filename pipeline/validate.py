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
from great_expectations.expectations.expectation import (
    ColumnMapExpectation,
    ColumnPairMapExpectation,
    MulticolumnMapExpectation,
)
from great_expectations.expectations.registry import get_expectation_impl

if TYPE_CHECKING:
    from pipeline.tasks.base import Task
    from tuneops.config import DataConfig, ValidateConfig

from pipeline.io import raw_files
from tuneops.errors import DataValidationError
from tuneops.paths import atomic_write_text

EXAMPLES_PER_CHECK = 5
ROW_EXPECTATIONS = (ColumnMapExpectation, ColumnPairMapExpectation, MulticolumnMapExpectation)


@dataclass
class CheckResult:
    name: str
    column: str | None
    success: bool
    expected: str
    observed: Any = None
    unexpected_count: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)
    unit: str = "row(s) fail"  # what unexpected_count counts, as the message says it
    fix: str = ""  # what was found beyond the examples, and the key to change
    # One verdict per row (a GX map expectation: schema, label membership): a batch passes
    # it on its own rows. The others (label coverage, counts, types, repeats) judge a dataset.
    per_row: bool = False

    def line(self) -> str:
        rows = ", ".join(f"{e['source']} ({e['value']!r})" for e in self.examples)
        where = f" column {self.column!r}" if self.column else ""
        found = (
            f"; {self.unexpected_count} {self.unit}, e.g. {rows}"
            if self.examples
            else (f"; observed {self.observed}" if self.observed is not None else "")
        )
        fix = f"; {self.fix}" if self.fix and not self.success else ""
        return f"{self.name}{where}: expected {self.expected}{found}{fix}"


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
    # Rows prepare will drop under the drop policies (validate.conflicting_labels,
    # validate.duplicates): file:row, the reason, the label in the user's column name.
    dropped_rows: list[dict[str, str]] = field(default_factory=list)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.success]

    def raise_for_failures(
        self, checks: list[CheckResult] | None = None, on: str | None = None
    ) -> None:
        """DataValidationError listing the failed `checks` (default: all), if any; `on`
        says what was validated (default: the files)."""
        failed = self.failed if checks is None else [c for c in checks if not c.success]
        if failed:
            lines = "\n  ".join(c.line() for c in failed)
            raise DataValidationError(
                f"{len(failed)} validation check(s) failed on {on or ', '.join(self.files)}"
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
    for check in checks:  # in the user's terms: their column names, the key to change
        if check.column is not None:
            check.fix = check.fix or found.fixes.get((check.name, check.column), "")
            check.column = found.column_names.get(check.column, check.column)
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
        dropped_rows=found.dropped_rows,
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
        per_row=issubclass(get_expectation_impl(config.type), ROW_EXPECTATIONS),
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
        fix=f"validate.min_examples_per_class: {minimum} (lower it, or add rows of those labels)",
    )


def is_missing(value: Any) -> bool:
    """A missing cell (None, NaN, pandas' NA); a list or a dict is a value, not missing (and
    pd.isna of a list is an array, not a truth value)."""
    return not isinstance(value, list | dict) and bool(pd.isna(value))


def single_label_check(frame: pd.DataFrame) -> CheckResult:
    """One label per row: a JSONL list (or object) label is multi-label data, which
    str() would silently make one class per combination of labels."""
    several = [
        (source, value)
        for source, value in zip(frame["source"], frame["label"], strict=True)
        if isinstance(value, list | dict)
    ]
    return CheckResult(
        name="expect_label_values_to_be_single",
        column="label",
        per_row=True,
        success=not several,
        expected="one label per row (a string or a number)",
        observed=f"{len(several)} row(s) with a list of labels" if several else "one per row",
        unexpected_count=len(several),
        examples=[{"source": source, "value": repr(value)} for source, value in several[:5]],
        fix=(
            "text classification takes one label per row; a list of labels is multi-label "
            "classification, which tuneops does not train yet: give each row one label"
        ),
    )


def label_type_check(frame: pd.DataFrame) -> CheckResult:
    """Labels all strings, or all numbers: a mix (1 next to "1", or "positive") is a sign of
    a broken export, and str() would silently make 1.0 and "1" different labels. Lists are
    single_label_check's."""
    kinds: dict[str, tuple[str, Any]] = {}  # kind -> (source, value) of its first row
    for source, value in zip(frame["source"], frame["label"], strict=True):
        if not is_missing(value) and not isinstance(value, list | dict):
            kinds.setdefault(_kind(value), (source, value))
    mixed = len(kinds) > 1
    return CheckResult(
        name="expect_label_values_to_share_one_type",
        column="label",
        per_row=True,  # part of the schema: a batch's own rows must not mix
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


CONFLICT, DUPLICATE = "conflicting_label", "duplicate"
CONFLICT_CHECK = "expect_no_text_with_conflicting_labels"


def repeated_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The labelled rows (string text, a label) with what prepare does to each repeat.

    Columns: key (the normalised text: prepare's unit), label, source, conflicting (its
    text appears with two labels: every copy goes) and duplicate_of (the source of the
    first row with the same key and label, for the repeats of a text that does not
    conflict; missing otherwise). One definition for validate, prepare and ingest.
    """
    from pipeline.prepare import normalise_text

    labelled = frame.dropna(subset=["text", "label"])
    labelled = labelled[labelled["text"].map(lambda v: isinstance(v, str))]
    key = labelled["text"].map(normalise_text)
    label = labelled["label"].astype(str)
    conflicting = label.groupby(key).transform("nunique") > 1
    first = labelled["source"].groupby([key, label]).transform("first")
    repeat = pd.DataFrame({"key": key, "label": label}).duplicated(keep="first")
    return pd.DataFrame(
        {
            "key": key,
            "label": label,
            "source": labelled["source"],
            "conflicting": conflicting,
            "duplicate_of": first.where(repeat & ~conflicting),
        }
    )


def dropped_rows(repeats: pd.DataFrame, label_column: str) -> list[dict[str, str]]:
    """Each row prepare drops, in input order: source, reason, the label (user's column)."""
    rows = []
    for source, label, conflicting, first in zip(
        repeats["source"],
        repeats["label"],
        repeats["conflicting"],
        repeats["duplicate_of"],
        strict=True,
    ):
        if conflicting:
            rows.append({"source": source, "reason": CONFLICT, label_column: label})
        elif isinstance(first, str):
            rows.append(
                {"source": source, "reason": DUPLICATE, label_column: label, "duplicate_of": first}
            )
    return rows


def conflicting_labels_check(
    repeats: pd.DataFrame, total_rows: int, cfg: ValidateConfig, involving: str | None = None
) -> CheckResult:
    """No text (after prepare's normalisation) with two labels, under the policy: `drop`
    passes while the rows of such texts are at most validate.max_conflicting_rate of all.

    `involving`: only conflicts that touch rows of this file name are examples, and under
    `reject` only they fail (an ingested batch checked against the batches already there);
    the rate is over every row, as the next validation of the whole dataset sees it.
    """
    conflicting = repeats[repeats["conflicting"]]
    groups = [
        (text, g)
        for text, g in conflicting.groupby("key", sort=True)
        if involving is None or any(s.startswith(f"{involving}:") for s in g["source"])
    ]
    rows = len(conflicting)
    rate = rows / max(total_rows, 1)
    if cfg.conflicting_labels == "reject":
        success = not groups
        fix = (
            "validate.conflicting_labels: reject (set it to drop to drop such rows, up to "
            "validate.max_conflicting_rate)"
        )
    else:
        success = rate <= cfg.max_conflicting_rate
        fix = (
            f"their {rows} rows are {rate:.2%} of {total_rows}, above "
            f"validate.max_conflicting_rate: {cfg.max_conflicting_rate} "
            "(raise it to drop them, or fix the labels)"
        )
    return CheckResult(
        name=CONFLICT_CHECK,
        column="text",
        success=success,
        expected="each text to have one label (the same text labelled twice differently)",
        observed={"texts": len(groups), "rows": rows, "rate": round(rate, 6)},
        unexpected_count=len(groups),
        examples=[{"source": _sources(g), "value": _short(text)} for text, g in groups][
            :EXAMPLES_PER_CHECK
        ],
        unit="text(s) with two labels",
        fix=fix,
    )


def _sources(group: pd.DataFrame) -> str:
    """ "file:row (label)" of a conflicting text's rows: five at most, then the count."""
    shown = [f"{s} ({label})" for s, label in zip(group["source"], group["label"], strict=True)][
        :EXAMPLES_PER_CHECK
    ]
    more = len(group) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


def duplicate_rows_check(
    repeats: pd.DataFrame, total_rows: int, cfg: ValidateConfig
) -> CheckResult:
    """Each (normalised text, label) once, under the policy: `drop` passes while the
    repeats (every copy after the first) are at most validate.max_duplicate_rate of all.

    Not GX's ExpectColumnProportionOfUniqueValuesToBeBetween: it counts raw texts (a
    conflicting copy, a first occurrence) and cannot say which rows prepare drops.
    """
    repeat = repeats[repeats["duplicate_of"].notna()]
    rate = len(repeat) / max(total_rows, 1)
    if cfg.duplicates == "reject":
        success = repeat.empty
        fix = (
            "validate.duplicates: reject (set it to drop to drop such rows, up to "
            "validate.max_duplicate_rate)"
        )
    else:
        success = rate <= cfg.max_duplicate_rate
        fix = (
            f"{len(repeat)} rows are {rate:.2%} of {total_rows}, above "
            f"validate.max_duplicate_rate: {cfg.max_duplicate_rate} "
            "(raise it to drop them, or remove the repeats)"
        )
    return CheckResult(
        name="expect_no_duplicate_rows",
        column="text",
        success=success,
        expected="each (text, label) once (after whitespace and Unicode normalisation)",
        observed={"rows": len(repeat), "rate": round(rate, 6)},
        unexpected_count=len(repeat),
        examples=[
            {"source": source, "value": f"repeats {first}"}
            for source, first in zip(repeat["source"], repeat["duplicate_of"], strict=True)
        ][:EXAMPLES_PER_CHECK],
        fix=fix,
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
