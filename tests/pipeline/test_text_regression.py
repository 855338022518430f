"""Text regression's hooks (pipeline/tasks/text_regression.py, regression_steps.py) and the
lower-is-better generalisation of the gate, the bootstrap and the int8 decision."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipeline.bootstrap import paired_bootstrap
from pipeline.gate import BaselineComparison, GateInputs, gate
from pipeline.quantize import decide
from pipeline.tasks import TASKS
from pipeline.tasks.base import Scores
from pipeline.tasks.text_regression import RegressionTestSplit, fold_scale, score
from tests.conftest import write_params
from tuneops.config import GateConfig, load_params
from tuneops.errors import ConfigError

TASK = TASKS["text-regression"]


# --- the bootstrap, the gate and int8 on MAE ------------------------------------------


def test_the_bootstrap_on_per_row_scores_is_the_mae_difference_champion_minus_challenger() -> None:
    rng = np.random.default_rng(0)
    gold = rng.normal(size=300)
    better, worse = gold + rng.normal(0, 0.5, 300), gold + rng.normal(0, 1.0, 300)
    split = RegressionTestSplit([f"t{i}" for i in range(300)], gold, ["y"])
    observed, low, high = paired_bootstrap(
        split.row_counts(better), split.row_counts(worse), 500, 0.95, 0
    )
    mae = lambda p: float(np.abs(p - gold).mean())  # noqa: E731
    assert observed == pytest.approx(mae(worse) - mae(better), abs=1e-12)
    assert low < observed < high and low > 0  # clearly better: the interval excludes 0
    # Each resample is the mean over the drawn rows: one drawn row k times counts k times.
    same, lo, hi = paired_bootstrap(
        split.row_counts(better), split.row_counts(better), 200, 0.95, 0
    )
    assert (same, lo, hi) == (0.0, 0.0, 0.0)


def regression_inputs(**overrides: Any) -> GateInputs:
    args: dict[str, Any] = {
        "metrics": {"test_mae": 0.9, "test_pearson": 0.8},
        "per_class": {},
        "labels": [],
        "primary_metric": "test_mae",
        "primary_metric_label": "MAE",
        "lower_is_better": TASK.lower_is_better,  # type: ignore[attr-defined]
    }
    return GateInputs(**(args | overrides))


def test_a_floor_on_a_lower_is_better_metric_is_a_ceiling() -> None:
    cfg = GateConfig(floors={"test_mae": 1.0, "test_pearson": 0.7}, beat_baselines=False)
    passed = gate(cfg, regression_inputs())
    assert passed.passed, passed.summary()
    failed = gate(cfg, regression_inputs(metrics={"test_mae": 1.1, "test_pearson": 0.8}))
    assert failed.failed_checks == ["floor:test_mae"]
    detail = failed.checks[0].detail
    assert detail == "1.1000 vs ceiling (lower is better) 1.0"
    low_r = gate(cfg, regression_inputs(metrics={"test_mae": 0.5, "test_pearson": 0.6}))
    assert low_r.failed_checks == ["floor:test_pearson"]


def test_beating_a_baseline_on_mae_needs_a_share_of_the_baselines_mae() -> None:
    """The margin is baseline_min_error_reduction x the baseline's MAE (its error), not
    x (1 - MAE), which would be negative above an MAE of 1 and let any model through."""
    cfg = GateConfig(floors={}, baselines=("mean",), baseline_min_error_reduction=0.1)
    # mean baseline MAE 1.6: the improvement's lower bound must exceed 0.16
    close = BaselineComparison("mean", 1.45, 1.6, 0.15, 0.12, 0.18, 0.95, 1000)
    clear = BaselineComparison("mean", 1.0, 1.6, 0.6, 0.5, 0.7, 0.95, 1000)
    rejected = gate(cfg, regression_inputs(baselines={"mean": close}))
    assert rejected.failed_checks == ["beats:mean"]
    assert rejected.checks[0].threshold == pytest.approx(0.16)
    assert "(mean - model: lower is better)" in rejected.checks[0].detail
    assert "mean's error 1.6000" in rejected.checks[0].detail
    assert gate(cfg, regression_inputs(baselines={"mean": clear})).passed


def test_int8_is_left_out_when_its_mae_rises_by_more_than_allowed() -> None:
    fp32 = Scores({}, 0.80, 0.9, lower_is_better=True, label="MAE")
    risen = decide(fp32, Scores({}, 0.83, 0.9), agreement=1.0, max_f1_drop=0.02)
    assert not risen.kept
    assert risen.f1_drop == pytest.approx(0.03)
    assert risen.reason.startswith("left out: MAE 0.8300 vs fp32 0.8000 is a drop of 0.0300")
    assert decide(fp32, Scores({}, 0.79, 0.9), agreement=1.0, max_f1_drop=0.02).kept


def test_score_is_mae_rmse_pearson_spearman() -> None:
    from scipy.stats import pearsonr, spearmanr

    gold, pred = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 1.5, 3.5, 5.0])
    found = score(gold, pred)
    assert found["test_mae"] == pytest.approx(0.625)
    assert found["test_rmse"] == pytest.approx(np.sqrt((0.25 + 0.25 + 0.25 + 1.0) / 4))
    assert found["test_pearson"] == pytest.approx(pearsonr(gold, pred)[0])
    assert found["test_spearman"] == pytest.approx(spearmanr(gold, pred)[0])
    assert score(gold, np.full(4, 2.5))["test_pearson"] == 0.0  # constant: undefined, 0


# --- config ----------------------------------------------------------------------------


def test_keys_that_assume_classes_are_rejected_naming_the_key(tmp_path: Path) -> None:
    from tests.conftest import REPO

    params = load_params(REPO / "params.regression.yaml")
    TASK.check(params)  # the preset fits the task
    for key, value in (("gate.per_class", True), ("train.class_weights", "balanced")):
        section, leaf = key.split(".")
        changed = params.model_copy(
            update={
                section: getattr(params, section).model_copy(update={leaf: value}),
            }
        )
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            TASK.check(changed)
    plain = load_params(write_params(tmp_path, {"task": "text-regression"}))
    with pytest.raises(ConfigError, match=r"train\.metric_for_best_model: 'macro_f1'"):
        TASK.check(plain)


# --- validate and prepare ----------------------------------------------------------------


def write_ratings(folder: Path, rows: list[tuple[str, Any]]) -> Path:
    folder.mkdir(parents=True)
    pd.DataFrame(rows, columns=["review", "stars"]).to_csv(folder / "batch-0000.csv", index=False)
    return folder


def regression_params(tmp_path: Path, **overrides: Any) -> Any:
    return load_params(
        write_params(
            tmp_path,
            {
                "task": "text-regression",
                "data.text_column": "review",
                "data.label_column": "stars",
                "train.metric_for_best_model": "mae",
                "train.class_weights": "none",
                "gate.floors": {},
                "gate.baselines": ["mean"],
                "gate.per_class": False,
            }
            | overrides,
        )
    )


def test_non_numeric_targets_fail_validation_naming_file_row_and_the_users_column(
    tmp_path: Path,
) -> None:
    from pipeline.validate import validate

    rows: list[tuple[str, Any]] = [(f"review number {i}", i % 5 - 2.5) for i in range(40)]
    bad_rows = [3, 7, 11, 15, 19, 23, 27]  # 7 bad cells: five shown, all counted
    for i in bad_rows:
        rows[i] = (rows[i][0], "n/a" if i != 7 else "four")
    folder = write_ratings(tmp_path / "raw" / "ratings", rows)
    params = regression_params(tmp_path)
    result = validate(TASK, params.data, params.validate_, folder, tmp_path / "reports")
    failed = {c.name: c for c in result.checks if not c.success}
    assert set(failed) == {"expect_target_values_to_be_numbers"}
    line = failed["expect_target_values_to_be_numbers"].line()
    assert "column 'stars'" in line
    assert "7 row(s) fail" in line
    shown = [f"batch-0000.csv:{i + 1}" for i in bad_rows[:5]]
    assert all(s in line for s in shown) and "batch-0000.csv:24" not in line
    assert "'four'" in line
    assert result.labels == ("stars",) and result.label_source == "target"


def test_prepare_splits_by_text_hash_drops_conflicting_ratings_and_records_target_stats(
    tmp_path: Path,
) -> None:
    from pipeline.prepare import prepare, split_of

    rows: list[tuple[str, Any]] = [(f"snippet {i} about a film", (i % 9) - 4) for i in range(300)]
    rows += [("rated twice", 1.0), ("rated twice", -2.0), ("snippet 5 about a film", "1.00")]
    folder = write_ratings(tmp_path / "raw" / "ratings", rows)
    params = regression_params(tmp_path)
    out = tmp_path / "prepared"
    result = prepare(TASK, params.data, params.prepare, ("stars",), folder, out)
    assert result.dropped_conflicts == 1  # "rated twice": both copies go
    assert result.dropped_duplicates == 1  # snippet 5 again with 1.00 == 1
    manifest = json.loads((out / "manifest.json").read_text())
    frames = {s: pd.read_parquet(out / f"{s}.parquet") for s in ("train", "validation", "test")}
    for name, frame in frames.items():
        assert all(split_of(t, 0.1, 0.1) == name for t in frame["text"])
        stats = manifest["target"][name]
        assert stats["mean"] == pytest.approx(float(frame["target"].mean()))
        assert stats["std"] == pytest.approx(float(frame["target"].std(ddof=0)))
        assert (stats["min"], stats["max"]) == (frame["target"].min(), frame["target"].max())
    assert "rated twice" not in set(pd.concat(frames.values())["text"])
    assert manifest["labels"] == ["stars"] and manifest["label_counts"]["test"] == {
        "stars": len(frames["test"])
    }
    assert manifest["label_issues"]["audited"] is False  # not applicable: skipped, no crash
    again = prepare(TASK, params.data, params.prepare, ("stars",), folder, tmp_path / "again")
    assert again.fingerprint == result.fingerprint


# --- the model hooks on the tiny in-memory model ------------------------------------------


def test_the_candidate_loads_with_its_scale_folded_into_the_head(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import torch

    model = TASK.load_model(tiny_model_dir, ("stars",))
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    model.save_pretrained(tmp_path / "candidate")
    summary = {"target_scale": {"mean": 0.5, "std": 2.0}}
    (tmp_path / "candidate" / "training_summary.json").write_text(json.dumps(summary))
    loaded = TASK.load_model(tmp_path / "candidate").eval()
    model.eval()
    batch = {"input_ids": torch.tensor([[101, 2307, 2143, 102]])}
    with torch.no_grad():
        z, value = model(**batch).logits, loaded(**batch).logits
    assert value.item() == pytest.approx(z.item() * 2.0 + 0.5, abs=1e-5)
    assert fold_scale(model, 0.0, 1.0) is model


def test_after_tokenise_standardises_on_train_and_metrics_are_in_target_units(
    tiny_model_dir: Path,
) -> None:
    from datasets import Dataset, DatasetDict

    from pipeline.training.modeling import load_tokenizer
    from tuneops.config import TrainConfig

    cfg = TrainConfig(max_length=16, class_weights="none", metric_for_best_model="mae")
    tokenizer = load_tokenizer(tiny_model_dir)
    tokenise = TASK.tokenise(tokenizer, cfg)
    parts = {
        "train": {"text": ["good", "bad", "fine", "great"], "target": [1.0, -3.0, 0.0, 4.0]},
        "validation": {"text": ["ok", "awful"], "target": [2.0, -2.0]},
        "test": {"text": ["meh"], "target": [0.0]},
    }
    splits = DatasetDict(
        {n: Dataset.from_dict(p).map(tokenise, batched=True) for n, p in parts.items()}
    )
    ready, summary = TASK.after_tokenise(splits, cfg)
    mean, std = 0.5, float(np.std([1.0, -3.0, 0.0, 4.0]))
    assert summary["target_scale"] == {"mean": mean, "std": pytest.approx(std)}
    assert ready["validation"]["labels"] == pytest.approx([(2.0 - mean) / std, (-2.0 - mean) / std])
    compute = TASK.compute_metrics(("stars",), ready["validation"])
    predicted_z = np.array([[(1.0 - mean) / std], [(-2.0 - mean) / std]])
    found = compute((predicted_z, np.asarray(ready["validation"]["labels"])))
    assert found["mae"] == pytest.approx(0.5, abs=1e-5)  # |1 - 2| and |-2 - -2|, halved
    assert found["rmse"] == pytest.approx(np.sqrt(0.5), abs=1e-5)


# --- training: strategies and the loss ----------------------------------------------------


@pytest.fixture(scope="module")
def prepared_ratings(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    from pipeline.prepare import prepare

    root = tmp_path_factory.mktemp("ratings")
    words = ["great", "awful", "fine", "dull", "moving", "boring"]
    marks = {"great": 3.0, "awful": -3.0, "fine": 0.5, "dull": -1.5, "moving": 2.5, "boring": -2.0}
    rows = [
        (f"a {words[i % 6]} film, take {i}", marks[words[i % 6]] + (i % 3) / 10) for i in range(90)
    ]
    folder = write_ratings(root / "raw" / "ratings", rows)
    params = regression_params(root)
    prepare(TASK, params.data, params.prepare, ("stars",), folder, root / "prepared")
    return params, root


@pytest.mark.parametrize(
    ("strategy", "loss"),
    [("full", "huber"), ("freeze", "mse"), ("lora", "mse"), ("bitfit", "mse")],
)
def test_each_strategy_trains_a_candidate_whose_validation_loss_is_the_chosen_loss(
    prepared_ratings: tuple[Any, Path],
    tiny_model_dir: Path,
    tmp_path: Path,
    strategy: str,
    loss: str,
) -> None:
    """One epoch per strategy: the recorded validation loss is MSE, or Huber, of the raw
    candidate's outputs against the standardised validation targets, and the candidate
    loaded through the task predicts those outputs x std + mean."""
    import torch

    from pipeline.train import train
    from pipeline.training.modeling import load_classifier, load_tokenizer, predict_logits

    params, root = prepared_ratings
    cfg = params.train.model_copy(
        update={
            "strategy": strategy,
            "regression_loss": loss,
            "epochs": 1.0,
            "max_length": 16,
            "batch_size": 16,
            "learning_rate": 5e-3,
            "max_steps": -1,
        }
    )
    model_cfg = params.model.model_copy(update={"name_or_path": str(tiny_model_dir)})
    candidate = tmp_path / "candidate"
    result = train(
        TASK, model_cfg, cfg, root / "prepared", candidate, tmp_path / "ck", tmp_path / "cache"
    )
    scale = json.loads((candidate / "training_summary.json").read_text())["target_scale"]
    train_targets = pd.read_parquet(root / "prepared" / "train.parquet")["target"]
    assert scale["mean"] == pytest.approx(float(train_targets.mean()))
    assert scale["std"] == pytest.approx(float(train_targets.std(ddof=0)))
    validation = pd.read_parquet(root / "prepared" / "validation.parquet")
    texts, tokenizer = validation["text"].tolist(), load_tokenizer(candidate)
    raw = predict_logits(load_classifier(candidate), tokenizer, texts, 16, 64)[:, 0]
    z = (validation["target"].to_numpy() - scale["mean"]) / scale["std"]
    function = torch.nn.functional.huber_loss if loss == "huber" else torch.nn.functional.mse_loss
    expected = float(function(torch.tensor(raw), torch.tensor(z, dtype=torch.float32)))
    assert result.best_validation["loss"] == pytest.approx(expected, rel=1e-4)
    values = predict_logits(TASK.load_model(candidate), tokenizer, texts, 16, 64)[:, 0]
    assert values == pytest.approx(raw * scale["std"] + scale["mean"], abs=1e-4)
    assert result.best_validation["mae"] == pytest.approx(
        float(np.abs(values - validation["target"].to_numpy()).mean()), abs=1e-4
    )
