"""Fine-tuning strategies: which parameters of a loaded classifier train.

- `full`: every parameter (the default; the model is returned untouched).
- `freeze`: the head, plus the top `freeze.trainable_layers` encoder layers (the pooler
  trains with them) and optionally the embeddings.
- `lora`: peft low-rank adapters on `lora.target_modules`; the head trains in full.
  Before the candidate is saved the adapter is merged into the base weights
  (`merge_and_unload`), so models/candidate/ and the ONNX bundle look like a full model's.
- `bitfit`: every bias term, plus the head.
- `adalora`: peft AdaLoRA, LoRA in SVD form whose ranks are pruned by importance during
  training (`AdaLoraBudget` calls peft's update_and_allocate after each optimiser step);
  merged like LoRA.
- `ia3`: peft (IA)^3, learned scaling vectors on `ia3.target_modules`; merged like LoRA.
- `prompt_tuning` (text classification): peft prompt tuning, learned virtual-token
  embeddings prepended to every input, the encoder frozen. A soft prompt cannot be merged
  into the weights: the candidate is the plain model (with the trained head) plus
  soft_prompt.safetensors, which `soft_prompt.SoftPrompted` applies on load, so evaluation,
  export (the prompt inside the ONNX graph) and parity see the prompted model.

"The head" is what the task adds on top of the base model: the parameters outside
`model.base_model_prefix` (BERT's `classifier`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedModel, TrainerCallback

from tuneops.config import TrainConfig
from tuneops.errors import ConfigError

_LAYER = re.compile(r"\.layer\.(\d+)\.")
# The strategies that train a peft model: their adapter is saved to candidate/adapter/.
PEFT_STRATEGIES = ("lora", "adalora", "ia3", "prompt_tuning")


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
    model: PreTrainedModel,
    cfg: TrainConfig,
    peft_task_type: str = "SEQ_CLS",
    total_steps: int | None = None,
) -> nn.Module:
    """The model to train under `cfg.strategy` (a peft model for PEFT_STRATEGIES, else
    `model`).

    `peft_task_type`: the task's peft.TaskType name (SEQ_CLS, TOKEN_CLS, ...);
    `total_steps`: the planned optimiser steps (AdaLoRA's schedule needs them)."""
    if cfg.strategy == "full":
        return model
    if cfg.strategy in PEFT_STRATEGIES:
        return _peft(model, cfg, peft_task_type, total_steps)
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


def _peft(
    model: PreTrainedModel, cfg: TrainConfig, peft_task_type: str, total_steps: int | None
) -> nn.Module:
    from peft import TaskType, get_peft_model

    head = sorted(
        {name.split(".")[0] for name, _ in model.named_parameters() if is_head(model, name)}
    )
    key = f"train.{cfg.strategy}"
    task_type = TaskType[peft_task_type]
    try:
        if cfg.strategy == "lora":
            config = _lora_config(cfg, task_type, head)
        elif cfg.strategy == "adalora":
            config = _adalora_config(cfg, task_type, head, total_steps)
        elif cfg.strategy == "ia3":
            config = _ia3_config(cfg, task_type, head)
        else:
            config = _prompt_config(model, cfg, task_type)
        return get_peft_model(model, config)
    except ValueError as exc:  # e.g. a target module that the model does not have
        raise ConfigError(f"{key}: {exc}") from exc


def _lora_config(cfg: TrainConfig, task_type: Any, head: list[str]) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        task_type=task_type,
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        modules_to_save=head,
    )


def _adalora_config(
    cfg: TrainConfig, task_type: Any, head: list[str], total_steps: int | None
) -> Any:
    from peft import AdaLoraConfig

    ada = cfg.adalora
    steps = total_steps or 0
    return AdaLoraConfig(
        task_type=task_type,
        init_r=ada.init_r,
        target_r=ada.target_r,
        lora_alpha=ada.alpha,
        lora_dropout=ada.dropout,
        target_modules=list(ada.target_modules),
        tinit=int(ada.init_warmup * steps),
        tfinal=int(ada.final_warmup * steps),
        deltaT=ada.delta_t,
        beta1=ada.beta1,
        beta2=ada.beta2,
        orth_reg_weight=ada.orth_reg_weight,
        total_step=steps,
        modules_to_save=head,
    )


def _ia3_config(cfg: TrainConfig, task_type: Any, head: list[str]) -> Any:
    from peft import IA3Config

    return IA3Config(
        task_type=task_type,
        target_modules=list(cfg.ia3.target_modules),
        feedforward_modules=list(cfg.ia3.feedforward_modules),
        modules_to_save=head,
    )


def _prompt_config(model: PreTrainedModel, cfg: TrainConfig, task_type: Any) -> Any:
    """peft's prompt tuning; the head trains (peft adds `classifier` to modules_to_save)."""
    from peft import PromptTuningConfig, PromptTuningInit

    prompt = cfg.prompt_tuning
    positions = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    if (
        isinstance(cfg.max_length, int)
        and positions
        and (cfg.max_length + prompt.num_virtual_tokens > positions)
    ):
        raise ConfigError(
            f"train.prompt_tuning.num_virtual_tokens: {prompt.num_virtual_tokens} virtual "
            f"tokens + train.max_length {cfg.max_length} exceed the model's "
            f"{positions} positions (max_position_embeddings); lower either"
        )
    return PromptTuningConfig(
        task_type=task_type,
        num_virtual_tokens=prompt.num_virtual_tokens,
        prompt_tuning_init=PromptTuningInit[prompt.init.upper()],
        prompt_tuning_init_text=prompt.init_text if prompt.init == "text" else None,
        tokenizer_name_or_path=model.name_or_path if prompt.init == "text" else None,
    )


class AdaLoraBudget(TrainerCallback):
    """peft's AdaLoRA re-allocates the ranks after each optimiser step and before the
    gradients are cleared (it scores importance from them): the Trainer's
    on_optimizer_step, with the 0-based step peft's own training loop passes."""

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        kwargs["model"].base_model.update_and_allocate(state.global_step)


def strategy_callbacks(cfg: TrainConfig) -> list[TrainerCallback]:
    """The Trainer callbacks a strategy needs (AdaLoRA's budget allocation)."""
    return [AdaLoraBudget()] if cfg.strategy == "adalora" else []


def is_prompt_model(model: Any) -> bool:
    """A peft prompt-learning model (its prompt cannot be merged into the weights)."""
    return is_adapter_model(model) and bool(model.active_peft_config.is_prompt_learning)


def is_adapter_model(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def save_adapter(model: Any, folder: Path) -> None:
    """The peft adapter alone (adapter_config.json + adapter_model.safetensors)."""
    model.save_pretrained(str(folder), safe_serialization=True)


def merged(model: Any) -> PreTrainedModel:
    """A plain transformers model: a LoRA, AdaLoRA or IA3 adapter merged into the base
    weights; for prompt tuning, the base model with its trained head (the soft prompt is
    saved beside it, soft_prompt.save_prompt)."""
    if is_prompt_model(model):
        return _with_trained_head(model)
    if is_adapter_model(model):
        plain: PreTrainedModel = model.merge_and_unload()
        return plain
    return model


def _with_trained_head(model: Any) -> PreTrainedModel:
    """The prompt-tuned model's base with each trained copy (peft's ModulesToSaveWrapper:
    the head) put in place of the wrapper, as merge_and_unload does for LoRA."""
    from peft.utils import ModulesToSaveWrapper

    base: PreTrainedModel = model.get_base_model()
    for name, module in list(base.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent, _, child = name.rpartition(".")
            trained = module.unload_and_optionally_merge_module(
                merge=False, safe_merge=False, adapter_names=None
            )
            setattr(base.get_submodule(parent), child, trained)
    return base
