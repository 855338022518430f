"""Joint intent classification and slot filling: one encoder, an intent and an IOB2 tag per word.

Sentences are JSONL token/tag lists with an "intent" (iob2.INTENT_KEY); the split unit
is the sentence and a dataset's own test split is kept (token_steps). One label list
holds both: the intents as "intent:<name>", then the tags (tuneops.runtime.joint_labels).
A multi-intent utterance is one class of its own (ATIS "atis_flight;atis_airfare"), as
the published joint results score it; the runtime also returns it split.

The model is joint_model.JointIntentSlotModel (loss: intent CE + train.slot_loss_weight
x tag CE). Metrics: intent accuracy, slot entity F1 (seqeval, exact span and type) and
sentence accuracy (both right). The gate's primary metric is slot F1 and its accuracy
intent accuracy; both are judged (`judged_metrics`): floors on either, and the paired
bootstrap, against baselines and the champion, on each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.tasks.base import Evaluation, SplitFrame, ValidationInput
from pipeline.tasks.token_classification import TokenClassification
from pipeline.tasks.token_classification import row_counts as slot_counts
from tuneops.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.tasks.intent_slot_steps import Joint
    from tuneops.config import (
        DataConfig,
        EvaluateConfig,
        ModelConfig,
        Params,
        PrepareConfig,
        TrainConfig,
        ValidateConfig,
    )

# What it shares with token classification (tokenising, the collator, the key checks).
_TOKENS = TokenClassification()


class IntentAndSlots:
    name = "intent-and-slots"
    row_unit = "sentences"
    raw_suffixes: tuple[str, ...] = (".jsonl",)  # CoNLL files carry no intent
    target_column = "tags"
    primary_metric = "test_slot_f1"
    primary_metric_label = "slot F1"
    accuracy_metric = "test_intent_accuracy"
    # The metrics the gate bootstraps, each on its own (the primary first).
    judged_metrics: tuple[str, ...] = ("test_slot_f1", "test_intent_accuracy")
    test_metrics: tuple[str, ...] = (
        "test_intent_accuracy",
        "test_slot_f1",
        "test_slot_precision",
        "test_slot_recall",
        "test_slot_macro_f1",
        "test_token_accuracy",
        "test_sentence_accuracy",
    )
    validation_metrics: tuple[str, ...] = (
        "sentence_accuracy",
        "intent_accuracy",
        "slot_f1",
        "slot_precision",
        "slot_recall",
        "token_accuracy",
        "loss",
    )
    baselines: tuple[str, ...] = ("most_frequent", "tfidf", "before_finetuning")
    reproduce_metrics: tuple[str, ...] = (
        "test_intent_accuracy",
        "test_slot_f1",
        "test_sentence_accuracy",
        "test_token_accuracy",
        "best_validation_sentence_accuracy",
    )
    peft_task_type = "TOKEN_CLS"  # peft's wrapper passes `labels` through unchanged
    logits_axes: tuple[str, ...] = ("batch", "sequence")  # the tag logits
    # The ONNX graph's outputs and their dynamic axes (tuneops.runtime.JOINT_OUTPUTS).
    onnx_outputs: dict[str, tuple[str, ...]] = {  # noqa: RUF012 (read only)
        "intent_logits": ("batch",),
        "tag_logits": ("batch", "sequence"),
    }
    cross_batch_conflicts = False
    drift_checked = False
    behaviour_module: str | None = None
    example_inputs: tuple[str, ...] = (
        "show me flights from boston to denver",
        "what is the cheapest fare to dallas",
    )
    modules: tuple[str, ...] = (
        "pipeline.tasks.intent_and_slots",
        "pipeline.tasks.intent_slot_steps",
        "pipeline.tasks.joint_model",
        "pipeline.tasks.token_classification",
        "pipeline.tasks.token_steps",
        "pipeline.tasks.iob2",
    )

    def check(self, params: Params) -> None:
        """The token task's refusals (long_text, max_length auto, class weights, prompt
        tuning, max_ece), in this task's name."""
        from pipeline.tasks.base import check_keys

        check_keys(self, params)
        probe = params.model_copy(
            update={
                "train": params.train.model_copy(update={"metric_for_best_model": "entity_f1"}),
                "gate": params.gate.model_copy(update={"baselines": [], "floors": {}}),
            }
        )
        try:
            _TOKENS.check(probe)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace(_TOKENS.name, self.name)) from None

    def validation_input(
        self, data: DataConfig, cfg: ValidateConfig, dataset_dir: Path
    ) -> ValidationInput:
        from pipeline.tasks import intent_slot_steps

        return intent_slot_steps.validation_input(data, cfg, dataset_dir)

    def split(
        self,
        data: DataConfig,
        cfg: PrepareConfig,
        labels: tuple[str, ...],
        dataset_dir: Path,
        seed: int,
    ) -> SplitFrame:
        from pipeline.tasks import intent_slot_steps

        return intent_slot_steps.split(data, cfg, labels, dataset_dir)

    def load_model(
        self,
        path: str | Path,
        labels: tuple[str, ...] | None = None,
        num_hidden_layers: int | None = None,
        attn_implementation: str | None = None,
    ) -> Any:
        """With `labels`: the base encoder (any AutoModel, safetensors only) under two new
        heads; without: a saved joint model (its config.json's labels)."""
        from pipeline.tasks.joint_model import load_joint_model

        return load_joint_model(path, labels, num_hidden_layers, attn_implementation)

    def tokenise(self, tokenizer: Any, cfg: TrainConfig) -> Callable[..., dict[str, Any]]:
        """The token task's tokenising, then the intent id into each row's position 0."""
        from pipeline.tasks.joint_model import encoded_labels

        tokens = _TOKENS.tokenise(tokenizer, cfg)

        def tokenise(batch: dict[str, list[Any]]) -> dict[str, Any]:
            encoded = tokens(batch)
            encoded["labels"] = [
                encoded_labels(int(i), row)
                for i, row in zip(batch["intent_id"], encoded["labels"], strict=True)
            ]
            return encoded

        return tokenise

    def collator(self, tokenizer: Any) -> Any:
        return _TOKENS.collator(tokenizer)

    def resolve(
        self, cfg: TrainConfig, tokenizer: Any, prepared_dir: Path, model_config: Any
    ) -> TrainConfig:
        """train.slot_loss_weight into the model's config (its forward reads it there, and
        the candidate's config.json records it)."""
        model_config.slot_loss_weight = float(cfg.slot_loss_weight)
        return cfg

    def compute_metrics(
        self, labels: tuple[str, ...], validation: Any = None
    ) -> Callable[[Any], dict[str, float]]:
        """Validation sentence/intent accuracy and slot P/R/F1: joint_scores, the test metric."""
        from pipeline.tasks.intent_slot_steps import joint_scores
        from pipeline.tasks.token_classification import word_tags
        from tuneops.runtime import joint_labels

        intents, tags = joint_labels(labels)

        def compute(prediction: Any) -> dict[str, float]:
            (intent_logits, tag_logits), label_ids = prediction
            label_ids = np.asarray(label_ids)
            gold_ids, tag_ids = label_ids[:, 0], label_ids.copy()
            tag_ids[:, 0] = -100
            gold_tags, predicted_tags = word_tags(np.asarray(tag_logits), tag_ids, tags)
            gold = list(zip([intents[i] for i in gold_ids], gold_tags, strict=True))
            guess = [intents[i] for i in np.asarray(intent_logits).argmax(-1)]
            scores = joint_scores(gold, list(zip(guess, predicted_tags, strict=True)))
            return {
                name: scores[f"test_{name}"] for name in self.validation_metrics if name != "loss"
            }

        return compute

    def after_tokenise(self, splits: Any, cfg: TrainConfig) -> tuple[Any, dict[str, Any]]:
        return _TOKENS.after_tokenise(splits, cfg)

    def class_weights(
        self, splits: Any, cfg: TrainConfig, labels: tuple[str, ...]
    ) -> list[float] | None:
        return None  # check() refuses train.class_weights for this task

    def evaluate(
        self,
        cfg: EvaluateConfig,
        base: ModelConfig,
        max_length: int,
        seed: int,
        prepared_dir: Path,
        candidate_dir: Path,
    ) -> Evaluation:
        from pipeline.tasks import intent_slot_steps

        return intent_slot_steps.evaluate(
            self, cfg, base, max_length, seed, prepared_dir, candidate_dir
        )

    def parity_logits(
        self, model: Any, tokenizer: Any, bundle: Any, test: pd.DataFrame, max_length: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Both outputs on real rows: one row per sentence (its intent logits), then one per
        word (its tag logits), in one array per model (_stacked), so export's max |diff|
        and argmax agreement cover both heads."""
        from pipeline.tasks.intent_slot_steps import joint_outputs

        sentences = [list(t) for t in test["tokens"]]
        reference = _stacked(*joint_outputs(model, tokenizer, sentences, max_length, 64))
        return reference, _stacked(*bundle.joint_logits(sentences, batch_size=64))

    def calibrate(self, bundle: Any, prepared_dir: Path) -> None:
        return None  # no calibrated score yet (issue 19 is for classifiers)

    def describe(self, labels: list[str]) -> str:
        from tuneops.runtime import joint_labels

        intents, tags = joint_labels(labels)
        return (
            f"Joint intent classifier ({len(intents)} intents) and slot tagger "
            f"({len(tags)} IOB2 tags) on one encoder."
        )

    def test_split(self, prepared_dir: Path, labels: list[str]) -> JointTestSplit:
        test = pd.read_parquet(prepared_dir / "test.parquet")
        gold = list(zip(test["intent"].astype(str), [list(t) for t in test["tags"]], strict=True))
        return JointTestSplit([list(t) for t in test["tokens"]], gold, labels)

    def dataset_frame(self, split: pd.DataFrame) -> pd.DataFrame:
        """The intent and the space-joined tags, one row per sentence."""
        frame = split[["text", "intent", "tags"]].copy()
        frame["tags"] = frame["tags"].map(" ".join)
        return frame


@dataclass
class JointTestSplit:
    """The current test split of intent-and-slots: sentences and gold (intent, tags)."""

    sentences: list[list[str]]
    gold: list[Joint]
    labels: list[str]

    @property
    def texts(self) -> list[str]:
        return [" ".join(s) for s in self.sentences]

    def rescore(self, bundle: Any) -> list[Joint]:
        intents, tags = bundle.predict_joint(self.sentences, batch_size=64)
        return list(zip(intents, tags, strict=True))

    def report(self, predicted: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        from pipeline.tasks.intent_slot_steps import joint_report, joint_scores

        return joint_scores(self.gold, predicted), joint_report(self.gold, predicted)

    def gate_labels(self, per_class: dict[str, Any]) -> list[str]:
        return [k for k in per_class if not k.endswith(" avg") and not k.startswith("intent ")]

    def row_counts(self, predicted: Any) -> np.ndarray:
        """The primary metric's (slot F1): per sentence, one column of entity counts."""
        return self.metric_counts(predicted)["test_slot_f1"]

    def metric_counts(self, predicted: Any) -> dict[str, np.ndarray]:
        """Per judged metric, the bootstrap's per-row counts: slot F1 as the token task's;
        intent accuracy as one column of (right, 1, 1), whose F1 is the accuracy."""
        right = np.array([g[0] == p[0] for g, p in zip(self.gold, predicted, strict=True)])
        intent = np.stack([right, np.ones_like(right), np.ones_like(right)], -1)
        return {
            "test_slot_f1": slot_counts([g[1] for g in self.gold], [p[1] for p in predicted]),
            "test_intent_accuracy": intent.astype(np.int64).reshape(len(right), 1, 3),
        }

    @property
    def strata(self) -> None:
        """None: a sentence holds entities of several types, so it has no one class."""
        return None

    def recorded(self, column: list[Any]) -> list[Joint]:
        from pipeline.tasks.intent_slot_steps import from_column

        return from_column(column)

    def agreement(self, predicted: Any, other: Any) -> float:
        """The lower of the two heads' agreement: per sentence intent, per word tag."""
        if not predicted:
            return 1.0
        intents = np.mean([a[0] == b[0] for a, b in zip(predicted, other, strict=True)])
        pairs = zip(predicted, other, strict=True)
        words = [x == y for a, b in pairs for x, y in zip(a[1], b[1], strict=True)]
        return float(min(intents, np.mean(words) if words else 1.0))

    def subset(self, keep: list[bool]) -> JointTestSplit:
        return JointTestSplit(
            self.take(self.sentences, keep), self.take(self.gold, keep), self.labels
        )

    def take(self, predicted: Any, keep: list[bool]) -> list[Any]:
        return [row for row, kept in zip(predicted, keep, strict=True) if kept]


def _stacked(intent_logits: np.ndarray, rows: list[np.ndarray]) -> np.ndarray:
    """The intent rows, then the words' tag rows (NaN rows, words cut off, left out), in
    one array as wide as the wider head: each row padded with PAD, the same in both models'
    arrays (a |difference| of 0) and below any logit (it never wins an argmax)."""
    words = np.concatenate(rows) if rows else np.zeros((0, 1), np.float32)
    words = words[~np.isnan(words).any(axis=1)]
    width = max(intent_logits.shape[1] if intent_logits.ndim == 2 else 1, words.shape[1])

    def pad(a: np.ndarray) -> np.ndarray:
        return np.pad(a.astype(np.float32), ((0, 0), (0, width - a.shape[1])), constant_values=PAD)

    return np.concatenate([pad(intent_logits), pad(words)])


PAD = -1.0e4
