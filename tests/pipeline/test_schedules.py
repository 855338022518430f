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


def test_balanced_class_weights_give_the_hand_computed_weighted_cross_entropy(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import numpy as np

    from pipeline.tasks.text_classification import TextClassification

    labels = ("spam", "ham", "promo")
    train = {"train": {"labels": [0] * 6 + [1] * 3 + [2]}}  # 60% / 30% / 10%
    cfg = TrainConfig(class_weights="balanced")
    weights = TextClassification().class_weights(train, cfg, labels)
    # n / (classes * count): 10 / 18, 10 / 9, 10 / 3
    assert weights == pytest.approx([10 / 18, 10 / 9, 10 / 3], abs=1e-12)

    model = load_classifier(tiny_model_dir, labels).eval()
    trainer = ScheduledTrainer(
        model=model,
        args=TrainingArguments(output_dir=str(tmp_path), report_to="none"),
        train_cfg=cfg,
        class_weights=weights,
    )
    torch.manual_seed(0)
    batch = {
        "input_ids": torch.randint(1000, 2000, (5, 7)),
        "attention_mask": torch.ones(5, 7, dtype=torch.long),
        "labels": torch.tensor([0, 0, 0, 1, 2]),  # imbalanced: three of the first class
    }
    with torch.no_grad():
        loss = float(trainer.compute_loss(model, dict(batch)))
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    x = logits.double().numpy()
    nll = -(x - np.log(np.exp(x).sum(axis=1, keepdims=True)))[np.arange(5), [0, 0, 0, 1, 2]]
    w = np.array(weights)[[0, 0, 0, 1, 2]]
    assert loss == pytest.approx(float((w * nll).sum() / w.sum()), abs=1e-6)
    # without weights it is the model's own unweighted mean, and the two differ
    plain = ScheduledTrainer(
        model=model,
        args=TrainingArguments(output_dir=str(tmp_path), report_to="none"),
        train_cfg=TrainConfig(),
    )
    with torch.no_grad():
        unweighted = float(plain.compute_loss(model, dict(batch)))
    assert unweighted == pytest.approx(float(nll.mean()), abs=1e-6)
    assert abs(unweighted - loss) > 1e-3


def test_class_weights_by_label_name_default_to_one_and_an_unknown_label_is_named() -> None:
    from pipeline.tasks.text_classification import class_weights
    from tuneops.errors import ConfigError

    labels = ("negative", "neutral", "positive")
    assert class_weights({"neutral": 4.0}, torch.tensor([0]).numpy(), labels) == [1.0, 4.0, 1.0]
    assert class_weights("none", torch.tensor([0]).numpy(), labels) is None
    with pytest.raises(ConfigError, match=r"train\.class_weights: unknown label\(s\) \['neutrl'\]"):
        class_weights({"neutrl": 4.0}, torch.tensor([0]).numpy(), labels)
    with pytest.raises(ValueError, match="greater than 0"):
        TrainConfig(class_weights={"neutral": 0.0})


def test_class_weights_on_a_token_task_are_a_config_error() -> None:
    from pipeline.tasks.token_classification import TokenClassification
    from tuneops.config import Params
    from tuneops.errors import ConfigError

    params = Params.model_validate(
        {
            "task": "token-classification",
            "train": {"class_weights": "balanced", "metric_for_best_model": "entity_f1"},
            "gate": {"baselines": ["before_finetuning"], "floors": {"test_entity_f1": 0.5}},
        }
    )
    with pytest.raises(ConfigError, match=r"train\.class_weights: 'balanced' is for text class"):
        TokenClassification().check(params)
