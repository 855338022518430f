"""train.long_text: head_tail keeps a long text's first and last tokens, the same way in
training, evaluation, export parity and the ONNX runtime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from pipeline.export import export
from pipeline.training.modeling import (
    encode_window,
    load_classifier,
    load_tokenizer,
    predict_logits,
)
from tests.conftest import TEXT, Trained
from tuneops.config import ExportConfig, TrainConfig
from tuneops.runtime import OnnxClassifier, head_tail_window, window_inputs

LONG = "opening words " + "filler " * 300 + "closing verdict superb"


def test_head_tail_keeps_the_head_and_the_tail_between_the_special_tokens() -> None:
    ids = [101, *range(1, 19), 102]  # 18 content tokens, window 10: 8 kept, 2 head + 6 tail
    assert head_tail_window(ids, 10) == [101, 1, 2, 13, 14, 15, 16, 17, 18, 102]
    assert head_tail_window(ids[:9], 10) == ids[:9]  # within the window: unchanged


def test_at_512_tokens_it_is_sun_et_al_128_head_and_382_tail() -> None:
    cut = head_tail_window([101, *range(1, 1001), 102], 512)
    assert len(cut) == 512
    assert cut[1:129] == list(range(1, 129))
    assert cut[129:511] == list(range(619, 1001))


@pytest.mark.audit("M13", "T10")
def test_training_and_the_runtime_cut_a_long_text_the_same_way(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    cfg = TrainConfig(max_length=32, long_text="head_tail")
    encoded = TEXT.tokenise(tokenizer, cfg)({"text": [LONG, "short one"], "label_id": [0, 1]})
    words = tokenizer.convert_ids_to_tokens(encoded["input_ids"][0])
    assert len(words) == 32
    assert words[:3] == ["[CLS]", "opening", "words"]
    assert words[-4:] == ["closing", "verdict", "superb", "[SEP]"]
    assert encoded["length"] == [32, 4]
    plain = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    inputs = window_inputs(plain, [LONG, "short one"], 32, "head_tail", pad_id=0)
    assert inputs["input_ids"][0].tolist() == encoded["input_ids"][0]
    assert inputs["input_ids"][1].tolist()[:4] == encoded["input_ids"][1]
    assert inputs["attention_mask"].sum(axis=1).tolist() == [32, 4]


@pytest.mark.audit("M13", "T10")
def test_the_bundle_records_the_policy_and_onnx_matches_pytorch_on_it(
    trained: Trained, tmp_path: Path
) -> None:
    candidate = tmp_path / "candidate"
    shutil.copytree(trained.paths.candidate, candidate)
    summary = json.loads((candidate / "training_summary.json").read_text())
    summary["long_text"] = "head_tail"
    (candidate / "training_summary.json").write_text(json.dumps(summary))
    max_length = trained.params.train.max_length
    result = export(
        TEXT,
        ExportConfig(quantize_int8=False, parity_examples=32),
        max_length,
        candidate,
        trained.paths.data_prepared,
        tmp_path / "export",
    )
    meta = json.loads((result.export_dir / "bundle.json").read_text())
    assert meta["long_text"] == "head_tail"
    model, tokenizer = load_classifier(candidate), load_tokenizer(candidate)
    texts = [LONG, "a short review", LONG.replace("superb", "dreadful")]
    head_tail = predict_logits(model, tokenizer, texts, max_length, 2, long_text="head_tail")
    truncated = predict_logits(model, tokenizer, texts, max_length, 2)
    onnx = OnnxClassifier(result.export_dir).logits(texts, batch_size=2)
    np.testing.assert_allclose(onnx, head_tail, atol=1e-4)
    np.testing.assert_allclose(head_tail[1], truncated[1], rtol=0, atol=1e-6)  # short: same
    # What the bundle feeds the model: the tokens training saw (the tiny model's logits move
    # too little with its input to tell a head from a tail).
    bundle = OnnxClassifier(result.export_dir)
    ids = bundle.encode(texts)["input_ids"]
    expected = encode_window(tokenizer, texts, max_length, "head_tail")["input_ids"]
    assert [row[row != 0].tolist() for row in ids] == expected
    assert tokenizer.convert_ids_to_tokens(expected[2])[-3:] == ["verdict", "dreadful", "[SEP]"]


def test_token_classification_refuses_head_tail_before_any_compute() -> None:
    from pipeline import tasks
    from tuneops.config import validate_params
    from tuneops.errors import ConfigError

    params = validate_params(
        {
            "task": "token-classification",
            "train": {"long_text": "head_tail", "metric_for_best_model": "entity_f1"},
            "gate": {"baselines": ["before_finetuning"]},
        },
        "params.yaml",
    )
    with pytest.raises(ConfigError, match=r"train\.long_text: 'head_tail' is for text"):
        tasks.get("token-classification").check(params)
