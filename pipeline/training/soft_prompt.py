"""A prompt-tuned classifier as one plain module: the soft prompt applied inside forward.

peft's prompt tuning cannot be merged into the weights (the virtual tokens are extra
positions every layer attends to), so train saves the plain model with its trained head and
the prompt beside it (PROMPT_FILE); `load_classifier` wraps such a folder in SoftPrompted.
SoftPrompted takes input_ids / attention_mask / token_type_ids as the tokenizer (and the
bundle's runtime) gives them and does what peft's PeftModelForSequenceClassification does:
the virtual-token embeddings before the word embeddings, the mask extended by ones, the
token types by zeros. Export traces it, so the ONNX graph holds the prompt and the bundle's
inputs are unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

PROMPT_FILE = "soft_prompt.safetensors"


class SoftPrompted(nn.Module):
    """`model` with the learned `prompt` [virtual tokens, hidden] prepended to its input."""

    def __init__(self, model: Any, prompt: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.prompt = nn.Parameter(prompt, requires_grad=False)

    @property
    def config(self) -> Any:
        return self.model.config

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        words = self.model.get_input_embeddings()(input_ids)
        virtual = self.prompt.shape[0]
        prompt = self.prompt.to(words.dtype).unsqueeze(0).expand(words.shape[0], -1, -1)
        # Built from the inputs' own columns so that the traced graph keeps the batch
        # dynamic (no Python-level shapes in it).
        if attention_mask is not None:
            ones = torch.ones_like(attention_mask[:, :1]).expand(-1, virtual)
            attention_mask = torch.cat((ones, attention_mask), dim=1)
        if token_type_ids is not None:
            zeros = torch.zeros_like(token_type_ids[:, :1]).expand(-1, virtual)
            token_type_ids = torch.cat((zeros, token_type_ids), dim=1)
        return self.model(
            inputs_embeds=torch.cat((prompt, words), dim=1),
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            **kwargs,
        )


def save_prompt(peft_model: Any, folder: Path) -> None:
    """The trained soft prompt of a peft prompt-tuning model, as folder/PROMPT_FILE."""
    prompt = peft_model.get_prompt_embedding_to_save(peft_model.active_adapter)
    save_file({"prompt": prompt.contiguous()}, str(folder / PROMPT_FILE))


def attach_prompt(model: Any, folder: Path) -> Any:
    """`model` wrapped in SoftPrompted when `folder` holds a soft prompt, else `model`."""
    path = folder / PROMPT_FILE
    if not path.exists():
        return model
    prompt = load_file(str(path))["prompt"]
    return SoftPrompted(model, prompt.to(next(model.parameters()).dtype))
