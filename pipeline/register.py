"""register: re-score the champion, gate, register the challenger, move aliases.

Everything that reads or moves `champion` (and `best`, the best champion so far, which a
challenger is also compared with) runs under the registry lock, so the champion a
challenger was compared with is the champion it replaces: two flows finishing at once
are serialised, and the second one is compared with the first one's result. The verdict
itself is pure (`pipeline.gate`); the task says how its test split is re-scored.
"""

from __future__ import annotations

import getpass
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import behaviour
from pipeline.behaviour import CheckResult, Suite
from pipeline.bootstrap import paired_bootstrap
from pipeline.champion import compare_with_champion, own_test_rows, version_tags
from pipeline.gate import (
    BaselineComparison,
    GateInputs,
    GateVerdict,
    best_after,
    gate,
)
from pipeline.prepare import current_split, split_tags
from pipeline.registered import open_version
from pipeline.registry import (
    BEST,
    RegistrationResult,
    best_version,
    champion_version,
    log_bundle,
    move_best,
    register,
    registry_lock,
    write_registration,
)
from pipeline.tasks.base import (
    Task,
    TestSplit,
    baseline_column,
    lower_is_better_metrics,
    metric_counts,
    require_same_labels,
)
from tuneops.config import GateConfig
from tuneops.runtime import load_bundle as load_runtime_bundle
from tuneops.tracking import MlflowTracker, store_client


@dataclass(frozen=True)
class RegisterInputs:
    """What registering or promoting a model needs, besides the model itself."""

    task: Task
    cfg: GateConfig
    tracking_uri: str
    model_name: str
    prepared_dir: Path  # the current test split: every model is judged on it
    reports_dir: Path  # test_predictions.parquet (the baselines') in; gate/registry out
    # The behavioural checks (gate.behaviour_checks, pipeline.behaviour); None: none.
    behaviour: Suite | None = None


def gate_and_register(
    inputs: RegisterInputs, tracker: MlflowTracker, export_dir: Path, tags: dict[str, str]
) -> tuple[GateVerdict, RegistrationResult]:
    """Under the registry lock: compare with the current champion, gate, register, promote.

    Every check judges the file that ships: the bundle's default model (int8 when export
    kept it), re-scored on the current test split; the baselines are other models, whose
    per-row test predictions the evaluate step wrote (reports/test_predictions.parquet).
    The version records the split it was trained under (split.* tags) and the checksum of
    every bundle file (bundle.sha256.*, set by `register`)."""
    cfg, reports_dir = inputs.cfg, inputs.reports_dir
    # bundle.json's default_model, whatever this CPU would pick: the same file on every
    # machine the gate runs on (int8_s8 passed export's accuracy rule against fp32).
    challenger = load_runtime_bundle(export_dir, model="default")
    split = inputs.task.test_split(inputs.prepared_dir, challenger.labels)
    challenger_pred = split.rescore(challenger)
    latency = p95_latency_ms(challenger, split.texts, cfg.latency_samples) if cfg.latency else None
    judged = _inputs(inputs, split, challenger_pred, latency)
    judged.calibration = shipped_calibration(challenger)
    judged.behaviour = behaviour_results(inputs, challenger, split)
    tags = tags | split_tags(current_split(inputs.prepared_dir))
    logged = log_bundle(export_dir, tracker)  # the upload, outside the lock

    with registry_lock(tracker.client, inputs.model_name):
        current = champion_version(tracker.client, inputs.model_name)
        best = best_version(tracker.client, inputs.model_name)
        anchor = best if best != current else None
        verdict = _judge(inputs, split, challenger_pred, judged, current, current, anchor)
        verdict_tags = {
            "gate.verdict": "passed" if verdict.passed else "failed",
            "gate.failed_checks": ",".join(verdict.failed_checks),
        }
        registered = register(
            inputs.model_name,
            export_dir,
            tags | verdict_tags | _compared_tags(verdict, current),
            verdict.passed,
            tracker,
            reports_dir / "registry.json",
            logged,
        )
        verdict.challenger_version = registered.version
        if verdict.passed and _move_best(inputs, tracker.client, verdict, best):
            registered.aliases = sorted(
                tracker.client.get_model_version(inputs.model_name, registered.version).aliases
            )
            write_registration(registered, reports_dir / "registry.json")
        # The run's record of the verdict, written with the version's: under the same lock.
        tracker.log_metrics(_verdict_metrics(verdict, latency) | behaviour_metrics(verdict))
        tracker.set_tags(verdict_tags)
    return verdict, registered


def _compared_tags(verdict: GateVerdict, champion: str | None) -> dict[str, str]:
    """Which champion and which best champion (`best`, when compared on its own) the
    verdict compared the version with."""
    return {
        "gate.champion_compared": champion or "none",
        "gate.best_compared": verdict.best_version or "none",
    }


def _move_best(inputs: RegisterInputs, client: Any, verdict: GateVerdict, best: str | None) -> bool:
    """After the verdict's challenger was promoted: move alias `best` as
    `pipeline.gate.best_after` says (only with the champion comparison on: without it
    nothing was compared). True if it now names the challenger."""
    if not inputs.cfg.vs_champion:
        return False
    new = best_after(verdict, best)
    if new is not None:
        move_best(client, inputs.model_name, new)
    return new is not None and new == verdict.challenger_version


def _verdict_metrics(verdict: GateVerdict, latency: float | None) -> dict[str, float]:
    """The champion's re-scored test_* (champion.*), the best champion's when it was
    compared on its own (best.*), the intervals and the verdict as run metrics, beside the
    challenger's own test_* in the MLflow compare view."""
    metrics = {"gate.passed": float(verdict.passed)}
    for prefix, comparison in (("champion", verdict.comparison), (BEST, verdict.best_comparison)):
        if comparison is not None:
            metrics |= {f"{prefix}.{k}": v for k, v in comparison.champion_metrics.items()}
            metrics |= {
                f"gate.{prefix}_diff_ci_low": comparison.ci_low,
                f"gate.{prefix}_diff_ci_high": comparison.ci_high,
            }
    if latency is not None:
        metrics["gate.latency_p95_ms"] = latency
    return metrics


def behaviour_metrics(verdict: GateVerdict) -> dict[str, float]:
    """behaviour.<check>_pass_rate, and champion.behaviour.<check>_pass_rate for the
    champion it was compared with on the same cases."""
    found = behaviour.metrics(verdict.behaviour)
    if verdict.comparison is not None:
        found |= {
            f"champion.behaviour.{name}_pass_rate": rate
            for name, rate in verdict.comparison.behaviour.items()
        }
    return found


def behaviour_results(
    inputs: RegisterInputs, bundle: Any, split: TestSplit
) -> list[CheckResult] | None:
    """The behavioural checks on `bundle`'s default model file, their sampled cases drawn
    from `split`'s texts; None without checks."""
    if inputs.behaviour is None:
        return None
    return behaviour.run(inputs.behaviour, bundle, split)


def promote(inputs: RegisterInputs, version: str, reason: str, force: bool) -> GateVerdict | None:
    """Move `champion` to `version` by hand. Unless `force`, the version is first re-scored
    on the current test split and must pass the gate; raises GateRejected otherwise."""
    from pipeline.registry import move_champion
    from tuneops.errors import ConfigError, GateRejected

    client = store_client(inputs.tracking_uri)
    client.get_model_version(inputs.model_name, version)  # an unknown version raises here
    verdict = None
    with registry_lock(client, inputs.model_name):
        if not force:
            if not (inputs.prepared_dir / "test.parquet").exists():
                raise ConfigError(
                    f"{inputs.prepared_dir}: no current test split to gate on; run the "
                    f"flow (or `tuneops stage prepare`) first, or use --force"
                )
            verdict = _gate_version(inputs, client, version)
            if not verdict.passed:
                raise GateRejected(verdict.summary())
        tags = audit_tags("promotion", reason, force)
        if verdict is not None:
            tags |= {"gate.verdict": "passed", "gate.failed_checks": ""}
        best = best_version(client, inputs.model_name)
        move_champion(client, inputs.model_name, version, tags)
        if verdict is not None:  # forced: not re-scored, so `best` stays where it was
            _move_best(inputs, client, verdict, best)
    return verdict


def regate(inputs: RegisterInputs, version: str, reason: str, tags: dict[str, str]) -> GateVerdict:
    """Judge registered `version` again, without training, under the current gate params:
    re-scored on the current test split as a hand promotion is, against the champion (when
    it is another version). Its gate.* tags and `tags` record the new verdict; on a pass it
    becomes the champion (if it is not already). Writes reports/gate.{json,md}."""
    from pipeline.gate import write_reports
    from pipeline.registry import move_champion

    client = store_client(inputs.tracking_uri)
    with registry_lock(client, inputs.model_name):
        verdict = _gate_version(inputs, client, version)
        tags = (
            tags
            | {
                "gate.verdict": "passed" if verdict.passed else "failed",
                "gate.failed_checks": ",".join(verdict.failed_checks),
            }
            | _compared_tags(
                verdict, verdict.comparison.champion_version if verdict.comparison else None
            )
        )
        tags |= audit_tags("regate", reason)
        for key, value in tags.items():
            client.set_model_version_tag(inputs.model_name, version, key, value)
        if verdict.passed and champion_version(client, inputs.model_name) != version:
            best = best_version(client, inputs.model_name)
            move_champion(client, inputs.model_name, version, audit_tags("promotion", reason))
            _move_best(inputs, client, verdict, best)
    write_reports(verdict, inputs.reports_dir)
    return verdict


def audit_tags(action: str, reason: str, forced: bool = False) -> dict[str, str]:
    """Who did what, when and why: recorded on the versions an action touches."""
    return {
        f"{action}.at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        f"{action}.by": getpass.getuser(),
        f"{action}.reason": reason,
        f"{action}.forced": str(forced).lower(),
    }


def p95_latency_ms(classifier: Any, texts: list[str], samples: int) -> float:
    """p95 of single-text predict latency (after 5 warm-up calls)."""
    for text in texts[:5]:
        classifier.predict([text])
    timings = []
    for text in (texts * (samples // max(len(texts), 1) + 1))[:samples]:
        started = time.perf_counter()
        classifier.predict([text])
        timings.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(timings, 95))


def _gate_version(inputs: RegisterInputs, client: Any, version: str) -> GateVerdict:
    """A registered version judged as a challenger would be, on the rows of the current test
    split that were test rows under its own recorded split (it is never scored on rows it
    was trained on), its gold labels through its own label order."""
    whose = f"{inputs.model_name} v{version}"
    tags = version_tags(inputs, version)
    bundle = open_version(inputs.tracking_uri, inputs.model_name, version, tags)
    require_same_labels(
        bundle.labels,
        inputs.prepared_dir,
        whose,
        "it cannot be scored on this data; promote it with --force, or prepare data with "
        "its labels (data.labels)",
        ordered=False,
    )
    split = inputs.task.test_split(inputs.prepared_dir, bundle.labels)
    keep, note = own_test_rows(tags, inputs, split, f"v{version}")
    split = split.subset(keep)
    predicted = split.rescore(bundle)
    champion = champion_version(client, inputs.model_name)
    other = champion if champion != version else None
    best = best_version(client, inputs.model_name)
    anchor = best if best not in (champion, version) else None
    judged = _inputs(inputs, split, predicted, None, keep)
    judged.calibration = shipped_calibration(bundle)
    judged.behaviour = behaviour_results(inputs, bundle, split)
    verdict = _judge(inputs, split, predicted, judged, other, champion, anchor)
    verdict.challenger_version = version
    if note:
        verdict.notes.insert(0, note)
    return verdict


def shipped_calibration(bundle: Any) -> dict[str, Any] | None:
    """bundle.json's calibration entry of the file `bundle` runs (its default model), as
    the runtime reads its temperature; None where it records none."""
    for entry in bundle.meta.get("models", {}).values():
        if entry.get("file") == bundle.model_file:
            found = entry.get("calibration")
            return dict(found) if found is not None else None
    return None


def _inputs(
    inputs: RegisterInputs,
    split: TestSplit,
    predicted: Any,
    latency: float | None,
    keep: list[bool] | None = None,
) -> GateInputs:
    """The gate's figures for one model file's predictions on `split` (`keep`: which rows
    of the current test split it holds, None for all), and each baseline's paired
    bootstrap against them on the same rows."""
    metrics, per_class = split.report(predicted)
    baselines = (
        compare_with_baselines(inputs, split, predicted, keep) if inputs.cfg.beat_baselines else {}
    )
    return GateInputs(
        metrics=metrics,
        per_class=per_class,
        labels=split.gate_labels(per_class),
        primary_metric=inputs.task.primary_metric,
        primary_metric_label=inputs.task.primary_metric_label,
        latency_p95_ms=latency,
        baselines=baselines,
        lower_is_better=lower_is_better_metrics(inputs.task),
    )


def compare_with_baselines(
    inputs: RegisterInputs, split: TestSplit, predicted: Any, keep: list[bool] | None = None
) -> dict[str, BaselineComparison | str]:
    """Per gate.baselines entry: the paired bootstrap of (model - baseline) over the task's
    per-row counts, the baseline's predictions read from reports/test_predictions.parquet
    (its rows where `keep`, when `split` holds only those of the current test split);
    or why it cannot be compared (no such file or column, or another test split's rows:
    stale predictions are never compared)."""
    cfg, primary = inputs.cfg, inputs.task.primary_metric
    path = inputs.reports_dir / "test_predictions.parquet"
    if not path.exists():
        why = f"{path} is missing: run the evaluate stage (it predicts with the baselines)"
        return dict.fromkeys(cfg.baselines, why)
    frame = pd.read_parquet(path)
    if keep is not None and len(keep) == len(frame):
        frame = frame[keep].reset_index(drop=True)
    if frame["text"].tolist() != split.texts:
        why = (
            f"{path} holds another test split's rows ({len(frame)}; the current one has "
            f"{len(split.texts)}): run the evaluate stage on the current data"
        )
        return dict.fromkeys(cfg.baselines, why)
    ours = metric_counts(inputs.task, split, predicted)
    mine = split.report(predicted)[0]
    found: dict[str, BaselineComparison | str] = {}
    for name in cfg.baselines:
        column = baseline_column(name)
        if column not in frame.columns:
            found[name] = f"{path} has no {column!r} column: run the evaluate stage again"
            continue
        theirs = split.recorded(frame[column].tolist())
        counts, scores = metric_counts(inputs.task, split, theirs), split.report(theirs)[0]
        compared = []
        for metric, our_counts in ours.items():  # the primary metric first
            observed, low, high = paired_bootstrap(
                our_counts,
                counts[metric],
                cfg.bootstrap_resamples,
                cfg.bootstrap_confidence,
                cfg.bootstrap_seed,
                split.strata,
            )
            compared.append(
                BaselineComparison(
                    name,
                    float(mine[metric]),
                    float(scores[metric]),
                    observed,
                    low,
                    high,
                    cfg.bootstrap_confidence,
                    cfg.bootstrap_resamples,
                    "" if metric == primary else metric,
                )
            )
        found[name] = replace(compared[0], others=compared[1:])
    return found


def _judge(
    inputs: RegisterInputs,
    split: TestSplit,
    predicted: Any,
    judged: GateInputs,
    compare_with: str | None,
    champion: str | None,
    best: str | None = None,
) -> GateVerdict:
    """The gate on `predicted`; with another champion (`compare_with`), that champion is
    re-scored on the same `split` first (for the flow's challenger and a hand promotion),
    and so is the best champion so far (`best`: alias `best`, when it is neither that
    champion nor the version judged), by the same rule and on the same rows."""
    comparison, not_comparable = None, None
    if compare_with is not None and inputs.cfg.vs_champion:
        comparison, not_comparable = compare_with_champion(inputs, compare_with, split, predicted)
    best_comparison, best_not_comparable = None, None
    if best is not None and inputs.cfg.vs_champion:
        best_comparison, best_not_comparable = compare_with_champion(
            inputs, best, split, predicted, role="best champion"
        )
        if best_not_comparable is not None:
            best_not_comparable += (
                f"; v{best} is alias {BEST!r} (the best champion so far, which every "
                f"challenger is also compared with): point {BEST!r} at a version that can be "
                f"compared, or delete it (MlflowClient set_registered_model_alias / "
                f"delete_registered_model_alias on {inputs.model_name!r}), and the current "
                "champion is the anchor"
            )
    judged = replace(
        judged,
        comparison=comparison,
        not_comparable=not_comparable,
        champion=champion,
        best=best_comparison,
        best_not_comparable=best_not_comparable,
        best_champion=best,
    )
    return gate(inputs.cfg, judged)
