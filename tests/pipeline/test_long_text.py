"""train.long_text: head_tail keeps a long text's first and last tokens, the same way in
training, evaluation, export parity and the ONNX runtime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.special import softmax
from tokenizers import Tokenizer

from pipeline.export import export
from pipeline.tasks.text_classification import train_window
from pipeline.training.modeling import (
    encode_window,
    load_classifier,
    load_tokenizer,
    predict_logits,
)
from tests.conftest import TEXT, Trained
from tuneops.config import ExportConfig, TrainConfig
from tuneops.runtime import (
    OnnxClassifier,
    Window,
    document_logits,
    encode_windows,
    head_tail_window,
    kept_windows,
    window_inputs,
)

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
    head_tail = predict_logits(model, tokenizer, texts, Window(max_length, "head_tail"), 2)
    truncated = predict_logits(model, tokenizer, texts, max_length, 2)
    onnx = OnnxClassifier(result.export_dir).logits(texts, batch_size=2)
    np.testing.assert_allclose(onnx, head_tail, atol=1e-4)
    np.testing.assert_allclose(head_tail[1], truncated[1], rtol=0, atol=1e-6)  # short: same
    # What the bundle feeds the model: the tokens training saw (the tiny model's logits move
    # too little with its input to tell a head from a tail).
    bundle = OnnxClassifier(result.export_dir)
    ids = bundle.encode(texts)["input_ids"]
    expected = encode_window(tokenizer, texts, Window(max_length, "head_tail")).inputs["input_ids"]
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
            "gate": {"baselines": ["before_finetuning"], "floors": {"test_entity_f1": 0.5}},
        },
        "params.yaml",
    )
    with pytest.raises(ConfigError, match=r"train\.long_text: 'head_tail' is for text"):
        tasks.get("token-classification").check(params)


# --- train.long_text: chunks ------------------------------------------------------------


def test_chunks_are_the_tokenizers_own_overlapping_windows_the_first_max_chunks(
    tiny_model_dir: Path,
) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    texts = [LONG, "short one"]
    window = Window(16, "chunks", stride=4, max_chunks=3)
    windows = encode_window(tokenizer, texts, window)
    every = tokenizer(
        texts, truncation=True, max_length=16, stride=4, return_overflowing_tokens=True
    )
    assert every["overflow_to_sample_mapping"].count(0) > 3  # LONG needs more than 3
    assert windows.inputs["input_ids"] == [*every["input_ids"][:3], every["input_ids"][-1]]
    assert windows.documents == [0, 0, 0, 1]
    assert windows.truncated == [True, False]
    # consecutive windows share `stride` content tokens
    first, second = windows.inputs["input_ids"][:2]
    assert first[-1 - 4 : -1] == second[1 : 1 + 4]
    # the runtime's tokenizers Tokenizer cuts the same windows
    plain = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    ours = encode_windows(plain, texts, window)
    assert ours.inputs == windows.inputs
    assert (ours.documents, ours.truncated) == (windows.documents, windows.truncated)


def test_truncate_and_head_tail_say_which_texts_were_cut(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    plain = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    for long_text in ("truncate", "head_tail"):
        window = Window(32, long_text)
        assert encode_window(tokenizer, [LONG, "short"], window).truncated == [True, False]
        assert encode_windows(plain, [LONG, "short"], window).truncated == [True, False]


def test_a_documents_logits_are_the_mean_of_its_windows() -> None:
    windows = np.array([[1.0, 3.0], [3.0, 5.0], [7.0, -1.0]], np.float32)
    means = document_logits(windows, [0, 0, 1], 2)
    np.testing.assert_array_equal(means, [[2.0, 4.0], [7.0, -1.0]])
    assert kept_windows([0, 0, 0, 1, 2, 2], 2) == [0, 1, 3, 4, 5]


def test_training_reads_every_window_with_the_texts_label(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    cfg = TrainConfig(max_length=32, long_text="chunks", chunk_overlap=0.25, max_chunks=4)
    encoded = TEXT.tokenise(tokenizer, cfg)({"text": [LONG, "short one"], "label_id": [1, 0]})
    assert encoded["labels"] == [1, 1, 1, 1, 0]
    assert encoded["window"] == [0, 1, 2, 3, 0]
    assert encoded["cut"] == [1, 1, 1, 1, 0]
    assert train_window(cfg, tokenizer).stride == 7  # a quarter of 30 content tokens


def _chunked_candidate(trained: Trained, folder: Path, max_chunks: int = 4) -> Path:
    candidate = folder / "candidate"
    shutil.copytree(trained.paths.candidate, candidate)
    summary = json.loads((candidate / "training_summary.json").read_text())
    summary |= {"long_text": "chunks", "chunk_overlap": 0.25, "max_chunks": max_chunks}
    (candidate / "training_summary.json").write_text(json.dumps(summary))
    return candidate


def _long_documents(prepared: Path, folder: Path) -> Path:
    """A copy of the prepared splits whose test split is long documents: real test texts of
    one label joined, a few of them longer than max_chunks windows, and two short ones."""
    import pandas as pd

    copy = folder / "prepared"
    shutil.copytree(prepared, copy)
    test = pd.read_parquet(prepared / "test.parquet")
    rows = []
    for label_id, group in test.groupby("label_id"):
        texts = group["text"].tolist()
        for size in (2, 5, 12):
            rows.append(
                {
                    "text": " ".join(texts[:size]),
                    "label": group["label"].iloc[0],
                    "label_id": label_id,
                    "source": f"long.csv:{len(rows) + 2}",
                }
            )
        rows.append({**rows[-1], "text": texts[0], "source": f"long.csv:{len(rows) + 2}"})
    rows.append({**rows[0], "text": " ".join(test["text"]) * 3, "source": "long.csv:99"})
    pd.DataFrame(rows).to_parquet(copy / "test.parquet", index=False)
    return copy


@pytest.mark.audit("M13")
def test_chunks_predict_the_same_everywhere(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same long documents through evaluation, export parity, the ONNX runtime,
    `tuneops predict`, `tuneops serve` and the MLflow pyfunc: one label, one score and one
    truncated flag per document, each the mean of its windows' logits."""
    import sys

    import httpx
    import mlflow
    import pandas as pd
    import torch

    import tuneops
    from pipeline.evaluate import evaluate
    from tests.conftest import free_port, local_server, tool_env
    from tuneops.cli import main

    candidate = _chunked_candidate(trained, tmp_path)
    prepared = _long_documents(trained.paths.data_prepared, tmp_path)
    texts = pd.read_parquet(prepared / "test.parquet")["text"].tolist()
    p = trained.params
    max_length = p.train.max_length
    assert isinstance(max_length, int)
    # evaluation
    evaluate(
        TEXT, p.evaluate, p.model, max_length, p.train.seed, prepared, candidate, tmp_path / "r"
    )
    evaluated = pd.read_parquet(tmp_path / "r" / "test_predictions.parquet")
    # export parity (on these documents: they are its test split)
    result = export(
        TEXT,
        ExportConfig(quantize_int8=False, parity_examples=64),
        max_length,
        candidate,
        prepared,
        tmp_path / "export",
    )
    meta = json.loads((result.export_dir / "bundle.json").read_text())
    assert (meta["long_text"], meta["max_chunks"], meta["chunk_stride"]) == ("chunks", 4, 7)
    assert result.parity_label_agreement == 1.0
    # the runtime
    runtime = OnnxClassifier(result.export_dir).predict(texts, batch_size=3)
    labels = [r.label for r in runtime]
    scores = [r.score for r in runtime]
    cut = [r.truncated for r in runtime]
    assert any(cut) and not all(cut)
    # each document's logits: the mean of its windows' logits, window by window in PyTorch
    model, tokenizer = load_classifier(candidate), load_tokenizer(candidate)
    window = Window(max_length, "chunks", 7, 4)
    windows = encode_window(tokenizer, texts, window)
    with torch.inference_mode():
        one_by_one = np.concatenate(
            [
                model(input_ids=torch.tensor([ids])).logits.numpy()
                for ids in windows.inputs["input_ids"]
            ]
        )
    means = document_logits(one_by_one, windows.documents, len(texts))
    bundle = OnnxClassifier(result.export_dir)
    np.testing.assert_allclose(bundle.logits(texts), means, atol=1e-4)
    assert evaluated["predicted"].tolist() == labels
    # Evaluation reports the candidate's own confidence; the runtime serves it calibrated,
    # with the temperature export fitted on the validation split (pipeline.calibration).
    confidence = softmax(means, axis=1).max(axis=1)
    np.testing.assert_allclose(evaluated["confidence"], confidence, atol=1e-4)
    calibrated = softmax(means / bundle.temperature, axis=1).max(axis=1)
    np.testing.assert_allclose(scores, calibrated, atol=1e-4)
    assert evaluated["truncated"].tolist() == cut
    # tuneops predict
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    assert (
        main(
            [
                "predict",
                "--bundle",
                str(result.export_dir),
                "--input",
                str(source),
                "--output",
                str(out),
            ]
        )
        == 0
    )
    predicted = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["label"] for r in predicted] == labels
    assert [r["truncated"] for r in predicted] == cut
    np.testing.assert_allclose([r["score"] for r in predicted], scores, atol=1e-5)
    # tuneops serve, its default --max-chars: the longest document is beyond the old 10,000
    assert max(map(len, texts)) > 10_000
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "tuneops.cli", "serve", "--bundle", str(result.export_dir)]
    with local_server([*argv, "--port", str(port)], tool_env(), f"{url}/health", tmp_path / "s"):
        response = httpx.post(f"{url}/predict", json={"texts": texts[:8]}, timeout=60)
        longest = httpx.post(f"{url}/predict", json={"texts": [texts[-1]]}, timeout=60)
    assert response.status_code == 200, response.text
    served = response.json()["predictions"] + longest.json()["predictions"]
    assert [r["label"] for r in served] == labels[:8] + labels[-1:]
    assert [r["truncated"] for r in served] == cut[:8] + cut[-1:]
    # the MLflow pyfunc
    saved = tmp_path / "pyfunc"
    mlflow.pyfunc.save_model(
        str(saved),
        python_model=str(Path(tuneops.__file__).with_name("mlflow_model.py")),
        artifacts={"bundle": str(result.export_dir)},
        code_paths=[str(Path(tuneops.__file__).parent)],
    )
    frame = mlflow.pyfunc.load_model(str(saved)).predict(pd.DataFrame({"text": texts}))
    assert frame["label"].tolist() == labels
    assert frame["truncated"].tolist() == cut
    np.testing.assert_allclose(frame["score"], scores, atol=1e-5)


def test_chunks_train_and_validate_per_text(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every window trains; the validation metric the Trainer selects on is per text (its
    windows' mean logits), the same figure evaluation computes on the validation split."""
    import pandas as pd

    from pipeline.tasks.text_classification import candidate_window, score
    from pipeline.train import train

    p = trained.params
    update = {"max_length": 16, "long_text": "chunks", "max_chunks": 2, "epochs": 1}
    cfg = p.train.model_copy(update=update)
    candidate = tmp_path / "candidate"
    result = train(
        TEXT, p.model, cfg, trained.paths.data_prepared, candidate, tmp_path / "ck", tmp_path / "c"
    )
    summary = json.loads((candidate / "training_summary.json").read_text())
    manifest = json.loads((trained.paths.data_prepared / "manifest.json").read_text())
    tokenizer = load_tokenizer(candidate)
    validation = pd.read_parquet(trained.paths.data_prepared / "validation.parquet")
    expected = encode_window(
        tokenizer, validation["text"].tolist(), candidate_window(candidate, tokenizer, 0)
    )
    assert summary["windows"]["validation"] == {
        "texts": manifest["rows"]["validation"],
        "windows": len(expected.documents),
        "truncated": sum(expected.truncated),
    }
    assert summary["windows"]["train"]["windows"] > manifest["rows"]["train"]
    assert (summary["long_text"], summary["max_length"], summary["max_chunks"]) == ("chunks", 16, 2)
    logits = predict_logits(
        load_classifier(candidate),
        tokenizer,
        validation["text"].tolist(),
        candidate_window(candidate, tokenizer, 0),
        8,
    )
    per_text = score(validation["label_id"].to_numpy(), logits.argmax(axis=1), 2)
    assert result.best_validation["macro_f1"] == pytest.approx(per_text["test_macro_f1"], abs=1e-9)
    assert "texts not read whole at max_length=16 tokens" in capsys.readouterr().out


# --- train.max_length: auto -------------------------------------------------------------


def test_auto_max_length_is_the_95th_percentile_rounded_up_to_16_within_the_model() -> None:
    from pipeline.tasks.text_classification import auto_max_length

    lengths = list(range(1, 101))  # 95th percentile 95.05 -> 96
    assert auto_max_length(lengths, 512) == (96, 96)
    assert auto_max_length([*lengths[:-5], 97, 98, 99, 100, 101], 512) == (96, 96)
    assert auto_max_length([700] * 10, 512) == (512, 700)
    assert auto_max_length([3, 4], 512) == (16, 4)


def test_auto_max_length_is_chosen_from_the_train_split_said_and_recorded(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """step_train picks the window from the train split (printed, on the MLflow run, in
    training_summary.json) and the bundle is exported with it."""
    import mlflow
    import pandas as pd

    from pipeline.tasks.text_classification import auto_max_length
    from tuneops import stages

    root = tmp_path / "project"
    shutil.copytree(trained.paths.root, root, ignore=shutil.ignore_patterns("models", "mlruns"))
    ctx = stages.load_context(root, overrides={"train.max_length": "auto", "train.epochs": 1})
    tokenizer = load_tokenizer(trained.params.model.name_or_path)
    train_texts = pd.read_parquet(root / "data/prepared/train.parquet")["text"].tolist()
    lengths = [len(ids) for ids in tokenizer(train_texts)["input_ids"]]
    chosen, p95 = auto_max_length(lengths, 128)  # the tiny model's max_position_embeddings
    assert chosen not in (32, 64)  # not a default by chance
    _, run_id = stages.step_train(ctx)
    out = capsys.readouterr().out
    assert f"train.max_length: auto chose {chosen} tokens" in out
    assert f"95th percentile is {p95} tokens over {len(lengths)} texts" in out
    summary = json.loads((root / "models/candidate/training_summary.json").read_text())
    assert summary["max_length"] == chosen
    run = mlflow.MlflowClient(ctx.tracking_uri).get_run(str(run_id))
    assert run.data.params["train.max_length"] == "auto"
    assert run.data.params["train.max_length.chosen"] == str(chosen)
    for split, counts in summary["windows"].items():  # per split, texts not read whole
        assert run.data.metrics[f"windows.{split}.truncated"] == counts["truncated"]
        assert run.data.metrics[f"windows.{split}.texts"] == counts["texts"]
    assert summary["windows"]["train"]["texts"] == len(train_texts)
    assert summary["windows"]["train"]["truncated"] == sum(n > chosen for n in lengths)
    assert stages.window_length(ctx) == chosen
    exported = stages.step_export(ctx)
    meta = json.loads((exported.export_dir / "bundle.json").read_text())
    assert meta["max_length"] == chosen
    assert meta["max_text_chars"] == ctx.params.validate_.max_text_chars
    assert OnnxClassifier(exported.export_dir).window.max_length == chosen


def test_token_classification_refuses_auto_max_length() -> None:
    from pipeline import tasks
    from tuneops.config import validate_params
    from tuneops.errors import ConfigError

    params = validate_params(
        {
            "task": "token-classification",
            "train": {"max_length": "auto", "metric_for_best_model": "entity_f1"},
            "gate": {"baselines": ["before_finetuning"], "floors": {"test_entity_f1": 0.5}},
        },
        "params.yaml",
    )
    with pytest.raises(ConfigError, match=r"train\.max_length: auto is for text classification"):
        tasks.get("token-classification").check(params)


# --- audit M13: serve's default limit is what validation allowed -------------------------


@pytest.mark.audit("M13")
def test_serve_defaults_max_chars_to_what_validation_allowed(exported: Any, tmp_path: Path) -> None:
    import argparse

    from tuneops.config import ValidateConfig
    from tuneops.runtime import MAX_TEXT_CHARS
    from tuneops.serving.commands import serve_limits

    assert ValidateConfig().max_text_chars == MAX_TEXT_CHARS
    bundle = tmp_path / "bundle"
    shutil.copytree(exported.export_dir, bundle)
    args = argparse.Namespace(max_texts=8, max_chars=None, max_body_bytes=10**7)
    assert serve_limits(args, OnnxClassifier(bundle)).max_chars == MAX_TEXT_CHARS
    meta = json.loads((bundle / "bundle.json").read_text())
    (bundle / "bundle.json").write_text(json.dumps(meta | {"max_text_chars": 5000}))
    assert serve_limits(args, OnnxClassifier(bundle)).max_chars == 5000
    args.max_chars = 300  # an explicit --max-chars wins
    assert serve_limits(args, OnnxClassifier(bundle)).max_chars == 300
