"""train: fine-tune the base model with the Hugging Face Trainer on the prepared splits.

Writes models/candidate/ (safetensors weights, tokenizer, labels.json,
training_summary.json) atomically; checkpoints go to models/checkpoints/, and a run that
was killed is resumed from its last complete checkpoint (see checkpoints.py).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from datasets import load_dataset
from transformers import (
    EarlyStoppingCallback,
    PrinterCallback,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from pipeline.tasks.base import Task, loss_function, lower_is_better_metrics
from pipeline.training import checkpoints, distill
from pipeline.training.adversarial import trainer_class
from pipeline.training.devices import resolve_precision, trainer_options, world_size
from pipeline.training.memory import peak_memory
from pipeline.training.modeling import load_tokenizer, pick_device, resolve_model_path
from pipeline.training.progress import ProgressLog, TimeBudget, duration, stderr_logger
from pipeline.training.schedules import trainer_scheduler_type
from pipeline.training.soft_prompt import save_prompt
from pipeline.training.strategies import (
    PEFT_STRATEGIES,
    apply_strategy,
    count_parameters,
    is_prompt_model,
    merged,
    save_adapter,
    strategy_callbacks,
)
from tuneops.config import ModelConfig, TrainConfig
from tuneops.paths import atomic_dir
from tuneops.tracking import NullTracker, Tracker


@dataclass
class TrainResult:
    model_dir: Path
    base_model: str
    device: str
    precision: str
    global_steps: int
    epochs_run: float
    train_runtime_s: float
    train_tokens: int
    tokens_per_s: float
    trainable_params: int
    total_params: int
    best_validation: dict[str, float]
    strategy: str = "full"
    peak_memory_mb: float = 0.0
    adapter_dir: Path | None = None
    resumed_from: str | None = None  # checkpoint folder name, when a killed run was resumed
    resumed_run_id: str | None = None  # the killed run's tracker run id
    # Data-parallel processes (torchrun / accelerate launch); the global batch is
    # batch_size x world_size, and the token counts are over all of them.
    world_size: int = 1
    # What ended training: early_stopping (no validation gain for the patience), max_epochs
    # (train.epochs: auto) or epochs (a number), max_steps, max_minutes (the time budget).
    stopped_by: str = "epochs"
    best_epoch: float | None = None  # the epoch whose checkpoint was kept
    epochs_planned: float = 1.0  # train.epochs, or train.max_epochs under auto


def read_manifest(prepared_dir: Path) -> dict[str, Any]:
    return json.loads((prepared_dir / "manifest.json").read_text(encoding="utf-8"))


def train(
    task: Task,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    prepared_dir: Path,
    candidate_dir: Path,
    checkpoints_dir: Path,
    cache_dir: Path,
    tracker: Tracker | None = None,
    extra_summary: dict[str, Any] | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    log: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    teacher: distill.Teacher | None = None,
) -> TrainResult:
    """Fine-tune on train, select on validation (early stopping, best checkpoint kept).

    `cfg.strategy` picks the parameters that train (see strategies.py); a peft adapter is
    saved to candidate_dir/adapter/ and merged into the weights saved beside it (a soft
    prompt, which cannot be merged, is saved beside them: soft_prompt.py). Under
    torchrun / accelerate launch every process trains its share of each batch; only rank 0
    writes checkpoints and the candidate (pass it the tracker, the others none).
    An interrupted run with the same config and data resumes from its last checkpoint
    (on CPU it ends with the same weights as an uninterrupted run). Progress lines go to
    `log` (default: stderr; the flow passes Prefect's run logger). With `teacher`
    (train.distill), the student also learns the teacher's logits (distill.py).
    """
    tracker = tracker or NullTracker()
    set_seed(cfg.seed)
    manifest = read_manifest(prepared_dir)
    labels = tuple(manifest["labels"])
    device, processes = pick_device(), world_size()
    precision = resolve_precision(cfg.precision, device)
    # Built first: it joins the process group, so rank 0 can tokenise (and fill the
    # cache) before the others read it.
    args = _training_arguments(
        cfg, checkpoints_dir, precision, device, processes, lower_is_better_metrics(task)
    )
    base_path = resolve_model_path(model_cfg.name_or_path)
    tokenizer = load_tokenizer(base_path)
    model = task.load_model(base_path, labels, model_cfg.num_hidden_layers)
    cfg = task.resolve(cfg, tokenizer, prepared_dir, model.config)  # max_length: auto
    with args.main_process_first(desc="tokenise"):
        splits = _tokenised_splits(
            prepared_dir, cache_dir, task.tokenise(tokenizer, cfg), cfg.max_length
        )
    splits, task_summary = task.after_tokenise(splits, cfg)
    log = log or stderr_logger()
    if teacher is not None:
        splits["train"], found = distill.attach(
            splits, teacher, prepared_dir, labels, cache_dir, log
        )
        scores = distill.teacher_test_scores(teacher, task, prepared_dir)
        task_summary |= {
            "distill": found
            | {"alpha": cfg.distill.alpha, "temperature": cfg.distill.temperature}
            | {f"teacher_{k}": round(v, 6) for k, v in scores.items()}
        }
    args.max_steps = step_budget(cfg, len(splits["train"]), processes)
    class_weights = task.class_weights(splits, cfg, labels)
    if class_weights is not None:
        task_summary = task_summary | {
            "class_weights": dict(zip(labels, class_weights, strict=True))
        }
    # The optimiser steps this run plans (AdaLoRA spreads its rank budget over them).
    total_steps = (
        args.max_steps
        if args.max_steps > 0
        else planned_steps(cfg, len(splits["train"]), processes)
    )
    trained_model = apply_strategy(model, cfg, task.peft_task_type, total_steps)
    counts = count_parameters(trained_model)

    key = checkpoints.run_key(model_cfg, cfg, task.name, manifest)
    # Rank 0 decides (and clears the folder for a fresh run); the others then find the same.
    with args.main_process_first(desc="checkpoints"):
        writer = args.process_index == 0
        resume = checkpoints.start(checkpoints_dir, key, tracker.run_id, writer)
    # Before the caller's callbacks: a checkpoint is complete before anyone hears of it.
    callbacks = [
        checkpoints.EpochStartRng(resume.checkpoint if resume else None),
        *strategy_callbacks(cfg),
        *callbacks,
    ]
    if cfg.checkpoint_steps:
        callbacks = [checkpoints.StepCheckpoints(cfg.checkpoint_steps), *callbacks]
    early = EarlyStoppingCallback(cfg.early_stopping_patience)
    budget = TimeBudget(cfg.max_minutes) if cfg.max_minutes else None
    progress = ProgressLog(
        cfg.logging_steps, planned_epochs(cfg), budget.budget_s if budget else None, log
    )
    trainer = trainer_class(cfg)(
        model=trained_model,
        args=args,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        processing_class=tokenizer,
        data_collator=task.collator(tokenizer),
        compute_metrics=task.compute_metrics(labels, splits["validation"]),
        callbacks=[
            early,
            *([budget] if budget else []),
            _TrackerCallback(tracker),
            progress,
            *callbacks,
        ],
        train_cfg=cfg,
        class_weights=class_weights,
        compute_loss_func=loss_function(task, cfg),  # None: the model's own loss
    )
    # Our progress lines replace the dict the Trainer prints per log when tqdm is off.
    trainer.remove_callback(PrinterCallback)
    started = time.perf_counter()
    with peak_memory(device) as memory:
        output = trainer.train(resume_from_checkpoint=str(resume.checkpoint) if resume else None)
    runtime = time.perf_counter() - started
    epochs_run = float(trainer.state.epoch or 0.0)
    train_tokens = int(sum(splits["train"]["length"]) * epochs_run)
    best = _best_evaluation(
        trainer.state.log_history, cfg.metric_for_best_model, lower_is_better_metrics(task)
    )
    stopped_by = _stopped_by(cfg, int(output.global_step), early, budget)
    log.info(
        f"training stopped by {stopped_by} after {epochs_run:.2f} epochs "
        f"({output.global_step} steps, {duration(time.perf_counter() - started)}); kept the "
        f"checkpoint of epoch {best.get('epoch', epochs_run):.2f} (validation "
        f"{cfg.metric_for_best_model} {best.get(cfg.metric_for_best_model, float('nan')):.4f})"
    )
    result = TrainResult(
        model_dir=candidate_dir,
        base_model=model_cfg.name_or_path,
        device=device,
        precision=precision,
        global_steps=int(output.global_step),
        epochs_run=round(epochs_run, 4),
        train_runtime_s=round(runtime, 2),
        train_tokens=train_tokens,
        tokens_per_s=round(train_tokens / runtime, 1) if runtime > 0 else 0.0,
        trainable_params=counts.trainable,
        total_params=counts.total,
        best_validation=best,
        strategy=cfg.strategy,
        peak_memory_mb=round(memory.peak_mb, 1),
        adapter_dir=candidate_dir / "adapter" if cfg.strategy in PEFT_STRATEGIES else None,
        resumed_from=resume.checkpoint.name if resume else None,
        resumed_run_id=resume.run_id if resume else None,
        world_size=processes,
        stopped_by=stopped_by,
        best_epoch=best.get("epoch"),
        epochs_planned=planned_epochs(cfg),
    )
    if not trainer.is_world_process_zero():
        return result
    with atomic_dir(candidate_dir) as tmp:
        if cfg.strategy in PEFT_STRATEGIES:
            save_adapter(trained_model, tmp / "adapter")
        if is_prompt_model(trained_model):
            save_prompt(trained_model, tmp)
        # Not trainer.save_model: it also writes training_args.bin, a pickle, and the
        # candidate folder must hold nothing that is unpickled on load.
        # The best checkpoint, loaded in place (a peft adapter merged into the base).
        merged(trained_model).save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / "labels.json").write_text(json.dumps(list(labels)) + "\n", encoding="utf-8")
        summary = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(result).items()}
        summary |= (extra_summary or {}) | task_summary
        (tmp / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    checkpoints.finish(checkpoints_dir)
    return result


def planned_epochs(cfg: TrainConfig) -> float:
    """train.epochs, or train.max_epochs when it is auto (early stopping ends it sooner)."""
    return float(cfg.max_epochs) if cfg.epochs == "auto" else float(cfg.epochs)


def step_budget(cfg: TrainConfig, train_rows: int, processes: int = 1) -> int:
    """The `max_steps` the Trainer gets: train.max_steps when the planned epochs would take
    more optimiser steps, else -1 (the epochs decide). train.max_steps is a budget, the first
    of the two limits to be reached ends training; transformers' own `max_steps > 0`
    replaces `num_train_epochs` instead, and would train a small split for many more epochs
    than planned."""
    if cfg.max_steps <= 0:
        return -1
    planned = planned_steps(cfg, train_rows, processes)
    return cfg.max_steps if cfg.max_steps < planned else -1


def planned_steps(cfg: TrainConfig, train_rows: int, processes: int = 1) -> int:
    """The optimiser steps of the planned epochs (train.max_steps aside)."""
    batches = math.ceil(train_rows / (cfg.batch_size * processes))
    per_epoch = max(math.ceil(batches / cfg.gradient_accumulation_steps), 1)
    return math.ceil(planned_epochs(cfg) * per_epoch)


def _stopped_by(
    cfg: TrainConfig, steps: int, early: EarlyStoppingCallback, budget: TimeBudget | None
) -> str:
    if budget is not None and budget.spent:
        return "max_minutes"
    if early.early_stopping_patience_counter >= cfg.early_stopping_patience:
        return "early_stopping"
    if 0 < cfg.max_steps <= steps:
        return "max_steps"
    return "max_epochs" if cfg.epochs == "auto" else "epochs"


def _best_evaluation(
    history: list[dict[str, Any]], metric: str, lower: tuple[str, ...] = ()
) -> dict[str, float]:
    """The validation metrics of the epoch whose checkpoint was kept (read from the log,
    not re-computed: re-evaluating would cost another pass over the validation split);
    `lower`: the task's metrics where lower is better, picked as loss is."""
    evaluations = [entry for entry in history if f"eval_{metric}" in entry]
    if not evaluations:
        return {}
    pick = min if metric == "loss" or metric in lower else max
    best = pick(evaluations, key=lambda entry: entry[f"eval_{metric}"])
    return {
        k.removeprefix("eval_"): float(v)
        for k, v in best.items()
        if k.startswith("eval_") or k == "epoch"
    }


def _training_arguments(
    cfg: TrainConfig,
    output_dir: Path,
    precision: str,
    device: str,
    processes: int = 1,
    lower: tuple[str, ...] = (),
) -> TrainingArguments:
    """`lower`: the task's metrics where lower is better (selected descending, as loss)."""
    greater = cfg.metric_for_best_model != "loss" and cfg.metric_for_best_model not in lower
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=planned_epochs(cfg),
        max_steps=-1,  # set by step_budget once the train split is tokenised
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of the total steps
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=trainer_scheduler_type(cfg),
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model=cfg.metric_for_best_model,
        greater_is_better=greater,
        logging_strategy="steps",
        logging_steps=cfg.logging_steps,
        include_num_input_tokens_seen="non_padding",  # the progress lines' tokens/s
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        length_column_name="length",
        report_to="none",
        disable_tqdm=True,
        save_only_model=False,
        dataloader_pin_memory=device == "cuda",
        **trainer_options(cfg, device, processes),
    )


def _tokenised_splits(
    prepared_dir: Path, cache_dir: Path, tokenise: Callable[..., Any], max_length: int | str
) -> Any:
    """HF `datasets` over the parquet splits, tokenised once and cached by fingerprint."""
    files = {s: str(prepared_dir / f"{s}.parquet") for s in ("train", "validation", "test")}
    raw = load_dataset("parquet", data_files=files, cache_dir=str(cache_dir))
    columns = raw["train"].column_names
    return raw.map(
        tokenise, batched=True, remove_columns=columns, desc=f"tokenise (max_length={max_length})"
    )


class _TrackerCallback(TrainerCallback):
    """Per-step training loss and per-epoch validation metrics to the tracker.

    Written by hand instead of transformers' MLflowCallback: that one logs through the
    global fluent API and logs every TrainingArguments field as a param, while we log
    our own stable, flattened param names once.
    """

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        metrics: dict[str, float] = {}
        for key, value in (logs or {}).items():
            if not isinstance(value, int | float):
                continue
            if key.startswith("eval_"):
                metrics[f"validation_{key.removeprefix('eval_')}"] = float(value)
            elif key in ("loss", "learning_rate", "grad_norm", "epoch"):
                metrics["train_loss" if key == "loss" else key] = float(value)
        self.tracker.log_metrics(metrics, step=state.global_step)
