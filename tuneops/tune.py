"""tune: hyperparameter search with Optuna, each trial a nested MLflow run.

TPE sampler (seeded) and median pruning on the per-epoch validation metric
(`train.metric_for_best_model`). The study lives in Optuna's RDB storage (`tune.storage`,
SQLite by default) and is created with load_if_exists: a second `tuneops tune` resumes
it, and several processes may run trials of the same study at once. The study remembers
its MLflow parent run, so every trial of every process nests under the same parent.

Trials are judged on the validation split only; the test split is never scored here.
The best trial's values are written, over the whole resolved config, to
`tune.best_params_file`, for `tuneops run --params params.best.yaml`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock
from transformers import TrainerCallback

from tuneops.config import Params, SearchDimension, validate_params
from tuneops.errors import ConfigError
from tuneops.paths import atomic_write_text
from tuneops.stages import STAGES, Context, params_hash, step_fetch, step_prepare, step_validate
from tuneops.tracking import MlflowTracker, check_tracking_server, redact_uri

PARENT_RUN_ATTR = "mlflow_parent_run_id"


@dataclass
class TuneResult:
    study_name: str
    storage: str
    parent_run_id: str
    trials_run: int
    trials_in_study: int
    states: dict[str, int]
    metric: str
    best_value: float | None
    best_params: dict[str, Any]
    best_params_file: Path | None

    def text(self) -> str:
        best = (
            f"best validation {self.metric} {self.best_value:.4f} with {self.best_params}\n"
            f"params file       {self.best_params_file} "
            f"(tuneops run --params {self.best_params_file})"
            if self.best_value is not None
            else "no trial completed"
        )
        states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(self.states.items()))
        return (
            f"study             {self.study_name} in {redact_uri(self.storage)}\n"
            f"trials            {self.trials_run} run now, {self.trials_in_study} in the study "
            f"({states})\n"
            f"{best}\n"
            f"MLflow parent run {self.parent_run_id}"
        )


def storage_url(storage: str, root: Path) -> str:
    """A relative sqlite path is anchored at the project root (as for MLflow)."""
    prefix = "sqlite:///"
    if storage.startswith(prefix) and not storage.startswith(prefix + "/"):
        return prefix + str((root / storage.removeprefix(prefix)).resolve())
    return storage


def with_values(params: Params, values: dict[str, Any]) -> Params:
    """`params` with dotted keys set to `values`, validated again (unknown keys are errors)."""
    raw = params.resolved()
    for dotted, value in values.items():
        *parents, leaf = dotted.split(".")
        node: Any = raw
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                raise ConfigError(f"tune.space: {dotted!r} is not a params.yaml key")
        if leaf not in node:
            raise ConfigError(f"tune.space: {dotted!r} is not a params.yaml key")
        node[leaf] = value
    return validate_params(raw, "tune.space")


def suggest(trial: Any, name: str, dim: SearchDimension) -> Any:
    if dim.type == "categorical":
        return trial.suggest_categorical(name, list(dim.choices or ()))
    assert dim.low is not None and dim.high is not None  # checked by SearchDimension
    if dim.type == "int":
        return trial.suggest_int(name, int(dim.low), int(dim.high), log=dim.log)
    return trial.suggest_float(name, dim.low, dim.high, log=dim.log)


class PruneOnValidation(TrainerCallback):
    """Reports each epoch's validation metric to the trial; raises TrialPruned when the
    median pruner says so (the Trainer stops, nothing is saved)."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial = trial
        self.metric = metric

    def on_evaluate(
        self,
        args: Any,
        state: Any,
        control: Any,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        import optuna

        value = (metrics or {}).get(f"eval_{self.metric}")
        if value is None:
            return
        epoch = round(state.epoch or 0)
        self.trial.report(float(value), step=epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"epoch {epoch}: validation {self.metric} {value:.4f}")


def tune(ctx: Context, trials: int) -> TuneResult:
    """Run `trials` more trials of the study in `ctx.params.tune`; write the best params."""
    import optuna

    cfg, paths = ctx.params.tune, ctx.paths
    for name, dim in cfg.space.items():  # a bad key fails now, not in trial 1
        first = dim.choices[0] if dim.choices else dim.low
        with_values(ctx.params, {name: first})
    check_tracking_server(ctx.tracking_uri)
    _ensure_prepared(ctx)
    storage = storage_url(cfg.storage, paths.root)
    from pipeline.tasks.base import lower_is_better_metrics

    metric = ctx.params.train.metric_for_best_model
    lower = lower_is_better_metrics(ctx.task)  # text regression's mae, rmse: minimised too
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with FileLock(paths.root / ".tune.lock", timeout=600):  # one parent run per study
        study = optuna.create_study(
            study_name=cfg.study_name,
            storage=storage,
            sampler=optuna.samplers.TPESampler(seed=cfg.sampler_seed),
            pruner=optuna.pruners.MedianPruner(
                n_startup_trials=cfg.pruner_startup_trials,
                n_warmup_steps=cfg.pruner_warmup_epochs,
            ),
            direction="minimize" if metric == "loss" or metric in lower else "maximize",
            load_if_exists=True,
        )
        parent = _parent_run(ctx, study, storage)
    started: list[int] = []  # this process's trials (other workers may add theirs)

    def objective(trial: optuna.Trial) -> float:
        started.append(trial.number)
        values = {name: suggest(trial, name, dim) for name, dim in cfg.space.items()}
        return _run_trial(ctx, with_values(ctx.params, values), values, trial, parent, metric)

    try:
        study.optimize(objective, n_trials=trials)
    except BaseException:
        parent.end("FAILED")
        raise
    return _finish(ctx, study, parent, storage, metric, len(started))


def _ensure_prepared(ctx: Context) -> None:
    """fetch → validate → prepare, under a lock (parallel workers share the data), unless
    data/prepared/ already holds this dataset's files prepared with this task and these
    data/validate/prepare params (audit M17: a prepared folder left by another dataset or
    params file would otherwise train every trial)."""
    with FileLock(ctx.paths.root / "data" / "prepare.lock", timeout=1800):
        if not _prepared_is_current(ctx):
            step_fetch(ctx)
            step_validate(ctx)
            step_prepare(ctx)
            _prepared_key(ctx).write_text(_wanted_key(ctx), encoding="utf-8")


def _prepared_key(ctx: Context) -> Path:
    # Inside data/prepared/: a prepare run by another command replaces the folder, and the
    # key with it, so tune prepares again rather than trust a folder it did not make.
    return ctx.paths.data_prepared / "tune-key.txt"


def _wanted_key(ctx: Context) -> str:
    keys = ("task", *STAGES["validate"].params, *STAGES["prepare"].params)
    return params_hash(ctx, keys)


def _prepared_is_current(ctx: Context) -> bool:
    from pipeline.version_data import file_md5s

    manifest_path = ctx.paths.data_prepared / "manifest.json"
    key = _prepared_key(ctx)
    if not (manifest_path.exists() and key.exists()):
        return False
    if key.read_text(encoding="utf-8") != _wanted_key(ctx):
        return False
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    dataset = ctx.paths.raw_dataset(ctx.params.data.name)
    return bool(dataset.is_dir()) and manifest.get("raw_files") == file_md5s(
        dataset, dataset.parent
    )


def _parent_run(ctx: Context, study: Any, storage: str) -> MlflowTracker:
    run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if run_id:
        parent = MlflowTracker(ctx.tracking_uri, str(run_id))
        parent.client.update_run(parent.run_id, status="RUNNING")
        return parent
    parent = MlflowTracker.start(
        ctx.tracking_uri,
        ctx.params.experiment_name,
        ctx.artifact_location,
        run_name=f"tune-{study.study_name}",
        tags={
            "optuna.study_name": study.study_name,
            "optuna.storage": redact_uri(storage),
            "params.hash": ctx.params.params_hash(),
            "strategy": ctx.params.train.strategy,
        },
    )
    parent.log_params(ctx.params.flat())
    study.set_user_attr(PARENT_RUN_ATTR, parent.run_id)
    return parent


def _run_trial(
    ctx: Context,
    params: Params,
    values: dict[str, Any],
    trial: Any,
    parent: MlflowTracker,
    metric: str,
) -> float:
    import optuna

    from pipeline.train import train

    child = MlflowTracker.start(
        ctx.tracking_uri,
        params.experiment_name,
        ctx.artifact_location,
        run_name=f"trial-{trial.number}",
        tags={
            "mlflow.parentRunId": parent.run_id,
            "optuna.study_name": trial.study.study_name,
            "optuna.trial_number": trial.number,
            "strategy": params.train.strategy,
        },
    )
    child.log_params(params.flat())
    models = ctx.paths.root / "models" / "tune"
    models.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"trial-{trial.number}-", dir=models))
    try:
        result = train(
            ctx.task,
            params.model,
            params.train,
            ctx.paths.data_prepared,
            folder / "candidate",
            folder / "checkpoints",
            ctx.paths.data_cache,
            child,
            callbacks=[PruneOnValidation(trial, metric)],
        )
    except optuna.TrialPruned:
        child.set_tags({"optuna.trial_state": "PRUNED"})
        child.end("KILLED")
        raise
    except BaseException:
        child.set_tags({"optuna.trial_state": "FAIL"})
        child.end("FAILED")
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    value = result.best_validation[metric]
    child.log_metrics(
        {f"best_validation_{k}": v for k, v in result.best_validation.items()}
        | {
            "trainable_params": result.trainable_params,
            "total_params": result.total_params,
            "peak_memory_mb": result.peak_memory_mb,
            "train_tokens_per_s": result.tokens_per_s,
        }
    )
    child.set_tags({"optuna.trial_state": "COMPLETE", "optuna.values": values})
    child.end("FINISHED")
    return float(value)


def _finish(
    ctx: Context, study: Any, parent: MlflowTracker, storage: str, metric: str, ran: int
) -> TuneResult:
    import optuna

    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    states: dict[str, int] = {}
    for trial in study.trials:
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    best_file: Path | None = None
    best: Params | None = None
    best_value: float | None = None
    best_params: dict[str, Any] = {}
    if completed:
        best_value, best_params = float(study.best_value), dict(study.best_params)
        best_file = ctx.paths.root / ctx.params.tune.best_params_file
        best = with_values(ctx.params, best_params)
        atomic_write_text(best_file, yaml.safe_dump(best.resolved(), sort_keys=False))
        parent.set_tags({f"best.{k}": v for k, v in best_params.items()})
        parent.set_tags({"best.trial_number": study.best_trial.number})
        parent.log_metrics({f"best_validation_{metric}": best_value}, step=len(study.trials))
    with tempfile.TemporaryDirectory() as scratch:
        if best_file is not None and best is not None:  # the run's copy: credentials redacted
            shown = Path(scratch) / best_file.name
            shown.write_text(yaml.safe_dump(best.recorded(), sort_keys=False), "utf-8")
            parent.log_artifact(shown, "tune")
        for path in _study_artifacts(study, Path(scratch)):
            parent.log_artifact(path, "tune")
    parent.log_metrics(
        {"trials": len(study.trials)} | {f"trials_{s.lower()}": n for s, n in states.items()}
    )
    parent.end("FINISHED")
    return TuneResult(
        study.study_name,
        storage,
        parent.run_id,
        ran,
        len(study.trials),
        states,
        metric,
        best_value,
        best_params,
        best_file,
    )


def _study_artifacts(study: Any, folder: Path) -> list[Path]:
    """optimization_history.png and trials.csv of the whole study so far."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_optimization_history

    trials_csv = folder / "trials.csv"
    study.trials_dataframe().to_csv(trials_csv, index=False)
    written = [trials_csv]
    if any(t.value is not None for t in study.trials):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna's "experimental" warning
            axes = plot_optimization_history(study)
        plot = folder / "optimization_history.png"
        figure = axes.get_figure(root=True)
        assert figure is not None
        figure.savefig(plot, dpi=120, bbox_inches="tight")
        plt.close(figure)
        written.append(plot)
    return written
