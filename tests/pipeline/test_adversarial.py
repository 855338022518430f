"""Adversarial training (train.adversarial): FGM and PGD on the word embeddings of the tiny
BERT, checked against the same perturbation computed by hand from the weight's gradient."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.numpy import load_file
from transformers import TrainingArguments

from pipeline.train import train
from pipeline.training.adversarial import AdversarialTrainer, trainer_class
from pipeline.training.modeling import load_classifier
from pipeline.training.schedules import ScheduledTrainer
from pipeline.training.strategies import apply_strategy
from tests.conftest import TEXT, Trained
from tuneops.config import TrainConfig, validate_params
from tuneops.errors import ConfigError

LABELS = ("negative", "positive")
EPSILON = 0.5
BATCH = {
    "input_ids": torch.tensor([[101, 2023, 2003, 1037, 2204, 102], [101, 2204, 2204, 102, 0, 0]]),
    "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]),
    "token_type_ids": torch.zeros(2, 6, dtype=torch.long),
    "labels": torch.tensor([1, 0]),
}


def _config(strategy: str = "full", **adversarial: Any) -> TrainConfig:
    extra: dict[str, Any] = {"lora": {"dropout": 0.0}} if strategy == "lora" else {}
    return TrainConfig.model_validate(
        {"strategy": strategy, "adversarial": adversarial, "class_weights": "none", **extra}
    )


def _model(model_dir: Path, cfg: TrainConfig) -> Any:
    """The same starting weights every time (seeded head and adapters), dropout off so
    that two passes over one batch differ only by the perturbation."""
    torch.manual_seed(0)
    model = apply_strategy(load_classifier(model_dir, LABELS), cfg)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def _step(model: Any, cfg: TrainConfig, tmp_path: Path) -> dict[str, torch.Tensor]:
    """One Trainer training_step on BATCH: the parameters' gradients it leaves."""
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = trainer_class(cfg)(model=model, args=args, train_cfg=cfg)
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop
    trainer.training_step(trainer.model, dict(BATCH))
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _by_hand(model: Any) -> dict[str, torch.Tensor]:
    """FGM as the recipe writes it on the weight: g = dL/dW (W made to require it for the
    clean pass), W += epsilon * g / ||g||, the second pass's gradients added, W restored."""
    weight = model.get_input_embeddings().weight
    trains = weight.requires_grad
    weight.requires_grad_(True)
    model.train()
    model(**BATCH).loss.backward()
    r = EPSILON * weight.grad / weight.grad.norm()
    clean = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    weight.requires_grad_(trains)
    with torch.no_grad():
        weight += r
    model(**BATCH).loss.backward()
    with torch.no_grad():
        weight -= r
    found = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return {n: clean[n] + found[n] for n in found}


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_fgm_adds_the_gradients_at_the_normalised_step_and_restores_the_embeddings(
    tiny_model_dir: Path, tmp_path: Path, strategy: str
) -> None:
    cfg = _config(strategy, method="fgm", epsilon=EPSILON)
    model = _model(tiny_model_dir, cfg)
    before = model.get_input_embeddings().weight.detach().clone()
    fgm = _step(model, cfg, tmp_path)
    assert torch.equal(model.get_input_embeddings().weight.detach(), before)  # exactly
    none = _step(_model(tiny_model_dir, _config(strategy)), _config(strategy), tmp_path)
    expected = _by_hand(_model(tiny_model_dir, _config(strategy)))
    assert fgm.keys() == none.keys() == expected.keys()
    for name, grad in fgm.items():
        torch.testing.assert_close(grad, expected[name], atol=1e-6, rtol=1e-5)
    assert not all(torch.allclose(fgm[n], none[n], atol=1e-6) for n in fgm)


def _forwards(model: Any, cfg: TrainConfig, tmp_path: Path) -> tuple[int, dict[str, Any]]:
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    grads = _step(model, cfg, tmp_path)
    handle.remove()
    return len(calls), grads


def test_pgd_takes_k_projected_steps_and_restores_the_embeddings(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    pgd = _config(method="pgd", epsilon=EPSILON, steps=3, alpha=0.3)
    model = _model(tiny_model_dir, pgd)
    before = model.get_input_embeddings().weight.detach().clone()
    passes, pgd_grads = _forwards(model, pgd, tmp_path)
    assert passes == 3 + 1  # the clean pass, two gradient passes, the final pass
    assert torch.equal(model.get_input_embeddings().weight.detach(), before)
    fgm_passes, fgm_grads = _forwards(
        _model(tiny_model_dir, pgd), _config(method="fgm", epsilon=EPSILON), tmp_path
    )
    assert fgm_passes == 2
    assert not all(torch.allclose(pgd_grads[n], fgm_grads[n], atol=1e-6) for n in pgd_grads)
    # One PGD step of 2 * epsilon projected back onto the epsilon ball is FGM's step.
    one = _config(method="pgd", epsilon=EPSILON, steps=1, alpha=2 * EPSILON)
    projected = _step(_model(tiny_model_dir, one), one, tmp_path)
    for name, grad in projected.items():
        torch.testing.assert_close(grad, fgm_grads[name], atol=1e-6, rtol=1e-5)


def test_none_keeps_the_plain_trainer() -> None:
    assert trainer_class(_config()) is ScheduledTrainer
    assert trainer_class(_config(method="pgd")) is AdversarialTrainer


@pytest.mark.parametrize(
    ("adversarial", "bad"),
    [
        ({"method": "fgsm"}, r"train\.adversarial\.method"),
        ({"method": "fgm", "epsilon": 0}, r"train\.adversarial\.epsilon"),
        ({"method": "pgd", "steps": 0}, r"train\.adversarial\.steps"),
        ({"method": "pgd", "radius": 1.0}, r"train\.adversarial\.radius"),
    ],
)
def test_bad_adversarial_keys_are_config_errors(adversarial: dict[str, Any], bad: str) -> None:
    with pytest.raises(ConfigError, match=bad):
        validate_params({"train": {"adversarial": adversarial}}, "params.yaml")


def test_fgm_trains_through_the_trainer_to_other_weights_than_none(
    trained: Trained, tmp_path: Path
) -> None:
    base = trained.params.train.model_dump() | {"epochs": 1.0}
    weights, steps = {}, {}
    for method in ("none", "fgm"):
        cfg = TrainConfig.model_validate(base | {"adversarial": {"method": method}})
        out = tmp_path / method
        train(
            TEXT,
            trained.params.model,
            cfg,
            trained.paths.data_prepared,
            out / "candidate",
            out / "checkpoints",
            trained.paths.data_cache,
        )
        summary = json.loads((out / "candidate" / "training_summary.json").read_text())
        steps[method] = summary["global_steps"]
        weights[method] = load_file(str(out / "candidate" / "model.safetensors"))
    assert steps["fgm"] == steps["none"]  # the same optimiser steps, other updates
    key = "bert.embeddings.word_embeddings.weight"
    assert not (weights["none"][key] == weights["fgm"][key]).all()
