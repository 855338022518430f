"""train.epochs: auto (early stopping within max_epochs, max_steps and max_minutes caps), what
training records about why it stopped, and its progress lines (issue 17 items 3 and 7)."""

from __future__ import annotations

import io
import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipeline.train import train
from pipeline.training.progress import stderr_logger
from tests.conftest import TEXT, Trained, store_client, tiny_overrides, write_params
from tuneops import stages


def steps_per_epoch(trained: Trained) -> int:
    rows = len(pd.read_parquet(trained.paths.data_prepared / "train.parquet"))
    return math.ceil(rows / trained.params.train.batch_size)


def train_with(trained: Trained, tmp_path: Path, **changes: Any) -> dict[str, Any]:
    p = trained.params
    cfg = p.train.model_copy(update=changes)
    candidate = tmp_path / "candidate"
    train(TEXT, p.model, cfg, trained.paths.data_prepared, candidate, tmp_path / "ck", tmp_path)
    summary: dict[str, Any] = json.loads((candidate / "training_summary.json").read_text())
    return summary


@pytest.fixture(scope="module")
def stalled(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Any]:
    """epochs: auto through the train stage (real MLflow store) with a learning rate too
    small to change a prediction: validation macro-F1 never improves on epoch 1, so a
    patience of 1 stops after epoch 2 of at most 6. Its stderr is captured."""
    root = tmp_path_factory.mktemp("auto")
    overrides = tiny_overrides(tiny_model_dir) | {
        "train.epochs": "auto",
        "train.max_epochs": 6,
        "train.early_stopping_patience": 1,
        "train.learning_rate": 1.0e-12,
    }
    write_params(root, overrides)
    ctx = stages.load_context(root)
    stages.step_fetch(ctx)
    stages.step_validate(ctx)
    stages.step_prepare(ctx)
    # Outside a Prefect run the lines go to the tuneops.progress logger's stderr handler;
    # a second handler on that logger copies them to a buffer for this run (other tests may
    # have left handlers of their own there, so none is assumed to be the only one).
    err = io.StringIO()
    copy = logging.StreamHandler(err)
    logger = stderr_logger()
    logger.addHandler(copy)
    try:
        result, run_id = stages.step_train(ctx)
    finally:
        logger.removeHandler(copy)
    summary = json.loads((ctx.paths.candidate / "training_summary.json").read_text())
    return {
        "ctx": ctx,
        "result": result,
        "run_id": run_id,
        "summary": summary,
        "log": err.getvalue(),
    }


def test_auto_stops_early_and_records_why_in_the_summary(stalled: dict[str, Any]) -> None:
    summary, ctx = stalled["summary"], stalled["ctx"]
    rows = len(pd.read_parquet(ctx.paths.data_prepared / "train.parquet"))
    per_epoch = math.ceil(rows / ctx.params.train.batch_size)
    assert summary["stopped_by"] == "early_stopping"
    assert summary["epochs_planned"] == 6.0
    assert summary["epochs_run"] == 2.0
    assert summary["global_steps"] == 2 * per_epoch
    assert summary["best_epoch"] == 1.0  # epoch 2 did not beat it: epoch 1's checkpoint kept


def test_auto_records_epochs_run_best_epoch_and_the_stop_reason_in_mlflow(
    stalled: dict[str, Any],
) -> None:
    run = store_client(stalled["ctx"].tracking_uri).get_run(stalled["run_id"])
    assert run.data.tags["train.stopped_by"] == "early_stopping"
    assert run.data.params["train.epochs"] == "auto"
    assert run.data.params["train.max_epochs"] == "6"
    metrics = run.data.metrics
    assert (metrics["epochs_run"], metrics["best_epoch"], metrics["epochs_planned"]) == (
        2.0,
        1.0,
        6.0,
    )


def test_progress_lines_give_step_loss_tokens_per_second_elapsed_eta_and_validation(
    stalled: dict[str, Any],
) -> None:
    log, ctx = stalled["log"], stalled["ctx"]
    rows = len(pd.read_parquet(ctx.paths.data_prepared / "train.parquet"))
    per_epoch = math.ceil(rows / ctx.params.train.batch_size)
    step_lines = re.findall(
        rf"train step (\d+)/{6 * per_epoch} \(epoch [\d.]+/6\): loss [\d.]+, ([\d,]+) "
        r"tokens/s, elapsed \w+, ETA \w+",
        log,
    )
    # Every logging_steps (5) steps of the two epochs that ran, and only then.
    assert [int(step) for step, _ in step_lines] == list(range(5, 2 * per_epoch + 1, 5))
    assert all(int(rate.replace(",", "")) > 0 for _, rate in step_lines)
    epochs = re.findall(r"epoch ([\d.]+)/6 validation: ([^(]*) \(step \d+, elapsed", log)
    assert [epoch for epoch, _ in epochs] == ["1.00", "2.00"]
    for _, shown in epochs:
        names = [re.fullmatch(r"(\w+) [\d.]+", part) for part in shown.split(", ")]
        assert [m.group(1) for m in names if m] == ["accuracy", "loss", "macro_f1"]  # sorted
    assert "training stopped by early_stopping after 2.00 epochs" in log
    assert "kept the checkpoint of epoch 1.00" in log
    # Plain lines: no progress bars (\r redraws, tqdm's "%|") and no Trainer log dicts.
    assert "\r" not in log and "%|" not in log and "{'loss'" not in log


def test_max_steps_caps_auto(trained: Trained, tmp_path: Path) -> None:
    summary = train_with(trained, tmp_path, epochs="auto", max_epochs=5, max_steps=3)
    assert (summary["global_steps"], summary["stopped_by"]) == (3, "max_steps")


def test_max_steps_is_a_budget_the_epochs_stay_within(trained: Trained, tmp_path: Path) -> None:
    # A budget above what the epochs need changes nothing: one epoch stays one epoch.
    # (transformers' own max_steps replaces the epochs instead: it would train 100 steps,
    # several epochs of this slice, so the 500-step default budget would make every small
    # dataset train for 500 steps.)
    per_epoch = steps_per_epoch(trained)
    assert per_epoch < 100
    summary = train_with(trained, tmp_path, epochs=1, max_steps=100)
    assert (summary["global_steps"], summary["stopped_by"]) == (per_epoch, "epochs")
    auto = train_with(trained, tmp_path / "auto", epochs="auto", max_epochs=2, max_steps=100)
    assert auto["global_steps"] <= 2 * per_epoch
    assert auto["stopped_by"] in ("max_epochs", "early_stopping")


def test_a_spent_time_budget_stops_and_evaluates_the_partial_epoch(
    trained: Trained, tmp_path: Path
) -> None:
    # A budget shorter than one step: training stops after its first step, the partial
    # epoch is evaluated and checkpointed, and that checkpoint is the one kept.
    summary = train_with(trained, tmp_path, epochs="auto", max_epochs=5, max_minutes=1e-6)
    assert (summary["global_steps"], summary["stopped_by"]) == (1, "max_minutes")
    assert summary["best_epoch"] == pytest.approx(1 / steps_per_epoch(trained))
    assert set(summary["best_validation"]) >= {"macro_f1", "accuracy", "loss"}


def test_validation_macro_f1_averages_over_every_label_like_the_test_metric() -> None:
    """m3: a label absent from the validation split's gold and predictions still counts
    (F1 0), as in the test metric; sklearn's default would average over the two present."""
    compute = TEXT.compute_metrics(("a", "b", "c"))
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    scores = compute((logits, np.array([0, 1])))
    assert scores["macro_f1"] == pytest.approx(2 / 3)
    assert scores["accuracy"] == 1.0
