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

from pipeline.training.modeling import encode_window
from tuneops.runtime import Window, document_logits

FEATURES = ("pooler", "mean_pooled")


@torch.inference_mode()
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
    model.eval()
    device = next(model.parameters()).device
    captured: list[torch.Tensor] = []
    head = model.get_submodule("classifier")
    hook = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    windows = encode_window(tokenizer, texts, window)
    rows = windows.inputs["input_ids"]
    order = np.argsort([len(ids) for ids in rows], kind="stable")  # less padding per batch
    found: dict[str, list[np.ndarray]] = {name: [] for name in FEATURES}
    try:
        for start in range(0, len(order), batch_size):
            picked = order[start : start + batch_size]
            part = {name: [values[i] for i in picked] for name, values in windows.inputs.items()}
            batch = tokenizer.pad(part, return_tensors="pt").to(device)
            last = model(**batch, output_hidden_states=True).hidden_states[-1]
            mask = batch["attention_mask"].unsqueeze(-1).to(last.dtype)
            mean = (last * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            head_input = captured.pop()
            pooled = head_input[:, 0] if head_input.dim() == 3 else head_input
            found["pooler"].append(pooled.float().cpu().numpy())
            found["mean_pooled"].append(mean.float().cpu().numpy())
    finally:
        hook.remove()
    width = model.config.hidden_size
    result = {}
    for name, parts in found.items():
        stacked = np.concatenate(parts) if parts else np.zeros((0, width), dtype=np.float32)
        per_window = np.empty_like(stacked)
        per_window[order] = stacked
        result[name] = document_logits(per_window, windows.documents, len(texts))
    return result
