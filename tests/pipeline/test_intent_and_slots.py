"""intent-and-slots: ATIS with its intents, the joint model's hooks, its metrics, the gate's
two bootstraps, the two-output ONNX bundle. A tiny in-memory BERT on a slice of real ATIS."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.fetch_data import fetch_data
from pipeline.prepare import prepare
from pipeline.tasks.intent_and_slots import IntentAndSlots, JointTestSplit
from pipeline.tasks.intent_slot_steps import joint_scores
from pipeline.tasks.iob2 import Sentence, write_jsonl
from pipeline.tasks.joint_model import JointIntentSlotModel, split_labels
from pipeline.validate import validate
from tests.conftest import preset, write_params
from tuneops.config import DataConfig, PrepareConfig, ValidateConfig, load_params
from tuneops.errors import ConfigError
from tuneops.runtime import INTENT_PREFIX, OnnxIntentSlotModel, joint_labels, load_bundle

TASK = IntentAndSlots()
ATIS = DataConfig(
    source="slot-filling-atis-joint",
    name="atis_joint",
    text_column="tokens",
    label_column="tags",
    hold_back_rows=0,
)


def test_atis_joint_ships_tokens_tags_and_the_intent_with_its_own_test_split(
    tmp_path: Path,
) -> None:
    fetched = fetch_data(ATIS, tmp_path / "raw")
    intents, tags = joint_labels(fetched.labels)
    # 5871 sentences; 127 tags as for the slot task; 26 intent classes, multi-intents
    # ("atis_flight;atis_airfare") each its own class (train ∪ test).
    assert (fetched.rows, len(tags), tags[0], len(intents)) == (5871, 127, "O", 26)
    assert "atis_flight;atis_airfare" in intents and "atis_day_name" in intents
    first = json.loads((fetched.dataset_dir / "batch-0000.jsonl").read_text().splitlines()[0])
    assert first["intent"] == "atis_flight" and first["split"] is None
    result = prepare(
        TASK, ATIS, PrepareConfig(), fetched.labels, fetched.dataset_dir, tmp_path / "p"
    )
    assert result.rows["test"] == 893
    test = pd.read_parquet(tmp_path / "p" / "test.parquet")
    assert test["intent"].value_counts()["atis_flight"] == 632
    train = pd.read_parquet(tmp_path / "p" / "train.parquet")
    row = train.iloc[0]
    assert intents[row["intent_id"]] == row["intent"]
    assert [tags[i] for i in row["tag_ids"]] == list(row["tags"])
    assert not set(test["text"]) & set(train["text"])


def test_a_missing_or_unknown_intent_is_named_with_its_line(tmp_path: Path) -> None:
    dataset = tmp_path / "raw" / "mine"
    dataset.mkdir(parents=True)
    write_jsonl(
        dataset / "batch-0000.jsonl",
        [
            Sentence(["fly", "to", "boston"], ["O", "O", "B-city"], "x", None, "flight"),
            Sentence(["fares", "to", "denver"], ["O", "O", "B-city"], "x", None, "fare"),
            Sentence(["to", "dallas"], ["O", "B-city"], "x", None, "unheard"),
            Sentence(["to", "austin"], ["O", "B-city"], "x"),
        ],
    )
    labels = [f"{INTENT_PREFIX}fare", f"{INTENT_PREFIX}flight", "O", "B-city", "I-city"]
    (dataset / "labels.json").write_text(json.dumps(labels))
    cfg = DataConfig(source="files", name="mine", text_column="tokens", label_column="tags")
    result = validate(TASK, cfg, ValidateConfig(), dataset, tmp_path / "reports")
    failed = {f"{c.name}:{c.column}": c for c in result.failed}
    assert list(failed) == ["expect_column_values_to_be_null:intent (JSONL key)"]
    assert failed["expect_column_values_to_be_null:intent (JSONL key)"].examples == [
        {"source": "batch-0000.jsonl:3", "value": "unheard"},
        {"source": "batch-0000.jsonl:4", "value": "no 'intent' field"},
    ]


def test_joint_scores_count_a_sentence_right_only_when_intent_and_every_tag_are() -> None:
    gold = [("a", ["B-x", "O"]), ("b", ["O", "B-y"]), ("a", ["O", "O"]), ("b", ["B-x", "I-x"])]
    guess = [("a", ["B-x", "O"]), ("a", ["O", "B-y"]), ("a", ["O", "B-x"]), ("b", ["B-x", "I-x"])]
    scores = joint_scores(gold, guess)
    assert scores["test_intent_accuracy"] == 0.75
    assert scores["test_sentence_accuracy"] == 0.5  # rows 0 and 3
    # entities: gold 3, predicted 4, right 3: P 3/4, R 1, F1 6/7
    assert scores["test_slot_precision"] == 0.75 and scores["test_slot_recall"] == 1.0
    assert scores["test_slot_f1"] == pytest.approx(6 / 7)


def test_the_bootstrap_counts_of_intent_accuracy_give_the_accuracy() -> None:
    from pipeline.bootstrap import f1_from_counts

    gold = [("a", ["B-x"]), ("b", ["O"]), ("a", ["O"]), ("b", ["B-x"])]
    split = JointTestSplit([["w"]] * 4, gold, [])
    guess = [("a", ["B-x"]), ("a", ["O"]), ("a", ["B-x"]), ("b", ["O"])]
    counts = split.metric_counts(guess)
    assert list(counts) == ["test_slot_f1", "test_intent_accuracy"]
    ones = np.ones(4)
    assert f1_from_counts(ones, counts["test_intent_accuracy"]) == 0.75
    assert f1_from_counts(ones, counts["test_slot_f1"]) == pytest.approx(
        joint_scores(gold, guess)["test_slot_f1"]
    )


def test_the_loss_is_intent_ce_plus_the_weighted_tag_ce(tiny_model_dir: Path) -> None:
    labels = (f"{INTENT_PREFIX}a", f"{INTENT_PREFIX}b", "O", "B-x")
    model = TASK.load_model(tiny_model_dir, labels).eval()
    ids = torch.tensor([[101, 2000, 2001, 102], [101, 2002, 102, 0]])
    mask = (ids != 0).long()
    labels_t = torch.tensor([[1, 0, 1, -100], [0, 1, -100, -100]])
    out = model(input_ids=ids, attention_mask=mask)
    intent, tags = split_labels(labels_t)
    assert intent.tolist() == [1, 0] and tags[:, 0].tolist() == [-100, -100]
    ce = torch.nn.functional.cross_entropy
    tag_ce = ce(out.tag_logits.reshape(-1, 2), tags.reshape(-1), ignore_index=-100)
    for weight in (1.0, 0.25):
        model.config.slot_loss_weight = weight
        loss = model(input_ids=ids, attention_mask=mask, labels=labels_t).loss
        assert loss.item() == pytest.approx(
            (ce(out.intent_logits, intent) + weight * tag_ce).item()
        )


def test_check_refuses_the_token_tasks_refusals_in_its_own_name(tmp_path: Path) -> None:
    params = load_params(write_params(tmp_path, {}), preset_overrides("train.long_text", "chunks"))
    with pytest.raises(ConfigError, match=r"train.long_text: 'chunks'.*intent-and-slots cuts"):
        TASK.check(params)
    params = load_params(
        write_params(tmp_path, {}), preset_overrides("train.metric_for_best_model", "entity_f1")
    )
    with pytest.raises(ConfigError, match="not a validation metric of intent-and-slots"):
        TASK.check(params)


def preset_overrides(key: str, value: Any) -> dict[str, Any]:
    resolved = preset("params.joint.yaml")
    flat = {
        "task": resolved["task"],
        "train.metric_for_best_model": resolved["train"]["metric_for_best_model"],
        "train.long_text": "truncate",
        "train.max_length": 64,
        "train.class_weights": "none",
        "gate.baselines": resolved["gate"]["baselines"],
        "gate.floors": resolved["gate"]["floors"],
        "gate.max_ece": None,
    }
    return flat | {key: value}


# --- the chain on a slice: train, evaluate, export ----------------------------------


@dataclass
class Chain:
    root: Path
    labels: tuple[str, ...]
    evaluation: Any
    exported: Any


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Chain:
    from pipeline.evaluate import evaluate
    from pipeline.export import export
    from pipeline.train import train
    from tuneops.paths import Paths

    root = tmp_path_factory.mktemp("joint")
    overrides = preset_overrides("data.max_rows", 400) | {
        "data.source": ATIS.source,
        "data.name": ATIS.name,
        "data.text_column": "tokens",
        "data.label_column": "tags",
        "data.hold_back_rows": 0,
        "model.name_or_path": str(tiny_model_dir),
        "train.epochs": 2,
        "train.max_length": 32,
        "train.batch_size": 16,
        "train.learning_rate": 5.0e-4,
        "train.max_steps": -1,
        "evaluate.frozen_baseline_train_rows": 100,
        "export.parity_examples": 32,
    }
    params = load_params(write_params(root, {}), overrides)
    TASK.check(params)
    paths = Paths(root)
    fetched = fetch_data(params.data, paths.data_raw)
    prepare(
        TASK, params.data, params.prepare, fetched.labels, fetched.dataset_dir, paths.data_prepared
    )
    train(
        TASK,
        params.model,
        params.train,
        paths.data_prepared,
        paths.candidate,
        paths.checkpoints,
        paths.data_cache,
    )
    evaluation = evaluate(
        TASK,
        params.evaluate,
        params.model,
        32,
        params.train.seed,
        paths.data_prepared,
        paths.candidate,
        paths.reports,
    )
    exported = export(TASK, params.export, 32, paths.candidate, paths.data_prepared, paths.export)
    return Chain(root, fetched.labels, evaluation, exported)


def test_the_candidate_saves_and_loads_as_a_joint_model_with_its_weight(chain: Chain) -> None:
    candidate = chain.root / "models" / "candidate"
    model = TASK.load_model(candidate)
    assert isinstance(model, JointIntentSlotModel)
    intents, tags = joint_labels(chain.labels)
    assert (model.intent_head.out_features, model.tag_head.out_features) == (
        len(intents),
        len(tags),
    )
    assert json.loads((candidate / "config.json").read_text())["slot_loss_weight"] == 1.0


def test_evaluate_scores_the_model_and_each_baseline_on_both_heads(chain: Chain) -> None:
    metrics = json.loads((chain.root / "reports" / "metrics.json").read_text())
    frame = pd.read_parquet(chain.root / "reports" / "test_predictions.parquet")
    gold = list(zip(frame["intent"], [list(t) for t in frame["tags"]], strict=True))
    guess = [(row[0], list(row[1:])) for row in frame["predicted"]]
    scores = joint_scores(gold, guess)  # metrics.json rounds to 6 places
    assert metrics["test_intent_accuracy"] == pytest.approx(
        scores["test_intent_accuracy"], abs=1e-6
    )
    assert metrics["test_slot_f1"] == pytest.approx(scores["test_slot_f1"], abs=1e-6)
    # most_frequent: the majority intent for every row
    train = pd.read_parquet(chain.root / "data" / "prepared" / "train.parquet")
    majority = train["intent"].value_counts().index[0]
    assert {row[0] for row in frame["most_frequent_predicted"]} == {majority}
    assert metrics["most_frequent"]["test_intent_accuracy"] == pytest.approx(
        float(np.mean(frame["intent"] == majority)), abs=1e-6
    )
    assert set(metrics) >= {"tfidf", "before_finetuning"}
    assert (chain.root / "reports" / "confusion_matrix.png").stat().st_size > 0  # the flow logs it


def test_the_bundle_has_two_outputs_in_parity_and_answers_intents_and_spans(chain: Chain) -> None:
    import onnx

    bundle = chain.root / "models" / "export"
    graph = onnx.load(str(bundle / "model.onnx")).graph
    assert [o.name for o in graph.output] == ["intent_logits", "tag_logits"]
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["task"] == "intent-and-slots"
    assert meta["output_names"] == ["intent_logits", "tag_logits"]
    assert chain.exported.parity_max_abs_diff < 1e-3
    runtime = load_bundle(bundle, model="fp32")
    assert isinstance(runtime, OnnxIntentSlotModel)
    text = "show me flights from boston to denver"
    (found,) = runtime.predict([text])
    assert found.intent in runtime.intents and found.intents == found.intent.split(";")
    assert all(text[e.start : e.end] == e.text for e in found.entities)
    record = runtime.record(found)
    assert set(record) == {"intent", "intents", "score", "entities"}
    # the runtime's intents and tags on the test split are what the gate scores
    split = TASK.test_split(chain.root / "data" / "prepared", list(chain.labels))
    predicted = split.rescore(runtime)
    assert meta["models"]["fp32"]["slot_f1"] == pytest.approx(
        split.report(predicted)[0]["test_slot_f1"]
    )
    assert meta["models"]["fp32"]["intent_accuracy"] == pytest.approx(
        split.report(predicted)[0]["test_intent_accuracy"]
    )


# --- the gate judges both metrics ----------------------------------------------------


def test_the_gate_rejects_a_challenger_worse_on_intent_accuracy_alone() -> None:
    """Slot F1 as good as the champion's, intent accuracy clearly worse: before the gate
    bootstrapped each judged metric it compared slot F1 only, and this one passed."""
    from pipeline.gate import ChampionComparison, GateInputs, gate
    from tuneops.config import GateConfig

    def compared(metric: str, low: float) -> ChampionComparison:
        return ChampionComparison("3", {}, low + 0.01, low, low + 0.02, 0.95, 1000, metric)

    champion = compared("test_slot_f1", -0.005)
    inputs = GateInputs(
        metrics={"test_slot_f1": 0.95, "test_intent_accuracy": 0.96},
        per_class={},
        labels=[],
        primary_metric="test_slot_f1",
        primary_metric_label="slot F1",
        comparison=champion,
    )
    cfg = GateConfig(floors={}, beat_baselines=False, per_class=False, latency=False)
    assert gate(cfg, inputs).passed
    champion.others = [compared("test_intent_accuracy", -0.04)]
    verdict = gate(cfg, inputs)
    assert verdict.failed_checks == ["no_regression_vs_champion:test_intent_accuracy"]
    (failed,) = [c for c in verdict.checks if not c.passed]
    assert failed.detail.startswith("intent accuracy diff vs champion v3 -0.0300")


def test_register_bootstraps_each_baseline_on_slot_f1_and_on_intent_accuracy(
    chain: Chain,
) -> None:
    from pipeline.bootstrap import paired_bootstrap
    from pipeline.gate import gate
    from pipeline.register import RegisterInputs, compare_with_baselines
    from tuneops.config import GateConfig

    cfg = GateConfig(floors={}, baselines=["most_frequent"], per_class=False, latency=False)
    prepared = chain.root / "data" / "prepared"
    inputs = RegisterInputs(TASK, cfg, "", "m", prepared, chain.root / "reports")
    split = TASK.test_split(prepared, list(chain.labels))
    predicted = split.rescore(load_bundle(chain.root / "models" / "export", model="default"))
    (found,) = compare_with_baselines(inputs, split, predicted).values()
    assert not isinstance(found, str)
    assert [found.metric, *(o.metric for o in found.others)] == ["", "test_intent_accuracy"]
    frame = pd.read_parquet(chain.root / "reports" / "test_predictions.parquet")
    theirs = split.recorded(frame["most_frequent_predicted"].tolist())
    counts = (split.metric_counts(p)["test_intent_accuracy"] for p in (predicted, theirs))
    expected = paired_bootstrap(*counts, cfg.bootstrap_resamples, 0.95, cfg.bootstrap_seed)
    intent = found.others[0]
    assert (intent.observed_diff, intent.ci_low, intent.ci_high) == expected
    assert intent.baseline_score == split.report(theirs)[0]["test_intent_accuracy"]
    from pipeline.gate import GateInputs

    verdict = gate(
        cfg,
        GateInputs({}, {}, [], TASK.primary_metric, "slot F1", baselines={"most_frequent": found}),
    )
    assert [c.name for c in verdict.checks][:2] == [
        "beats:most_frequent",
        "beats:most_frequent:test_intent_accuracy",
    ]


@pytest.mark.parametrize("strategy", ["lora", "ia3", "bitfit"])
def test_peft_and_bitfit_train_the_heads_and_merge_back_to_a_joint_model(
    tiny_model_dir: Path, strategy: str
) -> None:
    """peft's TOKEN_CLS wrapper passes the packed labels through: the loss backpropagates
    into the adapters and both heads, and the merged model answers as the adapted one."""
    from pipeline.training.strategies import apply_strategy, merged
    from tuneops.config import TrainConfig

    labels = (f"{INTENT_PREFIX}a", f"{INTENT_PREFIX}b", "O", "B-x")
    model = TASK.load_model(tiny_model_dir, labels)
    adapted = apply_strategy(model, TrainConfig(strategy=strategy), TASK.peft_task_type, 10)
    ids = torch.tensor([[101, 2000, 2001, 102]])
    mask = torch.ones_like(ids)
    adapted.train()
    adapted(
        input_ids=ids, attention_mask=mask, labels=torch.tensor([[1, 0, 1, -100]])
    ).loss.backward()
    trained = {n for n, p in adapted.named_parameters() if p.requires_grad and p.grad is not None}
    assert any("intent_head" in n for n in trained) and any("tag_head" in n for n in trained)
    assert len(trained) > 4  # more than the two heads' weights and biases
    adapted.eval()
    with torch.no_grad():
        before = adapted(input_ids=ids, attention_mask=mask)
        plain = merged(adapted)
        after = plain(input_ids=ids, attention_mask=mask)
    assert isinstance(plain, JointIntentSlotModel)
    torch.testing.assert_close(after.intent_logits, before.intent_logits)
    torch.testing.assert_close(after.tag_logits, before.tag_logits)
