"""Non-inferiority against the champion under real noise: a challenger that is as good as
the champion but wrong on other rows, through the paired bootstrap the register step runs
and the gate's no_regression_vs_champion check (the flow test's "equally good" challenger
is a bit-identical retrain, whose paired differences are all zero).

The predictions are built, not trained: that is what makes "equally good, genuinely
different" exact (the same number of errors per class, on disjoint rows)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.metrics import f1_score

from pipeline.bootstrap import paired_bootstrap
from pipeline.gate import ChampionComparison, GateInputs, GateVerdict, best_after, gate
from pipeline.tasks.text_classification import row_counts
from tuneops.config import GateConfig

CFG = GateConfig(floors={}, beat_baselines=False, per_class=False)


def wrong_on(gold: np.ndarray, rows: slice) -> np.ndarray:
    predicted = gold.copy()
    predicted[rows] = 1 - predicted[rows]
    return predicted


def judged(gold: np.ndarray, challenger: np.ndarray, champion: np.ndarray) -> tuple:
    comparison = compared(gold, challenger, champion, "1")
    inputs = GateInputs(
        metrics={"test_macro_f1": f1_score(gold, challenger, average="macro")},
        per_class={},
        labels=["negative", "positive"],
        primary_metric="test_macro_f1",
        primary_metric_label="macro-F1",
        comparison=comparison,
    )
    verdict = gate(CFG, inputs)
    return comparison.observed_diff, comparison.ci_low, comparison.ci_high, verdict


@pytest.mark.audit("T3")
def test_an_equally_good_challenger_wrong_on_other_rows_passes_non_inferiority() -> None:
    """10,000 balanced rows; the champion is wrong on rows 0-799, the challenger on rows
    800-1619: 1,620 discordant rows, a real interval around a small observed loss."""
    gold = np.arange(10_000) % 2
    champion, challenger = wrong_on(gold, slice(0, 800)), wrong_on(gold, slice(800, 1620))
    assert not (champion == challenger).all()
    observed, low, high, verdict = judged(gold, challenger, champion)
    expected = f1_score(gold, challenger, average="macro") - f1_score(
        gold, champion, average="macro"
    )
    assert observed == pytest.approx(expected, abs=1e-12)
    assert observed < 0 and low < observed < high and high > 0  # noise, not a bit-identical 0
    assert low > -CFG.champion_tolerance
    assert verdict.passed, verdict.summary()


def compared(gold: np.ndarray, challenger: np.ndarray, champion: np.ndarray, version: str) -> Any:
    """`champion` (registered as `version`) against `challenger` on the same rows, as
    pipeline.champion computes it: the paired bootstrap of the macro-F1 difference."""
    observed, low, high = paired_bootstrap(
        row_counts(gold, challenger, 2),
        row_counts(gold, champion, 2),
        CFG.bootstrap_resamples,
        CFG.bootstrap_confidence,
        CFG.bootstrap_seed,
        strata=gold,  # text classification draws within gold classes
    )
    champion_f1 = f1_score(gold, champion, average="macro")
    return ChampionComparison(
        version,
        {"test_macro_f1": champion_f1},
        observed,
        low,
        high,
        CFG.bootstrap_confidence,
        CFG.bootstrap_resamples,
        rows=len(gold),
    )


@pytest.mark.audit("M6")
def test_a_challenger_within_tolerance_of_the_champion_but_not_of_the_best_is_refused() -> None:
    """10,000 balanced rows. v1 (champion, wrong on rows 0-499) is the best so far; v2 is
    also wrong on rows 500-619 (1.2 points worse: within the 0.02 tolerance) and is
    promoted; v3 is also wrong on rows 620-739: 1.2 points worse than v2, but 2.4 worse than
    v1. Compared only with the current champion (v2), as before, v3 passed: each step may
    lose up to the tolerance. The anchor `best` (v1) bounds the loss to one tolerance."""
    gold = np.arange(10_000) % 2
    v1, v2, v3 = (wrong_on(gold, slice(0, n)) for n in (500, 620, 740))

    def inputs(challenger: np.ndarray, **compare: Any) -> GateInputs:
        return GateInputs(
            metrics={"test_macro_f1": f1_score(gold, challenger, average="macro")},
            per_class={},
            labels=["negative", "positive"],
            primary_metric="test_macro_f1",
            primary_metric_label="macro-F1",
            **compare,
        )

    # v2 against champion v1, which is also `best` (so it is compared once, as champion).
    second = gate(CFG, inputs(v2, comparison=compared(gold, v2, v1, "1")))
    second.challenger_version = "2"
    assert second.passed, second.summary()
    assert -CFG.champion_tolerance < second.comparison.ci_low < second.comparison.observed_diff < 0
    # Worse than the anchor: v2 is champion now, but `best` stays on v1.
    assert best_after(second, best="1") == "1"

    v3_vs_v2, v3_vs_v1 = compared(gold, v3, v2, "2"), compared(gold, v3, v1, "1")
    assert v3_vs_v2.ci_low >= -CFG.champion_tolerance > v3_vs_v1.ci_low
    # Before: the current champion only. v3 passed, 2.4 points below v1.
    assert gate(CFG, inputs(v3, comparison=v3_vs_v2)).passed
    # Now: also the best champion so far, re-scored on the same rows.
    third = gate(CFG, inputs(v3, comparison=v3_vs_v2, best=v3_vs_v1))
    third.challenger_version = "3"
    assert not third.passed
    assert third.failed_checks == ["vs_best_champion"]
    assert (third.champion_version, third.best_version) == ("2", "1")
    assert third.summary() == (
        "gate rejected challenger v3 vs champion v2 and best champion v1: vs_best_champion: "
        f"macro-F1 diff vs best champion v1 {v3_vs_v1.observed_diff:+.4f}, 95% CI "
        f"[{v3_vs_v1.ci_low:+.4f}, {v3_vs_v1.ci_high:+.4f}], lower bound must be >= -0.02"
    )
    # Switched off with the champion comparison.
    off = GateConfig(floors={}, beat_baselines=False, per_class=False, vs_champion=False)
    assert gate(off, inputs(v3, comparison=v3_vs_v2, best=v3_vs_v1)).checks == []


@pytest.mark.audit("M6")
def test_best_moves_only_to_a_champion_whose_point_estimate_beats_it() -> None:
    gold = np.arange(10_000) % 2
    v1, v2, v4 = (wrong_on(gold, slice(0, n)) for n in (500, 620, 400))

    def passed(challenger: str, **compare: Any) -> GateVerdict:
        return GateVerdict(True, [], challenger_version=challenger, **compare)

    # The first champion is the first anchor.
    assert best_after(passed("1"), best=None) == "1"
    # A registry from before `best`: the current champion is the anchor.
    behind = compared(gold, v2, v1, "1")
    assert best_after(passed("2", champion_version="1", comparison=behind), None) == "1"
    ahead = compared(gold, v1, v2, "2")
    assert ahead.observed_diff > 0
    assert best_after(passed("3", champion_version="2", comparison=ahead), None) == "3"
    # best separate from the champion: its own comparison decides, ahead of it or not.
    anchored = {"champion_version": "2", "comparison": ahead, "best_version": "1"}
    better, tied = compared(gold, v4, v1, "1"), compared(gold, v1, v1, "1")
    assert better.observed_diff > 0 and tied.observed_diff == 0
    assert best_after(passed("4", **anchored, best_comparison=better), "1") == "4"
    assert best_after(passed("5", **anchored, best_comparison=tied), "1") == "1"
    # The challenger is `best` already (promoted back after a rollback): it stays.
    assert best_after(passed("1", champion_version="2", comparison=behind), "1") == "1"
