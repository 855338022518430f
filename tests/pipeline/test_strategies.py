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


def test_lora_candidate_is_a_plain_model_equal_to_base_plus_adapter(
    trained: Trained, tmp_path: Path, tiny_model_dir: Path
) -> None:
    from peft import PeftModel

    cfg = _tiny_train_config(trained, strategy="lora", lora={"r": 4})
    result = _train(trained, tmp_path, cfg)
    candidate = tmp_path / "candidate"
    assert result.adapter_dir == candidate / "adapter"
    assert (candidate / "adapter" / "adapter_config.json").exists()
    assert not any("lora" in key for key in load_file(str(candidate / "model.safetensors")))
    tokenizer = load_tokenizer(candidate)
    plain = predict_logits(load_classifier(candidate), tokenizer, TEXTS, 32, 4)
    base = load_classifier(tiny_model_dir, LABELS)
    with_adapter = PeftModel.from_pretrained(base, str(candidate / "adapter"))
    peft_logits = predict_logits(with_adapter, tokenizer, TEXTS, 32, 4)  # type: ignore[arg-type]
    np.testing.assert_allclose(plain, peft_logits, atol=1e-5)
    assert result.trainable_params == LAYERS * 2 * 4 * 2 * HIDDEN + HEAD
