"""The joint intent + slot model: one encoder, an intent head and a tag head, one loss.

Written by hand because transformers has no Auto class with two heads (a sequence head
and a token head on one encoder), and peft, the Trainer and save_pretrained need a
PreTrainedModel. It is a thin wrapper: the encoder is any AutoModel; the intent head
reads the encoder's first ([CLS]) hidden state, the tag head every position (as BERT's
own sequence and token classifiers do, each behind dropout).

Labels travel as ONE tensor, so the Trainer's label handling, the token collator's
padding and peft's TOKEN_CLS wrapper work unchanged: `labels[:, 0]` (the [CLS] position,
which carries no tag: iob2.align_labels gives it -100) holds the intent id, the other
positions the tag ids (-100 where ignored). The loss is

    cross_entropy(intent) + slot_loss_weight * cross_entropy(tags over labelled positions)

with `slot_loss_weight` (train.slot_loss_weight) 1.0 by default: the plain sum of the two
mean cross-entropies, as in JointBERT (Chen et al. 2019, "BERT for joint intent
classification and slot filling"), whose ATIS figures the README compares with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from tuneops.errors import ConfigError
from tuneops.runtime import joint_labels


@dataclass
class JointOutput(ModelOutput):
    """The Trainer's predictions are (intent_logits, tag_logits), in this order."""

    loss: torch.Tensor | None = None
    intent_logits: torch.Tensor | None = None
    tag_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


def encoded_labels(intent_id: int, tag_labels: list[int]) -> list[int]:
    """One row of `labels`: the intent id at position 0 (the [CLS] token), the tags after."""
    if not tag_labels or tag_labels[0] != -100:
        raise ValueError(
            "the tokenizer puts a word at position 0; the joint model needs a leading "
            "special token ([CLS], <s>) to carry the intent label"
        )
    return [intent_id, *tag_labels[1:]]


def split_labels(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(intent ids [batch], tag labels [batch, sequence] with position 0 ignored)."""
    tags = labels.clone()
    tags[:, 0] = -100
    return labels[:, 0], tags


class JointIntentSlotModel(PreTrainedModel):
    base_model_prefix = "encoder"  # strategies.is_head: the heads are outside it
    config_class = PretrainedConfig
    # The loss is a mean over this batch; the Trainer must scale it for accumulation.
    accepts_loss_kwargs = False
    # The attention is the encoder's own: the wrapper allows what BERT-class encoders do.
    _supports_sdpa = True
    _supports_attention_backend = True

    def __init__(self, config: PretrainedConfig, encoder: PreTrainedModel | None = None):
        super().__init__(config)
        self.encoder = encoder if encoder is not None else AutoModel.from_config(config)
        id2label: dict[Any, str] = dict(config.id2label or {})
        intents, tags = joint_labels([id2label[i] for i in range(len(id2label))])
        self.num_intents, self.num_tags = len(intents), len(tags)
        dropout: Any = getattr(config, "classifier_dropout", None)
        if dropout is None:
            dropout = getattr(config, "hidden_dropout_prob", 0.1)
        self.dropout = nn.Dropout(float(dropout))
        self.intent_head = nn.Linear(config.hidden_size, self.num_intents)
        self.tag_head = nn.Linear(config.hidden_size, self.num_tags)
        if encoder is None:
            self.post_init()
        else:  # only the new heads need initialising
            for head in (self.intent_head, self.tag_head):
                head.weight.data.normal_(0.0, getattr(config, "initializer_range", 0.02))
                head.bias.data.zero_()

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs: Any,
    ) -> JointOutput:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        if kwargs.get("inputs_embeds") is not None:
            inputs = {"inputs_embeds": kwargs["inputs_embeds"], "attention_mask": attention_mask}
        out = self.encoder(**inputs, output_hidden_states=output_hidden_states, return_dict=True)
        sequence = self.dropout(out.last_hidden_state)
        intent_logits = self.intent_head(sequence[:, 0])
        tag_logits = self.tag_head(sequence)
        loss = None
        if labels is not None:
            intent_ids, tag_labels = split_labels(labels)
            intent_loss = nn.functional.cross_entropy(intent_logits, intent_ids)
            tag_loss = nn.functional.cross_entropy(
                tag_logits.reshape(-1, self.num_tags), tag_labels.reshape(-1), ignore_index=-100
            )
            # read here: the task's resolve hook sets it after the model is built
            weight = float(getattr(self.config, "slot_loss_weight", 1.0))
            loss = intent_loss + weight * tag_loss
        return JointOutput(
            loss=loss,
            intent_logits=intent_logits,
            tag_logits=tag_logits,
            hidden_states=out.hidden_states if output_hidden_states else None,
        )


def load_joint_model(
    path: str | Path,
    labels: tuple[str, ...] | None = None,
    num_hidden_layers: int | None = None,
    attn_implementation: str | None = None,
) -> JointIntentSlotModel:
    """A joint model from safetensors only (never pickles, never remote code).

    With `labels` (the base model case): the folder's encoder (AutoModel) under two new
    heads sized by `labels` (joint_labels); every encoder weight must be in the checkpoint
    (but the pooler, which the heads do not read). Without: a saved joint model."""
    from transformers import AutoConfig

    from pipeline.training.modeling import check_weights

    if Path(path).is_dir():
        check_weights(Path(path))
    kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": False}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    overrides: dict[str, Any] = {}
    if num_hidden_layers is not None:
        overrides["num_hidden_layers"] = num_hidden_layers
    if labels is not None:
        intents, tags = joint_labels(labels)
        if not intents or not tags:
            raise ConfigError(
                f"intent-and-slots needs intents ('intent:<name>') and tags in its labels; "
                f"found {len(intents)} intents and {len(tags)} tags"
            )
        overrides |= {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
        }
    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=False, **overrides)
        info: dict[str, Any]
        if labels is None:
            model, info = JointIntentSlotModel.from_pretrained(  # type: ignore[misc]
                str(path), config=config, output_loading_info=True, **kwargs
            )
            missing = sorted(info.get("missing_keys") or ())
        else:
            encoder, info = AutoModel.from_pretrained(
                str(path), config=config, output_loading_info=True, **kwargs
            )
            missing = [k for k in info.get("missing_keys") or () if not k.startswith("pooler.")]
            model = JointIntentSlotModel(encoder.config, encoder)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load a model from {path}: {exc}") from exc
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise ConfigError(
            f"{path}: {len(missing)} weights are missing from the checkpoint and would be "
            f"random ({shown}); use a complete model folder (model.name_or_path)"
        )
    return model
