"""Knowledge distillation (train.distill): the loss against one computed by hand, the
teacher's logits kept through the Trainer, read from a real exported bundle and cached, and
a student trained on the soft targets alone that follows its teacher."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import TrainingArguments

from pipeline.export import ExportResult
from pipeline.train import train
from pipeline.training import distill
from pipeline.training.modeling import load_classifier, load_tokenizer
from pipeline.training.schedules import ScheduledTrainer
from tests.conftest import TEXT, Trained, preset, set_dotted
from tuneops.config import TrainConfig, validate_params
from tuneops.errors import ConfigError
from tuneops.runtime import load_bundle

LABELS = ("negative", "positive")
BATCH = {
    "input_ids": torch.tensor([[101, 2023, 2003, 1037, 2204, 102], [101, 2204, 2204, 102, 0, 0]]),
    "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]),
    "token_type_ids": torch.zeros(2, 6, dtype=torch.long),
    "labels": torch.tensor([1, 0]),
}
TEACHER = torch.tensor([[2.0, -1.0], [0.5, 1.5]])


def _by_hand(student: np.ndarray, teacher: np.ndarray, t: float) -> float:
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64) / t
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    p = np.exp(log_softmax(teacher))
    kl = (p * (log_softmax(teacher) - log_softmax(student))).sum(axis=1).mean()
    return float(kl * t * t)


def test_the_soft_loss_is_t_squared_kl_of_the_tempered_distributions() -> None:
    student = torch.tensor([[0.3, 0.1], [-1.0, 2.0]])
    for t in (1.0, 2.0, 4.0):
        found = distill.distillation_loss(student, TEACHER, t)
        expected = _by_hand(student.numpy(), TEACHER.numpy(), t)
        assert float(found) == pytest.approx(expected, rel=1e-5)
    assert float(distill.distillation_loss(TEACHER, TEACHER, 2.0)) == pytest.approx(0, abs=1e-7)


def _trainer(model_dir: Path, tmp_path: Path, **distill_keys: Any) -> ScheduledTrainer:
    cfg = TrainConfig.model_validate({"class_weights": "none", "distill": distill_keys})
    torch.manual_seed(0)
    model = load_classifier(model_dir, LABELS).eval()  # no dropout: one forward per check
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    return ScheduledTrainer(model=model, args=args, train_cfg=cfg)


def test_a_train_batch_mixes_the_labels_and_the_teachers_soft_targets(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    trainer = _trainer(tiny_model_dir, tmp_path, teacher="x", alpha=0.25, temperature=2.0)
    loss = trainer.compute_loss(trainer.model, dict(BATCH, teacher_logits=TEACHER))
    with torch.no_grad():
        logits = trainer.model(**{k: v for k, v in BATCH.items() if k != "labels"}).logits
    hard = torch.nn.functional.cross_entropy(logits, BATCH["labels"])
    soft = _by_hand(logits.numpy(), TEACHER.numpy(), 2.0)
    assert float(loss) == pytest.approx(0.75 * float(hard) + 0.25 * soft, rel=1e-5)
    # Validation batches carry no teacher: the plain loss, as without distillation.
    plain = trainer.compute_loss(trainer.model, dict(BATCH))
    assert float(plain) == pytest.approx(float(hard), rel=1e-5)


def test_the_trainer_keeps_the_teacher_column_that_the_model_does_not_take(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from datasets import Dataset

    rows = Dataset.from_dict(
        {"input_ids": [[101, 102]], "labels": [0], "teacher_logits": [[0.1, 0.2]], "window": [0]}
    )
    kept = _trainer(tiny_model_dir, tmp_path, teacher="x")._remove_unused_columns(rows)
    assert "teacher_logits" in kept.column_names and "window" not in kept.column_names
    plain = _trainer(tiny_model_dir, tmp_path)._remove_unused_columns(rows)
    assert "teacher_logits" not in plain.column_names


def test_a_teacher_must_be_an_exported_bundle_or_a_registered_version(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"train\.distill\.teacher: .*no bundle\.json.*export"):
        distill.open_teacher(str(tiny_model_dir), "sqlite:///x.db", tmp_path)
    with pytest.raises(ConfigError, match=r"train\.distill\.teacher: .*not an exported"):
        distill.open_teacher("nowhere", "sqlite:///x.db", tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(ConfigError, match=r"'models:/absent/1' is not in the registry"):
        distill.open_teacher("models:/absent/1", uri, tmp_path)
    with pytest.raises(ConfigError, match="not models:/<name>/<version>"):
        distill.open_teacher("models:/absent", uri, tmp_path)
    with pytest.raises(ConfigError, match=r"train\.distill\.alpha"):
        validate_params({"train": {"distill": {"alpha": 1.5}}}, "params.yaml")


def test_token_classification_refuses_a_teacher() -> None:
    from pipeline import tasks

    tree = preset("params.ner.yaml")
    set_dotted(tree, "train.distill.teacher", "models:/t/1")
    params = validate_params(tree, "params.ner.yaml")
    with pytest.raises(ConfigError, match=r"train\.distill\.teacher: .*text classification"):
        tasks.get("token-classification").check(params)


def test_the_teachers_logits_are_its_bundles_cached_and_in_the_students_label_order(
    exported: ExportResult, trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    teacher = distill.open_teacher(str(exported.export_dir), "sqlite:///x.db", tmp_path)
    texts = pd.read_parquet(trained.paths.data_prepared / "test.parquet")["text"].tolist()[:40]
    expected = load_bundle(exported.export_dir, model="fp32").logits(texts)
    found = distill.teacher_logits(teacher, texts, LABELS, tmp_path)
    np.testing.assert_allclose(found, expected, atol=1e-5)
    assert len(list((tmp_path / "teacher_logits").glob("*.npy"))) == 1

    def not_again(*args: Any, **kwargs: Any) -> np.ndarray:
        raise AssertionError("the teacher ran again on texts it has scored")

    monkeypatch.setattr(teacher.bundle, "logits", not_again)
    swapped = distill.teacher_logits(teacher, texts, LABELS[::-1], tmp_path)
    np.testing.assert_allclose(swapped, found[:, ::-1], atol=0)
    with pytest.raises(ConfigError, match="same classes"):
        distill.teacher_logits(teacher, texts, ("ham", "spam"), tmp_path)


def test_the_teacher_is_scored_on_the_test_split_as_export_scored_its_fp32_file(
    exported: ExportResult, trained: Trained, tmp_path: Path
) -> None:
    teacher = distill.open_teacher(str(exported.export_dir), "sqlite:///x.db", tmp_path)
    scores = distill.teacher_test_scores(teacher, TEXT, trained.paths.data_prepared)
    fp32 = json.loads((exported.export_dir / "bundle.json").read_text())["models"]["fp32"]
    assert scores["test_macro_f1"] == pytest.approx(fp32["macro_f1"], abs=1e-6)
    assert scores["test_accuracy"] == pytest.approx(fp32["accuracy"], abs=1e-6)


def test_a_student_on_the_soft_targets_alone_follows_its_teacher(
    exported: ExportResult, trained: Trained, tmp_path: Path
) -> None:
    """alpha 1: the labels do not count, so the student learns the teacher's answers. The
    teacher here is the exported bundle with its two labels swapped (it says the opposite
    of the model trained on labels): the distilled student must agree with it more than
    the student trained on labels (the `trained` fixture: same data, model and steps)."""
    swapped = tmp_path / "teacher"
    shutil.copytree(exported.export_dir, swapped)
    (swapped / "labels.json").write_text(json.dumps(list(LABELS[::-1])) + "\n")
    teacher = distill.open_teacher(str(swapped), "sqlite:///x.db", tmp_path)
    cfg = TrainConfig.model_validate(
        trained.params.train.model_dump() | {"distill": {"teacher": "t", "alpha": 1.0}}
    )
    out = tmp_path / "student"
    result = train(
        TEXT,
        trained.params.model,
        cfg,
        trained.paths.data_prepared,
        out / "candidate",
        out / "checkpoints",
        tmp_path / "cache",
        teacher=teacher,
    )
    assert result.global_steps == trained.result.global_steps
    summary = json.loads((out / "candidate" / "training_summary.json").read_text())["distill"]
    scores = distill.teacher_test_scores(teacher, TEXT, trained.paths.data_prepared)
    assert summary["teacher_test_macro_f1"] == round(scores["test_macro_f1"], 6)
    assert summary["teacher_source"] == str(swapped.resolve())
    assert (summary["alpha"], summary["temperature"]) == (1.0, 2.0)

    texts = pd.read_parquet(trained.paths.data_prepared / "train.parquet")["text"].tolist()
    # In the student's label order: the swapped bundle's logits columns are renamed.
    teacher_says = distill.teacher_logits(teacher, texts, LABELS, tmp_path).argmax(axis=1)

    def agreement(candidate: Path) -> float:
        model = load_classifier(candidate).eval()
        tokenizer = load_tokenizer(candidate)
        enc = tokenizer(texts, truncation=True, max_length=32, padding=True, return_tensors="pt")
        with torch.no_grad():
            said = model(**enc).logits.argmax(dim=1).numpy()
        return float((said == teacher_says).mean())

    distilled, labelled = agreement(out / "candidate"), agreement(trained.paths.candidate)
    assert distilled > labelled + 0.2, (distilled, labelled)
