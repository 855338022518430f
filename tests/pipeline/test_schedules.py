"""Exponential LR decay and layer-wise LR decay, through the Trainer's own hooks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import TrainingArguments

from pipeline.training.modeling import load_classifier
from pipeline.training.schedules import ScheduledTrainer, exponential_factor, trainer_scheduler_type
from pipeline.training.strategies import apply_strategy
from tuneops.config import TrainConfig

LR = 1.0e-3


def _trainer(model: Any, cfg: TrainConfig, tmp_path: Path) -> ScheduledTrainer:
    args = TrainingArguments(
        output_dir=str(tmp_path),
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio,
        lr_scheduler_type=trainer_scheduler_type(cfg),
        report_to="none",
    )
    return ScheduledTrainer(model=model, args=args, train_cfg=cfg)


@pytest.fixture
def tiny(tiny_model_dir: Path) -> Any:
    return load_classifier(tiny_model_dir, ("negative", "positive"))


@pytest.mark.parametrize("step", [0, 1, 7, 10, 25, 100])
def test_exponential_factor_is_decay_rate_to_the_step_over_decay_steps(step: int) -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, exponential_factor(0.5, 10))
    for _ in range(step):
        optimizer.step()
        scheduler.step()
    assert scheduler.get_last_lr()[0] == pytest.approx(0.1 * 0.5 ** (step / 10), rel=1e-12)


def test_trainer_uses_the_exponential_schedule_after_warmup(tiny: Any, tmp_path: Path) -> None:
    cfg = TrainConfig(
        learning_rate=LR,
        lr_scheduler="exponential",
        lr_decay_rate=0.9,
        lr_decay_steps=20,
        warmup_ratio=0.1,
    )
    trainer = _trainer(tiny, cfg, tmp_path)
    trainer.create_optimizer_and_scheduler(num_training_steps=100)  # 10 warmup steps
    assert trainer.lr_scheduler is not None and trainer.optimizer is not None
    seen = {}
    for step in range(61):
        seen[step] = trainer.lr_scheduler.get_last_lr()[0]
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert seen[0] == 0.0
    assert seen[5] == pytest.approx(LR * 0.5 * 0.9 ** (5 / 20))
    for step in (10, 30, 60):
        assert seen[step] == pytest.approx(LR * 0.9 ** (step / 20))


def test_built_in_schedules_are_left_to_the_trainer(tiny: Any, tmp_path: Path) -> None:
    cfg = TrainConfig(learning_rate=LR, lr_scheduler="cosine", warmup_ratio=0.0)
    trainer = _trainer(tiny, cfg, tmp_path)
    trainer.create_optimizer_and_scheduler(num_training_steps=100)
    assert trainer.lr_scheduler is not None
    assert type(trainer.lr_scheduler).__name__ == "LambdaLR"
    assert trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(LR)
    assert trainer_scheduler_type(TrainConfig()) == "linear"


def _lr_by_parameter(trainer: ScheduledTrainer) -> dict[str, tuple[float, float]]:
    assert trainer.optimizer is not None and trainer.model is not None
    group_of = {
        id(p): (g["lr"], g["weight_decay"])
        for g in trainer.optimizer.param_groups
        for p in g["params"]
    }
    return {n: group_of[id(p)] for n, p in trainer.model.named_parameters() if id(p) in group_of}


def test_layerwise_decay_gives_each_depth_its_learning_rate(tiny: Any, tmp_path: Path) -> None:
    cfg = TrainConfig(learning_rate=LR, layerwise_lr_decay=0.5, weight_decay=0.01)
    trainer = _trainer(tiny, cfg, tmp_path)
    trainer.create_optimizer()
    lrs = _lr_by_parameter(trainer)
    assert len(lrs) == len(list(tiny.parameters()))  # every parameter, once
    assert lrs["classifier.weight"] == (LR, 0.01)
    assert lrs["classifier.bias"] == (LR, 0.0)
    assert lrs["bert.pooler.dense.weight"] == (LR, 0.01)
    assert lrs["bert.encoder.layer.1.attention.self.query.weight"] == (LR * 0.5, 0.01)
    assert lrs["bert.encoder.layer.1.output.LayerNorm.weight"] == (LR * 0.5, 0.0)
    assert lrs["bert.encoder.layer.0.intermediate.dense.weight"] == (LR * 0.25, 0.01)
    assert lrs["bert.embeddings.word_embeddings.weight"] == (LR * 0.125, 0.01)


def test_layerwise_decay_groups_only_trainable_parameters(tiny: Any, tmp_path: Path) -> None:
    cfg = TrainConfig(
        learning_rate=LR, layerwise_lr_decay=0.5, strategy="freeze", freeze={"trainable_layers": 1}
    )
    trainer = _trainer(apply_strategy(tiny, cfg), cfg, tmp_path)
    trainer.create_optimizer()
    lrs = _lr_by_parameter(trainer)
    assert {lr for lr, _ in lrs.values()} == {LR, LR * 0.5}
    assert not [n for n in lrs if ".layer.0." in n or "embeddings" in n]
