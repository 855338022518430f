"""Fine-tuning strategies on the tiny BERT: which parameters train, and the LoRA merge."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from pipeline.train import TrainResult, train
from pipeline.training.modeling import load_classifier, load_tokenizer, predict_logits
from pipeline.training.schedules import weighted_loss
from pipeline.training.strategies import apply_strategy, count_parameters, merged, save_adapter
from tests.conftest import TEXT, Trained
from tuneops.config import TrainConfig
from tuneops.errors import ConfigError

LABELS = ("negative", "positive")
HIDDEN, LAYERS, CLASSES = 32, 2, 2
HEAD = HIDDEN * CLASSES + CLASSES  # classifier.weight + classifier.bias
TEXTS = ["a fine film", "a dull, long film", "what a waste of two hours", "loved it"]


def _numel(model: torch.nn.Module, keep: Any) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if keep(n))


def _config(strategy: str, **extra: Any) -> TrainConfig:
    return TrainConfig.model_validate({"strategy": strategy, **extra})


@pytest.fixture
def tiny(tiny_model_dir: Path) -> Any:
    return load_classifier(tiny_model_dir, LABELS)


def test_full_trains_every_parameter(tiny: Any) -> None:
    counts = count_parameters(apply_strategy(tiny, _config("full")))
    assert counts.trainable == counts.total == _numel(tiny, lambda n: True)


def test_freeze_zero_layers_trains_the_head_only(tiny: Any) -> None:
    counts = count_parameters(apply_strategy(tiny, _config("freeze")))
    assert counts.trainable == HEAD
    assert counts.total == _numel(tiny, lambda n: True)


def test_freeze_top_layer_trains_it_with_the_pooler_and_head(tiny: Any) -> None:
    cfg = _config("freeze", freeze={"trainable_layers": 1})
    counts = count_parameters(apply_strategy(tiny, cfg))
    top = _numel(tiny, lambda n: ".layer.1." in n or ".pooler." in n)
    assert counts.trainable == HEAD + top


def test_freeze_can_train_the_embeddings(tiny: Any) -> None:
    cfg = _config("freeze", freeze={"trainable_layers": 0, "train_embeddings": True})
    counts = count_parameters(apply_strategy(tiny, cfg))
    assert counts.trainable == HEAD + _numel(tiny, lambda n: ".embeddings." in n)


def test_bitfit_trains_every_bias_and_the_head(tiny: Any) -> None:
    biases = _numel(tiny, lambda n: n.endswith(".bias"))  # includes classifier.bias
    counts = count_parameters(apply_strategy(tiny, _config("bitfit")))
    assert counts.trainable == biases + HIDDEN * CLASSES


def test_lora_trains_the_adapters_and_a_copy_of_the_head(tiny: Any) -> None:
    total = _numel(tiny, lambda n: True)
    cfg = _config("lora", lora={"r": 4, "target_modules": ["query", "value"]})
    counts = count_parameters(apply_strategy(tiny, cfg))
    adapters = LAYERS * 2 * 4 * (HIDDEN + HIDDEN)  # layers x modules x r x (in + out)
    assert counts.trainable == adapters + HEAD
    assert counts.total == total + adapters + HEAD  # peft keeps the original head too


def test_lora_with_an_unknown_target_module_is_a_config_error(tiny: Any) -> None:
    with pytest.raises(ConfigError, match=r"train\.lora"):
        apply_strategy(tiny, _config("lora", lora={"target_modules": ["no_such_layer"]}))


def test_unknown_strategy_keys_are_config_errors() -> None:
    with pytest.raises(ValueError, match="rank"):
        _config("lora", lora={"rank": 4})
    with pytest.raises(ValueError, match="strategy"):
        _config("adapters")


def test_merged_lora_model_gives_the_peft_models_logits(tiny: Any, tmp_path: Path) -> None:
    peft_model = apply_strategy(tiny, _config("lora", lora={"r": 4})).eval()
    batch = {"input_ids": torch.tensor([[101, 2023, 2003, 1037, 2204, 102]])}
    with torch.no_grad():
        base_logits = peft_model(**batch).logits  # lora_B starts at zero: the base model
        torch.manual_seed(1)
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.5)
        peft_logits = peft_model(**batch).logits
    assert not torch.allclose(peft_logits, base_logits, atol=1e-3)  # the adapter matters
    save_adapter(peft_model, tmp_path / "adapter")
    plain = merged(peft_model)
    assert type(plain).__name__ == "BertForSequenceClassification"
    plain.save_pretrained(tmp_path / "merged", safe_serialization=True)
    reloaded = load_classifier(tmp_path / "merged").eval()
    with torch.no_grad():
        merged_logits = reloaded(**batch).logits
    torch.testing.assert_close(merged_logits, peft_logits, atol=1e-5, rtol=0)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


# Training with each strategy on the prepared slice of the session's `trained` fixture.
def _train(trained: Trained, tmp_path: Path, cfg: TrainConfig) -> TrainResult:
    return train(
        TEXT,
        trained.params.model,
        cfg,
        trained.paths.data_prepared,
        tmp_path / "candidate",
        tmp_path / "checkpoints",
        trained.paths.data_cache,
    )


def _tiny_train_config(trained: Trained, **changes: Any) -> TrainConfig:
    return TrainConfig.model_validate(
        trained.params.train.model_dump() | {"epochs": 1.0, **changes}
    )


@pytest.mark.parametrize("strategy", ["freeze", "bitfit"])
def test_frozen_parameters_keep_their_base_values(
    trained: Trained, tmp_path: Path, strategy: str
) -> None:
    result = _train(trained, tmp_path, _tiny_train_config(trained, strategy=strategy))
    assert result.strategy == strategy and result.peak_memory_mb > 0
    base = load_file(str(Path(trained.params.model.name_or_path) / "model.safetensors"))
    tuned = load_file(str(tmp_path / "candidate" / "model.safetensors"))
    query = "bert.encoder.layer.1.attention.self.query"
    np.testing.assert_array_equal(
        tuned[f"{query}.weight"], base[f"{query.removeprefix('bert.')}.weight"]
    )
    bias_changed = not np.array_equal(
        tuned[f"{query}.bias"], base[f"{query.removeprefix('bert.')}.bias"]
    )
    assert bias_changed == (strategy == "bitfit")
    summary = json.loads((tmp_path / "candidate" / "training_summary.json").read_text())
    assert summary["strategy"] == strategy
    assert summary["trainable_params"] < summary["total_params"]


def assert_merged_equals_base_plus_adapter(candidate: Path, base_dir: Path) -> None:
    """The merged candidate's logits are the base model's with the saved peft adapter."""
    from peft import PeftModel

    tokenizer = load_tokenizer(candidate)
    plain = predict_logits(load_classifier(candidate), tokenizer, TEXTS, 32, 4)
    with_adapter = PeftModel.from_pretrained(
        load_classifier(base_dir, LABELS), str(candidate / "adapter")
    )
    peft_logits = predict_logits(with_adapter, tokenizer, TEXTS, 32, 4)  # type: ignore[arg-type]
    np.testing.assert_allclose(plain, peft_logits, atol=1e-5)


def test_lora_candidate_is_a_plain_model_equal_to_base_plus_adapter(
    trained: Trained, tmp_path: Path, tiny_model_dir: Path
) -> None:

    cfg = _tiny_train_config(trained, strategy="lora", lora={"r": 4})
    result = _train(trained, tmp_path, cfg)
    candidate = tmp_path / "candidate"
    assert result.adapter_dir == candidate / "adapter"
    assert (candidate / "adapter" / "adapter_config.json").exists()
    assert not any("lora" in key for key in load_file(str(candidate / "model.safetensors")))
    assert_merged_equals_base_plus_adapter(candidate, tiny_model_dir)
    assert result.trainable_params == LAYERS * 2 * 4 * 2 * HIDDEN + HEAD


# --- issue 21: adalora, ia3, prompt_tuning ----------------------------------------------
ADALORA_R = 4
# AdaLoRA's SVD form per adapted layer: lora_A [r, in], lora_E [r, 1], lora_B [out, r].
ADALORA_ADAPTERS = LAYERS * 2 * (ADALORA_R * HIDDEN + ADALORA_R + HIDDEN * ADALORA_R)
# (IA)^3 per layer, peft's BERT defaults: key and value scale their 32 outputs; both
# output.dense layers (attention's, input 32, and the feed-forward's, input 64) their input.
IA3_VECTORS = LAYERS * (HIDDEN + HIDDEN + HIDDEN + 2 * HIDDEN)
VIRTUAL = 5


def _adalora(**extra: Any) -> TrainConfig:
    return _config("adalora", adalora={"init_r": ADALORA_R, "target_r": 2, **extra})


def _prompt(**extra: Any) -> TrainConfig:
    return _config("prompt_tuning", prompt_tuning={"num_virtual_tokens": VIRTUAL, **extra})


def test_adalora_trains_its_svd_adapters_and_a_copy_of_the_head(tiny: Any) -> None:
    counts = count_parameters(apply_strategy(tiny, _adalora(), total_steps=100))
    assert counts.trainable == ADALORA_ADAPTERS + HEAD


def test_adalora_keeps_its_orthogonality_penalty_under_class_weights(
    tiny_model_dir: Path,
) -> None:
    # peft adds AdaLoRA's penalty to the model's own loss, which the class-weighted loss
    # (train.class_weights: balanced, the default) replaces: weights of 1 must give the
    # model's own loss, penalty included.
    torch.manual_seed(0)
    model = apply_strategy(
        load_classifier(tiny_model_dir, LABELS), _adalora(orth_reg_weight=0.5), total_steps=100
    )
    tokenizer = load_tokenizer(tiny_model_dir)
    inputs = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    inputs["labels"] = torch.tensor([1, 0, 0, 1])
    own = model(**inputs)
    plain = torch.nn.functional.cross_entropy(own.logits, inputs["labels"])
    assert float(own.loss - plain) > 1e-3  # the penalty is there to keep
    loss, _ = weighted_loss(model, inputs, torch.ones(CLASSES))
    assert float(loss) == pytest.approx(float(own.loss), abs=1e-6)


def test_ia3_trains_its_scaling_vectors_and_a_copy_of_the_head(tiny: Any) -> None:
    total = _numel(tiny, lambda n: True)
    counts = count_parameters(apply_strategy(tiny, _config("ia3")))
    assert counts.trainable == IA3_VECTORS + HEAD
    assert counts.total == total + IA3_VECTORS + HEAD


def test_prompt_tuning_trains_the_virtual_tokens_and_a_copy_of_the_head(tiny: Any) -> None:
    total = _numel(tiny, lambda n: True)
    counts = count_parameters(apply_strategy(tiny, _prompt()))
    assert counts.trainable == VIRTUAL * HIDDEN + HEAD
    assert counts.total == total + VIRTUAL * HIDDEN + HEAD


def test_prompt_tuning_starts_from_the_init_texts_word_embeddings(
    tiny: Any, tiny_model_dir: Path
) -> None:
    peft_model = apply_strategy(tiny, _prompt(init_text="a b"))
    ids = load_tokenizer(tiny_model_dir)("a b")["input_ids"]  # [CLS] a b [SEP], repeated
    words = tiny.get_input_embeddings().weight[torch.tensor((ids * 2)[:VIRTUAL])]
    torch.testing.assert_close(peft_model.get_prompt_embedding_to_save("default"), words)


@pytest.mark.parametrize(
    ("strategy", "cfg", "bad"),
    [
        ("adalora", {"adalora": {"init_r": 4, "target_r": 8}}, r"target_r must be at most"),
        ("adalora", {"adalora": {"init_warmup": 0.5, "final_warmup": 0.5}}, r"budget phase"),
        ("adalora", {"adalora": {"rank": 4}}, r"adalora\.rank"),
        ("ia3", {"ia3": {"feedforward_modules": ["intermediate.dense"]}}, r"not in target"),
        ("prompt_tuning", {"prompt_tuning": {"init": "vocab"}}, r"prompt_tuning\.init"),
        ("prompt_tuning", {"prompt_tuning": {"num_virtual_tokens": 0}}, r"num_virtual_tokens"),
    ],
)
def test_bad_strategy_keys_are_config_errors_naming_the_key(
    strategy: str, cfg: dict[str, Any], bad: str
) -> None:
    from tuneops.config import validate_params

    with pytest.raises(ConfigError, match=bad):
        validate_params({"train": {"strategy": strategy, **cfg}}, "params.yaml")


def test_adalora_or_ia3_with_an_unknown_target_module_is_a_config_error(tiny: Any) -> None:
    with pytest.raises(ConfigError, match=r"train\.adalora"):
        apply_strategy(tiny, _adalora(target_modules=["no_such_layer"]), total_steps=100)
    with pytest.raises(ConfigError, match=r"train\.ia3"):
        cfg = _config("ia3", ia3={"target_modules": ["nope"], "feedforward_modules": []})
        apply_strategy(tiny, cfg)


def test_prompt_tuning_past_the_models_positions_is_a_config_error(tiny: Any) -> None:
    # The tiny BERT has 128 positions: 120 tokens + 20 virtual tokens do not fit.
    cfg = _config("prompt_tuning", max_length=120)
    with pytest.raises(ConfigError, match=r"train\.prompt_tuning\.num_virtual_tokens: 20"):
        apply_strategy(tiny, cfg)


def test_token_classification_refuses_prompt_tuning_naming_the_key() -> None:
    from pipeline import tasks
    from tuneops.config import validate_params

    params = validate_params(
        {
            "task": "token-classification",
            "train": {
                "strategy": "prompt_tuning",
                "max_length": 64,
                "metric_for_best_model": "entity_f1",
            },
            "gate": {"baselines": ["before_finetuning"], "floors": {"test_entity_f1": 0.5}},
        },
        "params.yaml",
    )
    with pytest.raises(ConfigError, match=r"train\.strategy: prompt_tuning is for text class"):
        tasks.get("token-classification").check(params)


BATCH = {
    "input_ids": torch.tensor([[101, 2023, 2003, 1037, 2204, 102], [101, 2204, 102, 0, 0, 0]]),
    "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]),
    "token_type_ids": torch.zeros(2, 6, dtype=torch.long),
}


def _scramble(model: torch.nn.Module, names: tuple[str, ...], mean: float) -> None:
    """The adapter's start is the base model (B = 0, E = 0, IA3 = 1): move it away."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(part in name for part in names):
                torch.nn.init.normal_(param, mean=mean, std=0.5)


@pytest.mark.parametrize(
    ("cfg", "names", "mean"),
    [(_adalora(), ("lora_E", "lora_B"), 0.0), (_config("ia3"), ("ia3_l",), 1.0)],
    ids=["adalora", "ia3"],
)
def test_merged_adalora_and_ia3_models_give_the_peft_models_logits(
    tiny: Any, tmp_path: Path, cfg: TrainConfig, names: tuple[str, ...], mean: float
) -> None:
    peft_model = apply_strategy(tiny, cfg, total_steps=100).eval()
    _scramble(peft_model, ("modules_to_save",), 0.0)  # logits far from 0: a trained head
    with torch.no_grad():
        base_logits = peft_model(**BATCH).logits
        _scramble(peft_model, names, mean)
        peft_logits = peft_model(**BATCH).logits
    assert not torch.allclose(peft_logits, base_logits, atol=1e-3)  # the adapter matters
    plain = merged(peft_model)
    assert type(plain).__name__ == "BertForSequenceClassification"
    plain.save_pretrained(tmp_path / "merged", safe_serialization=True)
    with torch.no_grad():
        merged_logits = load_classifier(tmp_path / "merged").eval()(**BATCH).logits
    torch.testing.assert_close(merged_logits, peft_logits, atol=1e-5, rtol=0)


def test_prompt_tuned_candidate_applies_the_prompt_as_the_peft_model_does(
    tiny: Any, tmp_path: Path
) -> None:
    from pipeline.training.soft_prompt import PROMPT_FILE, SoftPrompted, save_prompt

    peft_model = apply_strategy(tiny, _prompt()).eval()
    _scramble(peft_model, ("modules_to_save",), 0.0)  # a trained head, unlike the original
    with torch.no_grad():
        peft_logits = peft_model(**BATCH).logits
        unprompted = tiny(**BATCH).logits  # the base model (and original head) alone
    save_prompt(peft_model, tmp_path)
    merged(peft_model).save_pretrained(tmp_path, safe_serialization=True)
    candidate = load_classifier(tmp_path).eval()
    assert isinstance(candidate, SoftPrompted) and (tmp_path / PROMPT_FILE).exists()
    with torch.no_grad():
        candidate_logits = candidate(**BATCH).logits
    torch.testing.assert_close(candidate_logits, peft_logits, atol=1e-5, rtol=0)
    assert not torch.allclose(candidate_logits, unprompted, atol=1e-3)


def test_adalora_candidate_is_merged_and_its_ranks_were_budgeted(
    trained: Trained, tmp_path: Path, tiny_model_dir: Path
) -> None:

    cfg = _tiny_train_config(trained, strategy="adalora", adalora={"init_r": 4, "target_r": 2})
    result = _train(trained, tmp_path, cfg)
    candidate = tmp_path / "candidate"
    assert result.trainable_params == ADALORA_ADAPTERS + HEAD
    assert not any("lora" in key for key in load_file(str(candidate / "model.safetensors")))
    # peft records the ranks it kept once the budget phase ended (AdaLoraBudget's calls).
    adapter = json.loads((candidate / "adapter" / "adapter_config.json").read_text())
    kept = [sum(mask) for mask in adapter["rank_pattern"].values()]
    assert len(kept) == LAYERS * 2 and sum(kept) == LAYERS * 2 * 2  # target_r on average
    assert_merged_equals_base_plus_adapter(candidate, tiny_model_dir)


def test_ia3_candidate_is_a_plain_model_equal_to_base_plus_adapter(
    trained: Trained, tmp_path: Path, tiny_model_dir: Path
) -> None:

    result = _train(trained, tmp_path, _tiny_train_config(trained, strategy="ia3"))
    candidate = tmp_path / "candidate"
    assert result.trainable_params == IA3_VECTORS + HEAD and result.peak_memory_mb > 0
    assert not any("ia3" in key for key in load_file(str(candidate / "model.safetensors")))
    assert_merged_equals_base_plus_adapter(candidate, tiny_model_dir)


def test_prompt_tuned_bundle_holds_the_prompt_in_its_graph_with_the_usual_inputs(
    trained: Trained, tmp_path: Path, tiny_model_dir: Path
) -> None:
    import pandas as pd
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from pipeline.export import export
    from tuneops.runtime import OnnxClassifier

    cfg = _tiny_train_config(
        trained, strategy="prompt_tuning", prompt_tuning={"num_virtual_tokens": VIRTUAL}
    )
    result = _train(trained, tmp_path, cfg)
    candidate = tmp_path / "candidate"
    assert result.trainable_params == VIRTUAL * HIDDEN + HEAD
    tokenizer = load_tokenizer(candidate)
    prompted = predict_logits(load_classifier(candidate), tokenizer, TEXTS, 32, 4)
    with_adapter = PeftModel.from_pretrained(
        load_classifier(tiny_model_dir, LABELS), str(candidate / "adapter")
    )
    peft_logits = predict_logits(with_adapter, tokenizer, TEXTS, 32, 4)  # type: ignore[arg-type]
    np.testing.assert_allclose(prompted, peft_logits, atol=1e-5)

    p = trained.params
    bundle = tmp_path / "bundle"
    exported = export(TEXT, p.export, 32, candidate, trained.paths.data_prepared, bundle)
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["input_names"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert exported.parity_label_agreement == 1.0
    texts = pd.read_parquet(trained.paths.data_prepared / "test.parquet")["text"].tolist()[:13]
    reference = predict_logits(load_classifier(candidate), tokenizer, texts, 32, 5)
    onnx_logits = OnnxClassifier(bundle, model="fp32").logits(texts, batch_size=4)
    np.testing.assert_allclose(onnx_logits, reference, atol=1e-4)
    # Without its prompt the same weights give other logits, far beyond the ONNX error (the
    # tiny model's logits are small, so both are): the graph holds the prompt.
    bare = AutoModelForSequenceClassification.from_pretrained(str(candidate))
    unprompted = np.abs(predict_logits(bare, tokenizer, texts, 32, 5) - onnx_logits).max()
    assert unprompted > 20 * max(np.abs(onnx_logits - reference).max(), 1e-6)


@pytest.mark.parametrize("strategy", ["adalora", "ia3"])
def test_a_token_classifier_merges_adalora_and_ia3_too(tiny_model_dir: Path, strategy: str) -> None:
    from transformers import AutoModelForTokenClassification

    tags = ("O", "B-city", "I-city")
    model = load_classifier(tiny_model_dir, tags, auto_class=AutoModelForTokenClassification)
    cfg = _adalora() if strategy == "adalora" else _config("ia3")
    peft_model = apply_strategy(model, cfg, "TOKEN_CLS", total_steps=100).eval()
    _scramble(peft_model, ("modules_to_save",), 0.0)
    _scramble(peft_model, ("lora_E", "lora_B", "ia3_l"), 1.0 if strategy == "ia3" else 0.0)
    with torch.no_grad():
        peft_logits = peft_model(**BATCH).logits
        plain = merged(peft_model)
        assert type(plain).__name__ == "BertForTokenClassification"
        torch.testing.assert_close(plain(**BATCH).logits, peft_logits, atol=1e-5, rtol=0)
