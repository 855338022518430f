"""Fine-tuning strategies: which parameters of a loaded classifier train.

- `full`: every parameter (the default; the model is returned untouched).
- `freeze`: the head, plus the top `freeze.trainable_layers` encoder layers (the pooler
  trains with them) and optionally the embeddings.
- `lora`: peft low-rank adapters on `lora.target_modules`; the head trains in full.
  Before the candidate is saved the adapter is merged into the base weights
  (`merge_and_unload`), so models/candidate/ and the ONNX bundle look like a full model's.
- `bitfit`: every bias term, plus the head.

"The head" is what the task adds on top of the base model: the parameters outside
`model.base_model_prefix` (BERT's `classifier`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedModel

from tuneops.config import TrainConfig
from tuneops.errors import ConfigError

_LAYER = re.compile(r"\.layer\.(\d+)\.")


@dataclass(frozen=True)
class ParameterCounts:
    trainable: int
    total: int

    @property
    def trainable_fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0


def count_parameters(model: nn.Module) -> ParameterCounts:
    """Trainable and total parameters of the model as it trains (peft wrapper included)."""
    params = list(model.parameters())
    return ParameterCounts(
        trainable=sum(p.numel() for p in params if p.requires_grad),
        total=sum(p.numel() for p in params),
    )


def apply_strategy(
    model: PreTrainedModel, cfg: TrainConfig, peft_task_type: str = "SEQ_CLS"
) -> nn.Module:
    """The model to train under `cfg.strategy` (a peft model for `lora`, else `model`).

    `peft_task_type`: the task's peft.TaskType name (SEQ_CLS, TOKEN_CLS, ...)."""
    if cfg.strategy == "full":
        return model
    if cfg.strategy == "lora":
        return _lora(model, cfg, peft_task_type)
    for name, param in model.named_parameters():
        param.requires_grad = is_head(model, name) or _trains(model, name, cfg)
    return model


def is_head(model: PreTrainedModel, name: str) -> bool:
    """A parameter of the task head: outside the base model (e.g. `classifier.weight`)."""
    return not name.startswith(f"{model.base_model_prefix}.")


def encoder_depth(name: str, num_layers: int) -> int | None:
    """Depth from the top of a base-model parameter: 0 for the pooler, 1 for the last
    encoder layer, num_layers for the first, num_layers + 1 for the embeddings."""
    if ".pooler." in name:
        return 0
    found = _LAYER.search(name)
    if found:
        return num_layers - int(found.group(1))
    if ".embeddings." in name:
        return num_layers + 1
    return None


def _trains(model: PreTrainedModel, name: str, cfg: TrainConfig) -> bool:
    if cfg.strategy == "bitfit":
        return name.endswith(".bias")
    depth = encoder_depth(name, int(model.config.num_hidden_layers))
    if depth is None:
        return False
    if depth == int(model.config.num_hidden_layers) + 1:
        return cfg.freeze.train_embeddings
    top = cfg.freeze.trainable_layers
    return top > 0 and depth <= top


def _lora(model: PreTrainedModel, cfg: TrainConfig, peft_task_type: str) -> nn.Module:
    from peft import LoraConfig, TaskType, get_peft_model

    head = sorted(
        {name.split(".")[0] for name, _ in model.named_parameters() if is_head(model, name)}
    )
    lora = LoraConfig(
        task_type=TaskType[peft_task_type],
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        modules_to_save=head,
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:  # e.g. a target module that the model does not have
        raise ConfigError(f"train.lora: {exc}") from exc


def is_adapter_model(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def save_adapter(model: Any, folder: Path) -> None:
    """The peft adapter alone (adapter_config.json + adapter_model.safetensors)."""
    model.save_pretrained(str(folder), safe_serialization=True)


def merged(model: Any) -> PreTrainedModel:
    """A plain transformers model: the LoRA adapter merged into the base weights."""
    if is_adapter_model(model):
        plain: PreTrainedModel = model.merge_and_unload()
        return plain
    return model
