"""Gate and registry together: re-score the champion, decide, register, move aliases.

Everything that reads or moves `champion` runs under the registry lock, so the champion
a challenger was compared with is the champion it replaces: two flows finishing at once
are serialised, and the second one is compared with the first one's result.
"""

from __future__ import annotations

import getpass
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import classification_report

from tuneops.config import GateConfig
from tuneops.pipeline.evaluate import score
from tuneops.pipeline.gate import (
    ChampionComparison,
    GateVerdict,
    entity_counts,
    gate,
    paired_bootstrap,
    paired_bootstrap_entities,
)
from tuneops.pipeline.registry import (
    RegistrationResult,
    champion_version,
    load_bundle,
    register,
    registry_lock,
)
from tuneops.runtime import load_bundle as load_runtime_bundle
from tuneops.tracking import MlflowTracker, store_client


@dataclass
class TestSplit:
    """The current test split of a text classification task, as the gate scores it."""

    texts: list[str]
    label_ids: np.ndarray
    labels: list[str]
    metric = "test_macro_f1"

    @classmethod
    def read(cls, prepared_dir: Path, labels: list[str]) -> TestSplit:
        test = pd.read_parquet(prepared_dir / "test.parquet")
        return cls(test["text"].tolist(), test["label_id"].to_numpy(), labels)

    def rescore(self, bundle: Any) -> np.ndarray:
        """Predicted label ids of a bundle (its own label order mapped to ours)."""
        predicted = bundle.logits(self.texts, batch_size=64).argmax(axis=1)
        mapping = np.array([self.labels.index(label) for label in bundle.labels])
        return np.asarray(mapping[predicted])

    def report(self, predicted: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        metrics: dict[str, Any] = score(self.label_ids, predicted, len(self.labels))
        per_class = classification_report(
            self.label_ids,
            predicted,
            labels=list(range(len(self.labels))),
            target_names=self.labels,
            output_dict=True,
            zero_division=0,
        )
        return metrics, per_class

    def gate_labels(self, per_class: dict[str, Any]) -> list[str]:
        return self.labels

    def compare(self, cfg: GateConfig, challenger: Any, champion: Any) -> tuple[float, ...]:
        return paired_bootstrap(
            self.label_ids,
            challenger,
            champion,
            len(self.labels),
            cfg.bootstrap_resamples,
            cfg.bootstrap_confidence,
            cfg.bootstrap_seed,
        )


@dataclass
class TokenTestSplit:
    """The current test split of a token classification task: sentences and gold tags."""

    sentences: list[list[str]]
    tags: list[list[str]]
    labels: list[str]
    metric = "test_entity_f1"

    @classmethod
    def read(cls, prepared_dir: Path, labels: list[str]) -> TokenTestSplit:
        test = pd.read_parquet(prepared_dir / "test.parquet")
        return cls([list(t) for t in test["tokens"]], [list(t) for t in test["tags"]], labels)

    @property
    def texts(self) -> list[str]:
        return [" ".join(s) for s in self.sentences]

    def rescore(self, bundle: Any) -> list[list[str]]:
        return list(bundle.predict_words(self.sentences, batch_size=64))

    def report(self, predicted: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        from tuneops.pipeline.evaluate_tokens import entity_scores, entity_type_report

        scores = dict(entity_scores(self.tags, predicted))
        return scores, entity_type_report(self.tags, predicted)

    def gate_labels(self, per_class: dict[str, Any]) -> list[str]:
        return [k for k in per_class if not k.endswith(" avg")]

    def compare(self, cfg: GateConfig, challenger: Any, champion: Any) -> tuple[float, ...]:
        return paired_bootstrap_entities(
            entity_counts(self.tags, challenger),
            entity_counts(self.tags, champion),
            cfg.bootstrap_resamples,
            cfg.bootstrap_confidence,
            cfg.bootstrap_seed,
        )


def read_split(prepared_dir: Path, labels: list[str], task: str) -> TestSplit | TokenTestSplit:
    kind = TokenTestSplit if task == "token-classification" else TestSplit
    return kind.read(prepared_dir, labels)


def compare_with_champion(
    cfg: GateConfig,
    tracking_uri: str,
    model_name: str,
    version: str,
    split: TestSplit | TokenTestSplit,
    challenger_pred: Any,
) -> tuple[ChampionComparison | None, str | None]:
    """The champion re-scored on `split` and the paired bootstrap; or (None, why not)."""
    champion = load_bundle(tracking_uri, model_name, version)
    if sorted(champion.labels) != sorted(split.labels):
        return None, (
            f"champion v{version} predicts labels {champion.labels}, the challenger "
            f"{split.labels}: not comparable (promote by hand with --force)"
        )
    champion_pred = split.rescore(champion)
    observed, low, high = split.compare(cfg, challenger_pred, champion_pred)
    metrics, _ = split.report(champion_pred)
    return ChampionComparison(
        version,
        metrics,
        observed,
        low,
        high,
        cfg.bootstrap_confidence,
        cfg.bootstrap_resamples,
        split.metric,
    ), None


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


def gate_and_register(
    cfg: GateConfig,
    tracker: MlflowTracker,
    model_name: str,
    export_dir: Path,
    prepared_dir: Path,
    reports_dir: Path,
    tags: dict[str, str],
    parity_limits: tuple[float, float],
) -> tuple[GateVerdict, RegistrationResult]:
    """Under the registry lock: compare with the current champion, gate, register, promote."""
    metrics = json.loads((reports_dir / "metrics.json").read_text(encoding="utf-8"))
    per_class = json.loads((reports_dir / "classification_report.json").read_text("utf-8"))
    bundle_meta = json.loads((export_dir / "bundle.json").read_text(encoding="utf-8"))
    challenger = load_runtime_bundle(export_dir)
    split = read_split(prepared_dir, challenger.labels, bundle_meta.get("task", ""))
    challenger_pred = split.rescore(challenger)
    latency = p95_latency_ms(challenger, split.texts, cfg.latency_samples) if cfg.latency else None

    with registry_lock(tracker.client, model_name):
        current = champion_version(tracker.client, model_name)
        verdict = _judge(
            cfg,
            tracker.tracking_uri,
            model_name,
            current,
            current is not None,
            split,
            challenger_pred,
            metrics,
            per_class,
            bundle_meta.get("parity"),
            latency,
            parity_limits,
        )
        comparison = verdict.comparison
        tags = tags | {
            "gate.verdict": "passed" if verdict.passed else "failed",
            "gate.failed_checks": ",".join(verdict.failed_checks),
            "gate.champion_compared": current or "none",
        }
        registered = register(
            model_name, export_dir, tags, verdict.passed, tracker, reports_dir / "registry.json"
        )
    verdict.challenger_version = registered.version
    if comparison is not None:
        tracker.log_metrics(
            {f"champion.{k}": v for k, v in comparison.champion_metrics.items()}
            | {
                "gate.champion_diff_ci_low": comparison.ci_low,
                "gate.champion_diff_ci_high": comparison.ci_high,
            }
        )
    if latency is not None:
        tracker.log_metrics({"gate.latency_p95_ms": latency})
    tracker.log_metrics({"gate.passed": float(verdict.passed)})
    tracker.set_tags(
        {"gate.verdict": tags["gate.verdict"], "gate.failed_checks": tags["gate.failed_checks"]}
    )
    return verdict, registered


def audit_tags(action: str, reason: str, forced: bool = False) -> dict[str, str]:
    """Who did what, when and why: recorded on the versions an action touches."""
    return {
        f"{action}.at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        f"{action}.by": getpass.getuser(),
        f"{action}.reason": reason,
        f"{action}.forced": str(forced).lower(),
    }


def promote(
    cfg: GateConfig,
    tracking_uri: str,
    model_name: str,
    version: str,
    reason: str,
    force: bool,
    prepared_dir: Path,
    reports_dir: Path,
    parity_limits: tuple[float, float],
) -> GateVerdict | None:
    """Move `champion` to `version` by hand. Unless `force`, the version is first re-scored
    on the current test split and must pass the gate; raises GateRejected otherwise."""
    from tuneops.errors import ConfigError, GateRejected
    from tuneops.pipeline.registry import move_champion

    client = store_client(tracking_uri)
    model_version = client.get_model_version(model_name, version)
    verdict = None
    with registry_lock(client, model_name):
        if not force:
            if not (prepared_dir / "test.parquet").exists():
                raise ConfigError(
                    f"{prepared_dir}: no current test split to gate on; run the "
                    f"flow (or `tuneops stage prepare`) first, or use --force"
                )
            verdict = _gate_version(
                cfg,
                client,
                tracking_uri,
                model_name,
                version,
                model_version.run_id,
                prepared_dir,
                reports_dir,
                parity_limits,
            )
            if not verdict.passed:
                raise GateRejected(verdict.summary())
        tags = audit_tags("promotion", reason, force)
        if verdict is not None:
            tags |= {"gate.verdict": "passed", "gate.failed_checks": ""}
        move_champion(client, model_name, version, tags)
    return verdict


def _gate_version(
    cfg: GateConfig,
    client: Any,
    tracking_uri: str,
    model_name: str,
    version: str,
    run_id: str | None,
    prepared_dir: Path,
    reports_dir: Path,
    parity_limits: tuple[float, float],
) -> GateVerdict:
    bundle = load_bundle(tracking_uri, model_name, version)
    split = read_split(prepared_dir, bundle.labels, bundle.meta.get("task", ""))
    predicted = split.rescore(bundle)
    metrics, per_class = split.report(predicted)
    current = json.loads((reports_dir / "metrics.json").read_text(encoding="utf-8"))
    metrics |= {name: current[name] for name in cfg.baselines if name in current}
    run_metrics = client.get_run(run_id).data.metrics if run_id else {}
    parity = None
    if "export.parity_max_abs_diff" in run_metrics:
        parity = {
            "max_abs_diff": run_metrics["export.parity_max_abs_diff"],
            "label_agreement": run_metrics["export.parity_label_agreement"],
        }
    champion = champion_version(client, model_name)
    verdict = _judge(
        cfg,
        tracking_uri,
        model_name,
        champion,
        champion is not None and champion != version,
        split,
        predicted,
        metrics,
        per_class,
        parity,
        None,
        parity_limits,
    )
    verdict.challenger_version = version
    return verdict


def _judge(
    cfg: GateConfig,
    tracking_uri: str,
    model_name: str,
    champion: str | None,
    has_other_champion: bool,
    split: TestSplit | TokenTestSplit,
    predicted: Any,
    metrics: dict[str, Any],
    per_class: dict[str, Any],
    parity: dict[str, float] | None,
    latency: float | None,
    parity_limits: tuple[float, float],
) -> GateVerdict:
    """The gate on `predicted`; with another champion, that champion is re-scored on the
    same `split` first (for the flow's challenger and for a hand promotion alike)."""
    comparison, not_comparable = None, None
    if has_other_champion and cfg.vs_champion and champion is not None:
        comparison, not_comparable = compare_with_champion(
            cfg, tracking_uri, model_name, champion, split, predicted
        )
    return gate(
        cfg,
        metrics,
        per_class,
        split.gate_labels(per_class),
        parity,
        comparison,
        latency,
        parity_limits,
        not_comparable,
        champion,
    )
