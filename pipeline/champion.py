"""The champion re-scored for the gate: opened without running code from the artifact store
(pipeline.registered), and scored only on rows it was never trained or selected on.

A model version records the split it was trained under (tags split.*). When that differs
from the current one (prepare.test_fraction changed, say), some current test rows were the
model's own train or validation rows; those are left out of its score (`own_test_rows`),
and its challenger is compared with it on the rows that remain. When which rows those
were cannot be known (another split function, an official test split then and a hashed
one now, a version from before the tags), the model is not scored at all.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pipeline import behaviour
from pipeline.bootstrap import paired_bootstrap
from pipeline.gate import ChampionComparison
from pipeline.prepare import current_split, held_out_under, recorded_split
from pipeline.registered import open_version, recorded_checksums
from pipeline.tasks.base import TestSplit, metric_counts
from tuneops.errors import ConfigError
from tuneops.tracking import store_client

if TYPE_CHECKING:
    from pipeline.register import RegisterInputs


def compare_with_champion(
    inputs: RegisterInputs,
    version: str,
    split: TestSplit,
    challenger_pred: Any,
    role: str = "champion",
) -> tuple[ChampionComparison | None, str | None]:
    """The champion (or the best champion so far: `role` names it in messages) re-scored
    on the rows of `split` that were test rows under its own split too, and the paired
    bootstrap on those rows; or (None, why not comparable).

    A champion file that differs from its recorded checksum raises ModelFileError."""
    cfg = inputs.cfg
    whose = f"{role} v{version}"
    tags = version_tags(inputs, version)
    if not recorded_checksums(tags):
        return None, (
            f"{whose} has no recorded bundle checksums (tags bundle.sha256.*; registered "
            "before tuneops recorded them), so its files cannot be verified and it is not "
            "compared; promote by hand with --force"
        )
    try:
        keep, note = own_test_rows(tags, inputs, split, whose)
    except ConfigError as exc:
        return None, str(exc)
    champion = open_version(inputs.tracking_uri, inputs.model_name, version, tags)
    if sorted(champion.labels) != sorted(split.labels):
        return None, (
            f"{whose} predicts labels {champion.labels}, the challenger "
            f"{split.labels}: not comparable (promote by hand with --force)"
        )
    # On the challenger's cases (sampled from the whole of `split`), before any subset.
    rates = (
        behaviour.rates(behaviour.run(inputs.behaviour, champion, split))
        if inputs.behaviour is not None
        else {}
    )
    if not all(keep):
        split, challenger_pred = split.subset(keep), split.take(challenger_pred, keep)
    champion_pred = split.rescore(champion)
    metrics, _ = split.report(champion_pred)
    ours, theirs = (metric_counts(inputs.task, split, p) for p in (challenger_pred, champion_pred))
    compared = []
    for metric in ours:  # the primary metric first, then any other the task judges
        observed, low, high = paired_bootstrap(
            ours[metric],
            theirs[metric],
            cfg.bootstrap_resamples,
            cfg.bootstrap_confidence,
            cfg.bootstrap_seed,
            split.strata,
        )
        compared.append(
            ChampionComparison(
                version,
                metrics,
                observed,
                low,
                high,
                cfg.bootstrap_confidence,
                cfg.bootstrap_resamples,
                metric,
                rows=len(split.texts),
                note=note,
                behaviour=rates,
            )
        )
    return replace(compared[0], others=compared[1:]), None


def own_test_rows(
    tags: dict[str, str], inputs: RegisterInputs, split: TestSplit, whose: str
) -> tuple[list[bool], str]:
    """Which rows of `split` a version may be scored on (those that were test rows under
    the split its tags record), and a note saying what was left out ("" for none).
    ConfigError, naming the keys, when that cannot be known or no row is left."""
    recorded = recorded_split(tags)
    if recorded is None:
        raise ConfigError(
            f"{whose} records no split parameters (tags split.*; registered before tuneops "
            "recorded them): which current test rows it was trained on cannot be known; "
            "promote by hand with --force"
        )
    current = current_split(inputs.prepared_dir)
    keep = held_out_under(recorded, current, split.texts, whose)
    if all(keep):
        return keep, ""
    change = (
        f"prepare.test_fraction {recorded['test_fraction']} then, {current['test_fraction']} now"
    )
    if not any(keep):
        raise ConfigError(
            f"none of the {len(keep)} current test rows was a test row under {whose}'s split "
            f"({change}): it cannot be scored on rows it was not trained on; promote by hand "
            "with --force"
        )
    return keep, (
        f"{whose} scored on the {sum(keep)} of {len(keep)} test rows that were test rows "
        f"under its own split too ({change}; the other {len(keep) - sum(keep)} were its "
        "train or validation rows)"
    )


def version_tags(inputs: RegisterInputs, version: str) -> dict[str, str]:
    client = store_client(inputs.tracking_uri)
    return dict(client.get_model_version(inputs.model_name, version).tags)
