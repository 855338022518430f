"""`tuneops tune` on the tiny BERT: Optuna study in SQLite, nested MLflow runs, resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest

from pipeline.train import train
from tests.conftest import TEXT, Trained, store_client, tiny_overrides, write_params
from tuneops.cli import main as cli_main
from tuneops.config import load_params
from tuneops.errors import ConfigError
from tuneops.stages import load_context
from tuneops.tune import PruneOnValidation, tune, with_values

SPACE = {
    "train.learning_rate": {"type": "float", "low": 1.0e-4, "high": 1.0e-3, "log": True},
    "train.strategy": {"type": "categorical", "choices": ["full", "bitfit"]},
}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Any]:
    """Two trials in one call, then one more through the CLI (the study resumes)."""
    root = tmp_path_factory.mktemp("tune")
    overrides = tiny_overrides(tiny_model_dir) | {
        "data.max_rows": 200,
        "train.epochs": 2,
        "tune.space": SPACE,
        "tune.study_name": "tiny",
        "tune.pruner_startup_trials": 1,
    }
    write_params(root, overrides)
    first = tune(load_context(root), trials=2)
    code = cli_main(["--root", str(root), "tune", "--trials", "1"])
    return {"root": root, "first": first, "code": code}


def test_the_study_is_stored_in_sqlite_and_resumed(tuned: dict[str, Any]) -> None:
    root: Path = tuned["root"]
    assert tuned["code"] == 0
    assert (root / "optuna.db").exists()
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{root / 'optuna.db'}")
    assert len(study.trials) == 3
    assert tuned["first"].trials_in_study == tuned["first"].trials_run == 2
    assert {t.state for t in study.trials} <= {
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
    }
    assert set(study.trials[0].params) == set(SPACE)


def test_trials_are_nested_runs_under_one_parent(tuned: dict[str, Any]) -> None:
    root: Path = tuned["root"]
    client = store_client(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], max_results=100
    )
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert [p.info.run_id for p in parents] == [tuned["first"].parent_run_id]
    assert len(children) == 3
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert {c.data.tags["optuna.trial_number"] for c in children} == {"0", "1", "2"}
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "tune")}
    assert {
        "tune/optimization_history.png",
        "tune/params.best.yaml",
        "tune/trials.csv",
    } <= artifacts
    assert "best.train.learning_rate" in parent.data.tags
    # Selection is on validation only: no run of the search scored the test split.
    for run in runs:
        assert not [m for m in run.data.metrics if m.startswith("test_")]
    completed = [c for c in children if c.data.tags["optuna.trial_state"] == "COMPLETE"]
    assert completed and all("best_validation_macro_f1" in c.data.metrics for c in completed)
    assert all(c.data.metrics["trainable_params"] > 0 for c in completed)


def test_best_params_file_is_a_full_params_file_with_the_best_values(
    tuned: dict[str, Any],
) -> None:
    root: Path = tuned["root"]
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{root / 'optuna.db'}")
    best = load_params(root / "params.best.yaml")
    assert best.train.learning_rate == study.best_params["train.learning_rate"]
    assert best.train.strategy == study.best_params["train.strategy"]
    assert best.model == load_params(root / "params.yaml").model


def test_a_pruned_trial_stops_training_and_saves_nothing(trained: Trained, tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(2.0))
    trial = study.ask()  # every macro-F1 is below 2.0: pruned at the first evaluation
    with pytest.raises(optuna.TrialPruned, match="epoch 1"):
        train(
            TEXT,
            trained.params.model,
            trained.params.train,
            trained.paths.data_prepared,
            tmp_path / "candidate",
            tmp_path / "checkpoints",
            trained.paths.data_cache,
            callbacks=[PruneOnValidation(trial, "macro_f1")],
        )
    assert not (tmp_path / "candidate").exists()
    assert list(trial.storage.get_trial(trial._trial_id).intermediate_values) == [1]


def test_a_search_space_key_that_params_yaml_lacks_is_a_config_error(project: Path) -> None:
    params = load_params(project / "params.yaml")
    with pytest.raises(ConfigError, match=r"train\.learning_rat"):
        with_values(params, {"train.learning_rat": 1e-4})
    with pytest.raises(ConfigError, match="strategy"):
        with_values(params, {"train.strategy": "adapters"})
    assert with_values(params, {"train.batch_size": 16}).train.batch_size == 16


@pytest.mark.audit("M17", "T10")
def test_tune_runs_token_classification_trials(tmp_path: Path, tiny_model_dir: Path) -> None:
    """params.ner.yaml's task reaches every trial (tune trained text classification before:
    a KeyError on label_id in the token parquet files)."""
    import yaml

    from tests.conftest import preset, set_dotted

    params = preset("params.ner.yaml")
    overrides = {
        "data.max_rows": 200,
        "model.name_or_path": str(tiny_model_dir),
        "model.num_hidden_layers": None,
        "train.epochs": 1,
        "train.max_length": 32,
        "train.batch_size": 16,
        "tune.space": {"train.learning_rate": SPACE["train.learning_rate"]},
        "tune.study_name": "ner",
    }
    for key, value in overrides.items():
        set_dotted(params, key, value)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = tune(load_context(tmp_path), trials=1)
    assert result.trials_run == 1
    study = optuna.load_study(study_name="ner", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    client = store_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (child,) = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert child.data.params["task"] == "token-classification"
    assert child.data.metrics["best_validation_entity_f1"] == pytest.approx(trial.value)


@pytest.mark.audit("M17")
def test_tune_prepares_again_when_the_prepared_data_is_another_dataset_s_or_params_file_s(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """A data/prepared/ left by `tuneops stage prepare` or by other params is not reused;
    the folder tune prepared itself, for these params and files, is."""
    import json

    from tuneops.stages import step_fetch, step_prepare, step_validate
    from tuneops.tune import _ensure_prepared

    write_params(tmp_path, tiny_overrides(tiny_model_dir) | {"data.max_rows": 200})
    ctx = load_context(tmp_path)
    for step in (step_fetch, step_validate, step_prepare):  # not tune's: no key
        step(ctx)
    manifest = ctx.paths.data_prepared / "manifest.json"
    stale = manifest.stat().st_mtime_ns
    _ensure_prepared(ctx)
    assert manifest.stat().st_mtime_ns != stale  # prepared again, for tune
    kept = manifest.stat().st_mtime_ns
    _ensure_prepared(load_context(tmp_path))
    assert manifest.stat().st_mtime_ns == kept  # same params and files: reused
    write_params(
        tmp_path,
        tiny_overrides(tiny_model_dir) | {"data.max_rows": 200, "prepare.test_fraction": 0.2},
    )
    _ensure_prepared(load_context(tmp_path))
    assert json.loads(manifest.read_text())["split"]["test_fraction"] == 0.2
