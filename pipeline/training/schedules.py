"""Learning-rate schedules and layer-wise LR decay beyond the Trainer's built-ins.

`linear`, `cosine`, `constant` and `constant_with_warmup` are the Trainer's own. Added here:
- `exponential`: lr_t = lr_0 * decay_rate ** (t / decay_steps), times a linear warmup
  factor min(1, t / warmup_steps) during warmup;
- layer-wise LR decay: each trainable parameter's lr is lr_0 * decay ** depth, where depth
  counts from the top (head and pooler 0, last encoder layer 1, …, embeddings L + 1).
Both hook into the Trainer through `ScheduledTrainer`'s create_optimizer/create_scheduler.
`ScheduledTrainer` also takes per-class loss weights (train.class_weights): its
compute_loss is then torch's weighted cross-entropy, sum(w_y * nll) / sum(w_y) per batch;
under train.distill it mixes in the teacher's soft targets (pipeline.training.distill).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from transformers import Trainer

from pipeline.training.distill import TEACHER_COLUMN, distillation_loss
from pipeline.training.strategies import encoder_depth
from tuneops.config import TrainConfig


def trainer_scheduler_type(cfg: TrainConfig) -> str:
    """The `lr_scheduler_type` handed to TrainingArguments (ours replace a placeholder)."""
    return "constant" if cfg.lr_scheduler == "exponential" else cfg.lr_scheduler


def exponential_factor(
    decay_rate: float, decay_steps: int, warmup_steps: int = 0
) -> Callable[[int], float]:
    """The LambdaLR multiplier: min(1, t / warmup_steps) * decay_rate ** (t / decay_steps)."""

    def factor(step: int) -> float:
        warmup = min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0
        return float(warmup * decay_rate ** (step / decay_steps))

    return factor


def layerwise_param_groups(
    model: nn.Module,
    learning_rate: float,
    layer_decay: float,
    weight_decay: float,
    decay_names: set[str],
) -> list[dict[str, Any]]:
    """Optimizer param groups with lr = learning_rate * layer_decay ** depth.

    Only trainable parameters are grouped; weight decay applies to `decay_names` only (the
    Trainer's choice: not biases or LayerNorm weights).
    """
    num_layers = int(getattr(model, "config").num_hidden_layers)  # noqa: B009
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        depth = encoder_depth(name, num_layers) or 0
        decays = name in decay_names
        group = groups.setdefault(
            (depth, decays),
            {
                "params": [],
                "lr": learning_rate * layer_decay**depth,
                "weight_decay": weight_decay if decays else 0.0,
                "depth": depth,
            },
        )
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]


def weighted_loss(
    model: nn.Module, inputs: dict[str, Any], class_weights: torch.Tensor | None
) -> tuple[torch.Tensor, Any]:
    """The class-weighted cross-entropy of `inputs`' labels (train.class_weights; None:
    unweighted), and the model's outputs. AdaLoRA's orthogonality penalty, which peft adds
    only to the model's own (unweighted) loss, is kept: the labels go in and the penalty is
    that loss minus the plain cross-entropy. Other models get no labels, so their numbers
    are unchanged."""
    from peft import AdaLoraModel

    adalora = isinstance(getattr(getattr(model, "module", model), "base_model", None), AdaLoraModel)
    labels = inputs["labels"]
    outputs = model(**(inputs if adalora else {k: v for k, v in inputs.items() if k != "labels"}))
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
    flat_logits, flat_labels = logits.view(-1, logits.shape[-1]), labels.view(-1)
    weight = None
    if class_weights is not None:
        weight = class_weights.to(device=logits.device, dtype=logits.dtype)
    loss = nn.functional.cross_entropy(flat_logits, flat_labels, weight=weight)
    if adalora:
        loss = loss + outputs["loss"] - nn.functional.cross_entropy(flat_logits, flat_labels)
    return loss, outputs


class ScheduledTrainer(Trainer):
    """The Trainer with the exponential schedule and layer-wise LR decay of `train_cfg`,
    and, given `class_weights` (one per label), a weighted cross-entropy loss."""

    def __init__(
        self,
        *args: Any,
        train_cfg: TrainConfig,
        class_weights: list[float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.train_cfg = train_cfg
        self.class_weights = None if class_weights is None else torch.tensor(class_weights)
        self.distill = train_cfg.distill if train_cfg.distill.teacher else None
        if self.class_weights is not None or self.distill is not None:
            # a per-batch mean: the Trainer divides it by the accumulation steps
            self.loss_is_scaled_for_ga = False

    def _set_signature_columns_if_needed(self) -> None:
        # The Trainer drops every dataset column the model's forward does not take; the
        # teacher's logits (train.distill) are the loss's, not the model's, and must stay.
        super()._set_signature_columns_if_needed()
        columns = self._signature_columns
        if self.distill is not None and columns is not None and TEACHER_COLUMN not in columns:
            columns.append(TEACHER_COLUMN)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        teacher = inputs.get(TEACHER_COLUMN)
        if teacher is not None:  # a train batch under train.distill (validation has none)
            inputs = {k: v for k, v in inputs.items() if k != TEACHER_COLUMN}
        if teacher is None and (self.class_weights is None or "labels" not in inputs):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = weighted_loss(model, inputs, self.class_weights)
        if teacher is not None and self.distill is not None:
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
            soft = distillation_loss(logits, teacher, self.distill.temperature)
            loss = (1 - self.distill.alpha) * loss + self.distill.alpha * soft
        return (loss, outputs) if return_outputs else loss

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.train_cfg.layerwise_lr_decay == 1.0 or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        assert opt_model is not None  # the Trainer was built with a model
        groups = layerwise_param_groups(
            opt_model,
            self.args.learning_rate,
            self.train_cfg.layerwise_lr_decay,
            self.args.weight_decay,
            set(self.get_decay_parameter_names(opt_model)),
        )
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        cfg = self.train_cfg
        if cfg.lr_scheduler != "exponential" or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        factor = exponential_factor(
            cfg.lr_decay_rate,
            cfg.lr_decay_steps,
            self.args.get_warmup_steps(num_training_steps),
        )
        target = optimizer or self.optimizer
        assert target is not None  # create_optimizer ran first
        self.lr_scheduler = LambdaLR(target, factor)
        self._created_lr_scheduler = True
        return self.lr_scheduler
