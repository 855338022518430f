"""Adversarial training on the word embeddings (train.adversarial): FGM and PGD.

Both perturb the rows of the word-embedding matrix that the batch's tokens use, in the
direction that raises the loss, and add the gradients of the loss at the perturbed
embeddings to the step's own:
- `fgm` (Miyato et al. 2017, "Adversarial training methods for semi-supervised text
  classification"): after the step's forward/backward, the rows move by
  r = epsilon * g / ||g|| (g: the loss gradient w.r.t. those rows, ||.|| over all of
  them), one more forward/backward at W + r adds its gradients: 2x a step's compute.
- `pgd` (Madry et al. 2018): `steps` ascent steps r <- proj(r + alpha * g / ||g||), each
  projected back onto the ball ||r|| <= epsilon, g re-computed at each new point (gradient
  of the embeddings only, the parameters' gradients untouched); the last point's
  gradients are added: (steps + 1)x a step's compute.
The optimiser step thus follows grad L(W) + grad L(W + r); the embeddings are restored
(copied back, so exactly) before it. The logged train loss is the clean one, L(W).

Written here, not taken from a library: no maintained package ships FGM/PGD as a
transformers Trainer hook (the usual code is a recipe copied between repositories). The
gradient g is read from the embedding layer's output (summed per token id, which is the
weight's own gradient), so it works whether or not the embeddings train (lora, freeze,
prompt_tuning, ...).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipeline.training.schedules import ScheduledTrainer
from tuneops.config import TrainConfig


def trainer_class(cfg: TrainConfig) -> type[ScheduledTrainer]:
    """AdversarialTrainer under train.adversarial fgm/pgd; ScheduledTrainer for none."""
    return ScheduledTrainer if cfg.adversarial.method == "none" else AdversarialTrainer


class _Capture:
    """A forward hook on the word-embedding layer: each call's token ids and output, the
    output made to keep its gradient (a leaf that requires it when the layer is frozen)."""

    def __init__(self, layer: nn.Module) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._handle = layer.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        if not torch.is_grad_enabled():
            return
        if output.requires_grad:
            output.retain_grad()
        else:
            output.requires_grad_(True)
        self.calls.append((args[0], output))

    def __enter__(self) -> _Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()

    def outputs(self) -> list[torch.Tensor]:
        return [output for _, output in self.calls]

    def ids(self) -> torch.Tensor:
        return torch.cat([ids.reshape(-1) for ids, _ in self.calls])


def _word_embeddings(model: Any) -> nn.Embedding:
    """The model's word-embedding layer (a peft model's: its base model's)."""
    layer: nn.Embedding = model.get_input_embeddings()
    return layer


def _per_row(grads: list[torch.Tensor], inverse: torch.Tensor, rows: int) -> torch.Tensor:
    """The embedding outputs' gradients summed per embedding row (the weight gradient)."""
    flat = torch.cat([g.reshape(-1, g.shape[-1]) for g in grads])
    total = torch.zeros(rows, flat.shape[-1], dtype=torch.float32, device=flat.device)
    return total.index_add_(0, inverse, flat.float())


def _unit(grad: torch.Tensor) -> torch.Tensor | None:
    norm = torch.linalg.vector_norm(grad)
    if not torch.isfinite(norm) or norm == 0:  # an fp16 overflow step, or no signal
        return None
    return grad / norm


def _project(delta: torch.Tensor, epsilon: float) -> torch.Tensor:
    norm = torch.linalg.vector_norm(delta)
    return delta * (epsilon / norm) if norm > epsilon else delta


class AdversarialTrainer(ScheduledTrainer):
    """ScheduledTrainer whose training_step adds FGM or PGD (train.adversarial)."""

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        layer = _word_embeddings(self.model)
        with _Capture(layer) as clean:
            loss = super().training_step(model, dict(inputs), num_items_in_batch)
        grads = [out.grad for out in clean.outputs() if out.grad is not None]
        if not grads or len(grads) != len(clean.calls):  # no gradient reached the embeddings
            return loss
        rows, inverse = torch.unique(clean.ids(), return_inverse=True)
        grad = _per_row(grads, inverse, len(rows))
        weight = layer.weight
        original = weight.detach()[rows].clone()
        try:
            delta = self._perturbation(layer, rows, inverse, grad, original, inputs)
            if delta is not None:
                with torch.no_grad():
                    weight[rows] = original + delta.to(original.dtype)
                super().training_step(model, dict(inputs), num_items_in_batch)
        finally:
            with torch.no_grad():
                weight[rows] = original
        return loss

    def _perturbation(
        self,
        layer: nn.Embedding,
        rows: torch.Tensor,
        inverse: torch.Tensor,
        grad: torch.Tensor,
        original: torch.Tensor,
        inputs: dict[str, Any],
    ) -> torch.Tensor | None:
        """r for the batch's embedding rows: FGM's one step, or PGD's projected steps."""
        adv = self.train_cfg.adversarial
        direction = _unit(grad)
        if direction is None:
            return None
        if adv.method == "fgm":
            return adv.epsilon * direction
        delta = torch.zeros_like(direction)
        for step in range(adv.steps):
            delta = _project(delta + adv.alpha * direction, adv.epsilon)
            if step == adv.steps - 1:
                break
            with torch.no_grad():
                layer.weight[rows] = original + delta.to(original.dtype)
            found = _unit(self._embedding_gradient(layer, inverse, len(rows), inputs))
            if found is None:
                break
            direction = found
        return delta

    def _embedding_gradient(
        self, layer: nn.Embedding, inverse: torch.Tensor, rows: int, inputs: dict[str, Any]
    ) -> torch.Tensor:
        """The loss gradient w.r.t. the batch's embedding rows at the current embeddings,
        leaving the parameters' gradients as they are (torch.autograd.grad). On the
        unwrapped model: a data-parallel wrapper expects a backward after each forward."""
        assert self.model is not None
        with _Capture(layer) as seen:
            with self.compute_loss_context_manager():
                loss = self.compute_loss(self.model, self._prepare_inputs(dict(inputs)))
            grads = torch.autograd.grad(loss, seen.outputs())
        return _per_row(list(grads), inverse, rows)
