"""Non-inferiority against the champion under real noise: a challenger that is as good as
the champion but wrong on other rows, through the paired bootstrap the register step runs
and the gate's no_regression_vs_champion check (the flow test's "equally good" challenger
is a bit-identical retrain, whose paired differences are all zero).

The predictions are built, not trained: that is what makes "equally good, genuinely
different" exact (the same number of errors per class, on disjoint rows)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from pipeline.bootstrap import paired_bootstrap
from pipeline.gate import ChampionComparison, GateInputs, gate
from pipeline.tasks.text_classification import row_counts
from tuneops.config import GateConfig

CFG = GateConfig(floors={}, beat_baselines=False, per_class=False)


def wrong_on(gold: np.ndarray, rows: slice) -> np.ndarray:
    predicted = gold.copy()
    predicted[rows] = 1 - predicted[rows]
    return predicted


def judged(gold: np.ndarray, challenger: np.ndarray, champion: np.ndarray) -> tuple:
    observed, low, high = paired_bootstrap(
        row_counts(gold, challenger, 2),
        row_counts(gold, champion, 2),
        CFG.bootstrap_resamples,
        CFG.bootstrap_confidence,
        CFG.bootstrap_seed,
    )
    champion_f1 = f1_score(gold, champion, average="macro")
    comparison = ChampionComparison(
        "1", {"test_macro_f1": champion_f1}, observed, low, high, CFG.bootstrap_confidence, 1
    )
    inputs = GateInputs(
        metrics={"test_macro_f1": f1_score(gold, challenger, average="macro")},
        per_class={},
        labels=["negative", "positive"],
        primary_metric="test_macro_f1",
        primary_metric_label="macro-F1",
        comparison=comparison,
    )
    return observed, low, high, gate(CFG, inputs)


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
