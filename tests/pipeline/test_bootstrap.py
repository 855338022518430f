"""The one paired bootstrap, over each task's per-row counts: it equals sklearn's macro-F1
and seqeval's entity micro-F1 differences, on the observed rows and on every resample."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from pipeline.bootstrap import paired_bootstrap as bootstrap
from pipeline.bootstrap import resample_weights
from pipeline.tasks.text_classification import row_counts
from pipeline.tasks.token_classification import row_counts as entity_counts


def paired_bootstrap(
    y_true: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
    n_labels: int,
    resamples: int,
    confidence: float,
    seed: int,
) -> tuple[float, float, float]:
    """Macro-F1 difference of two text classifiers, as the register stage computes it."""
    return bootstrap(
        row_counts(y_true, challenger, n_labels),
        row_counts(y_true, champion, n_labels),
        resamples,
        confidence,
        seed,
    )


def predictions(seed: int, n: int = 400, error_rate: float = 0.2) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, size=n)
    good = np.where(rng.random(n) < error_rate, 1 - y_true, y_true)
    bad = np.where(rng.random(n) < 0.45, 1 - y_true, y_true)
    return y_true, good, bad


def test_paired_bootstrap_is_deterministic_for_a_seed() -> None:
    y_true, good, bad = predictions(1)
    first = paired_bootstrap(y_true, good, bad, 2, 1000, 0.95, seed=7)
    assert paired_bootstrap(y_true, good, bad, 2, 1000, 0.95, seed=7) == first
    other = paired_bootstrap(y_true, good, bad, 2, 1000, 0.95, seed=8)
    assert other[0] == first[0] and other[1:] != first[1:]


def test_paired_bootstrap_interval_brackets_the_observed_difference() -> None:
    y_true, good, bad = predictions(2)
    observed, low, high = paired_bootstrap(y_true, good, bad, 2, 500, 0.95, seed=0)
    assert low < observed < high
    assert low > 0  # 20% vs 45% errors on 400 rows: the better model is clearly better
    worse = paired_bootstrap(y_true, bad, good, 2, 500, 0.95, seed=0)
    assert worse[0] == pytest.approx(-observed) and worse[2] < 0
    assert paired_bootstrap(y_true, good, good, 2, 200, 0.95, seed=0) == (0.0, 0.0, 0.0)


def test_paired_bootstrap_matches_sklearn_on_every_resample() -> None:
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 3, size=120)
    challenger = np.where(rng.random(120) < 0.3, rng.integers(0, 3, size=120), y_true)
    champion = np.where(y_true == 2, 0, y_true)  # never predicts class 2
    draws = np.random.default_rng(11)
    expected = []
    for _ in range(50):
        rows = draws.integers(0, 120, size=120)
        expected.append(
            f1_score(y_true[rows], challenger[rows], labels=[0, 1, 2], average="macro")
            - f1_score(
                y_true[rows], champion[rows], labels=[0, 1, 2], average="macro", zero_division=0
            )
        )
    observed, low, high = paired_bootstrap(y_true, challenger, champion, 3, 50, 0.9, seed=11)
    assert observed == pytest.approx(
        f1_score(y_true, challenger, average="macro")
        - f1_score(y_true, champion, average="macro", zero_division=0)
    )
    assert (low, high) == pytest.approx(tuple(np.percentile(expected, [5, 95])), abs=1e-12)


def test_entity_bootstrap_observed_diff_is_seqevals_micro_f1_difference() -> None:
    from seqeval.metrics import f1_score as entity_f1

    gold = [["B-LOC", "I-LOC", "O"], ["B-PER", "O"], ["O", "B-LOC"], ["B-PER", "I-PER"]] * 5
    better = [["B-LOC", "I-LOC", "O"], ["B-PER", "O"], ["O", "B-LOC"], ["B-PER", "O"]] * 5
    worse = [["B-LOC", "O", "O"], ["O", "O"], ["O", "B-LOC"], ["B-PER", "O"]] * 5
    a, b = entity_counts(gold, better), entity_counts(gold, worse)
    observed, low, high = bootstrap(a, b, 500, 0.95, 0)
    assert observed == pytest.approx(entity_f1(gold, better) - entity_f1(gold, worse))
    assert 0 < low <= observed <= high
    same = bootstrap(a, a, 200, 0.95, 0)
    assert same == (0.0, 0.0, 0.0)


def test_stratified_resamples_keep_every_class_count_and_match_sklearn() -> None:
    rng = np.random.default_rng(5)
    y_true = np.repeat([0, 1, 2, 3], [90, 25, 3, 1])  # two tiny classes, as ATIS has
    challenger = np.where(rng.random(len(y_true)) < 0.1, (y_true + 1) % 4, y_true)
    champion = np.where(rng.random(len(y_true)) < 0.3, (y_true + 1) % 4, y_true)
    weights = resample_weights(len(y_true), 40, np.random.default_rng(9), strata=y_true)
    for drawn in weights:
        assert [int(drawn[y_true == k].sum()) for k in range(4)] == [90, 25, 3, 1]
    expected = []
    for drawn in weights:
        rows = np.repeat(np.arange(len(y_true)), drawn)
        expected.append(
            f1_score(y_true[rows], challenger[rows], labels=[0, 1, 2, 3], average="macro")
            - f1_score(y_true[rows], champion[rows], labels=[0, 1, 2, 3], average="macro")
        )
    _, low, high = bootstrap(
        row_counts(y_true, challenger, 4),
        row_counts(y_true, champion, 4),
        40,
        0.9,
        seed=9,
        strata=y_true,
    )
    assert (low, high) == pytest.approx(tuple(np.percentile(expected, [5, 95])), abs=1e-12)


def test_stratifying_by_class_narrows_the_interval_a_one_row_class_widens() -> None:
    # The challenger gets the one-row class right and the champion does not. A plain
    # bootstrap leaves that row out of about 37% of its resamples, each time moving
    # macro-F1's difference by about 1/4; drawn within classes, every resample keeps it.
    rng = np.random.default_rng(2)
    y_true = np.repeat([0, 1, 2, 3], [200, 150, 50, 1])
    champion = np.where(rng.random(len(y_true)) < 0.15, (y_true + 1) % 4, y_true)
    champion[y_true == 3] = 0
    challenger = np.where(rng.random(len(y_true)) < 0.12, (y_true + 1) % 4, y_true)
    challenger[y_true == 3] = 3
    ours, theirs = row_counts(y_true, challenger, 4), row_counts(y_true, champion, 4)
    plain = bootstrap(ours, theirs, 1000, 0.95, seed=0)
    stratified = bootstrap(ours, theirs, 1000, 0.95, seed=0, strata=y_true)
    assert plain[0] == stratified[0]  # the same observed difference
    assert stratified[2] - stratified[1] < 0.8 * (plain[2] - plain[1])
    assert plain[1] < 0 < stratified[1]  # only the stratified interval shows the gain
