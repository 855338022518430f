"""Frozen-encoder features for the "before fine-tuning" baseline (a linear probe).

Two features per text from one forward pass of the base model, over the window the
candidate reads (train.max_length, train.long_text; a chunked text's features are the
mean over its windows):
- `pooler`: what the classification head reads, BERT's tanh pooler over [CLS] (a head that
  takes the whole sequence, e.g. RoBERTa's, reads its first token);
- `mean_pooled`: the attention-masked mean of the last hidden states, the pooling that
  sentence-embedding checkpoints such as all-MiniLM-L6-v2 were trained with.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline.training.modeling import read_windows
from tuneops.runtime import Window

FEATURES = ("pooler", "mean_pooled")


def encoder_features(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    window: Window | int,
    batch_size: int,
) -> dict[str, np.ndarray]:
    """{"pooler": [n, hidden], "mean_pooled": [n, hidden]} in input order. `window` reads
    each text as the candidate does (encode_window); a chunked text's features are the mean
    over its windows' (document_logits), as its logits are."""
    captured: list[torch.Tensor] = []
    head = model.get_submodule("classifier")
    hook = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))

    def read(batch: Any) -> dict[str, torch.Tensor]:
        last = model(**batch, output_hidden_states=True).hidden_states[-1]
        mask = batch["attention_mask"].unsqueeze(-1).to(last.dtype)
        head_input = captured.pop()
        return {
            "pooler": head_input[:, 0] if head_input.dim() == 3 else head_input,
            "mean_pooled": (last * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0),
        }

    try:
        width = model.config.hidden_size
        found, _ = read_windows(
            model, tokenizer, texts, window, batch_size, read, {name: width for name in FEATURES}
        )
    finally:
        hook.remove()
    return found
