"""Knowledge distillation (train.distill): the student learns from a larger teacher's logits.

The teacher is an exported tuneops bundle, named by `train.distill.teacher`: a registered
version (`models:/<name>/<version>` or `models:/<name>@<alias>`, its files checked against
the checksums recorded at registration) or a bundle folder. Its fp32 file's logits on the
train split are computed once, with onnxruntime (each text read through the teacher's own
tokenizer and window, as its runtime reads it), and cached by the teacher's files and the
texts; every window of a chunked text gets its text's logits. The student's loss is

    (1 - alpha) * CE(y, s) + alpha * T^2 * KL(softmax(t / T) || softmax(s / T))

(Hinton, Vinyals & Dean 2015, "Distilling the knowledge in a neural network": T^2 keeps the
soft part's gradients on the scale of the hard part's). The hard part is class-weighted
under train.class_weights; the soft part is not, the teacher's distribution is its own view
of the classes. Validation and test scoring are the student's alone, as without a teacher.

Written here, not taken from a library: transformers' library API has no distillation
Trainer (its DistilBERT scripts are research examples), and the loss is the three lines of
`distillation_loss`; the rest is reading the teacher from the registry once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from tuneops.errors import ConfigError
from tuneops.paths import atomic_file

TEACHER_COLUMN = "teacher_logits"  # the train split's column of the teacher's logits
KEY = "train.distill.teacher"
MODELS_PREFIX = "models:/"
# The teacher's full-precision file: its soft targets as exact as the bundle has them (an
# int8 file's dynamic quantisation scales each batch, so its logits depend on the batching).
MODEL = "fp32"


@dataclass
class Teacher:
    """An opened teacher bundle and where it came from."""

    spec: str  # as params.yaml names it
    source: str  # models:/<name>/<version> (an alias resolved) or the bundle folder
    bundle: Any  # tuneops.runtime.OnnxClassifier on the bundle's fp32 file (MODEL)
    fingerprint: str  # sha256 over its files' sha256s: the logits cache key's part


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch."""
    t = temperature
    log_student = nn.functional.log_softmax(student.float() / t, dim=-1)
    log_teacher = nn.functional.log_softmax(teacher.float().to(student.device) / t, dim=-1)
    kl = nn.functional.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return kl * t * t


def open_teacher(spec: str, tracking_uri: str, root: Path, task: str | None = None) -> Teacher:
    """The teacher `spec` names (see the module docstring), a text classifier whose bundle
    runtime is the one of `task` (the student's; None: not checked); ConfigError saying what
    to set when it names nothing that can be opened or another task's bundle."""
    from tuneops.runtime import RUNTIMES, OnnxClassifier

    if spec.startswith(MODELS_PREFIX):
        teacher = _registered(spec, tracking_uri)
    else:
        teacher = _folder(spec, root)
    runtime = type(teacher.bundle)
    if runtime is not OnnxClassifier or (task is not None and RUNTIMES.get(task) is not runtime):
        raise ConfigError(
            f"{KEY}: {teacher.source} is a {teacher.bundle.meta.get('task')} bundle "
            f"({runtime.__name__}); a teacher must classify texts (one label per text), as "
            f"the student does{f' ({task})' if task else ''}"
        )
    return teacher


def _registered(spec: str, tracking_uri: str) -> Teacher:
    from mlflow.exceptions import MlflowException

    from pipeline.registered import open_version, recorded_checksums
    from tuneops.tracking import store_client

    rest = spec.removeprefix(MODELS_PREFIX)
    name, at, alias = rest.partition("@")
    if not at:
        name, _, alias = rest.rpartition("/")
    if not name or not alias:
        raise ConfigError(
            f"{KEY}: {spec!r} is not models:/<name>/<version> or models:/<name>@<alias>"
        )
    client = store_client(tracking_uri)
    try:
        version = (
            client.get_model_version_by_alias(name, alias)
            if at
            else client.get_model_version(name, alias)
        )
    except MlflowException as exc:
        raise ConfigError(
            f"{KEY}: {spec!r} is not in the registry at {tracking_uri} "
            f"({exc.message.splitlines()[0]}); set it to a registered version "
            "(tuneops compare lists them) or to a bundle folder"
        ) from None
    tags = dict(version.tags)
    bundle = open_version(tracking_uri, name, str(version.version), tags, model=MODEL)
    checksums = sorted(recorded_checksums(tags).items())
    return Teacher(spec, f"models:/{name}/{version.version}", bundle, _fingerprint(checksums))


def _folder(spec: str, root: Path) -> Teacher:
    from pipeline.registered import bundle_checksums
    from tuneops.runtime import load_bundle

    folder = Path(spec).expanduser()
    folder = (folder if folder.is_absolute() else root / folder).resolve()
    if not (folder / "bundle.json").is_file():
        hint = (
            " (an HF model folder: export it first, `tuneops stage export`, and name "
            "its models/export)"
            if (folder / "config.json").is_file()
            else ""
        )
        raise ConfigError(
            f"{KEY}: {folder} is not an exported tuneops bundle (no bundle.json){hint}; set it "
            "to a bundle folder or to a registered version, models:/<name>/<version>"
        )
    bundle = load_bundle(folder, model=MODEL)
    checksums = sorted(bundle_checksums(folder).items())
    return Teacher(spec, str(folder), bundle, _fingerprint(checksums))


def _fingerprint(checksums: list[tuple[str, str]]) -> str:
    return hashlib.sha256(json.dumps(checksums).encode()).hexdigest()


def teacher_logits(
    teacher: Teacher, texts: list[str], labels: tuple[str, ...], cache_dir: Path
) -> np.ndarray:
    """The teacher's logits [len(texts), len(labels)], columns in `labels`' order; read from
    cache_dir/teacher_logits/ when this teacher already scored these texts."""
    theirs = list(teacher.bundle.labels)
    if sorted(theirs) != sorted(labels):
        raise ConfigError(
            f"{KEY}: {teacher.source} predicts {theirs}, but the prepared data has "
            f"{list(labels)}; a teacher must be trained on the same classes"
        )
    digest = hashlib.sha256(teacher.fingerprint.encode())
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    path = cache_dir / "teacher_logits" / f"{digest.hexdigest()}.npy"
    if path.exists():
        logits = np.load(path)
    else:
        logits = np.asarray(teacher.bundle.logits(texts, batch_size=64), np.float32)
        with atomic_file(path) as tmp:
            np.save(tmp, logits, allow_pickle=False)
    return logits[:, [theirs.index(label) for label in labels]]


def attach(
    splits: Any,
    teacher: Teacher,
    prepared_dir: Path,
    labels: tuple[str, ...],
    cache_dir: Path,
    log: logging.Logger | logging.LoggerAdapter[Any],
) -> tuple[Any, dict[str, Any]]:
    """The tokenised splits with the teacher's logits on each train window (column
    TEACHER_COLUMN), and the training summary's `distill` entry: the teacher and its
    accuracy on the train texts."""
    train = pd.read_parquet(prepared_dir / "train.parquet")
    texts = train["text"].tolist()
    windows = np.asarray(splits["train"]["window"])
    # The tokenised split keeps the parquet's order; a text's windows follow each other,
    # its first at window 0.
    documents = np.cumsum(windows == 0) - 1
    if documents[-1] + 1 != len(texts):
        raise RuntimeError(f"{len(texts)} train texts but {documents[-1] + 1} tokenised texts")
    log.info(f"distillation: the teacher {teacher.source} scores {len(texts)} train texts")
    logits = teacher_logits(teacher, texts, labels, cache_dir)
    ids = {label: i for i, label in enumerate(labels)}
    gold = train["label"].map(ids).to_numpy()
    summary = {
        "teacher": teacher.spec,
        "teacher_source": teacher.source,
        "teacher_train_accuracy": round(float((logits.argmax(axis=1) == gold).mean()), 6),
    }
    return splits["train"].add_column(TEACHER_COLUMN, logits[documents].tolist()), summary


def teacher_test_scores(teacher: Teacher, task: Any, prepared_dir: Path) -> dict[str, float]:
    """The teacher re-scored on the current test split, as the gate scores a model:
    test_* figures (unrounded)."""
    split = task.test_split(prepared_dir, list(teacher.bundle.labels))
    figures, _ = split.report(split.rescore(teacher.bundle))
    return {k: float(v) for k, v in figures.items() if isinstance(v, int | float)}


def gate_note(summary: dict[str, Any], task: Any) -> str:
    """The gate report's line on the teacher (reported, not judged): what it scored on the
    test split the student is judged on (the training summary's `distill` entry)."""
    score = summary.get(f"teacher_{task.primary_metric}")
    scored = (
        f"scored test {task.primary_metric_label} {score:.4f} on this test split"
        if score is not None
        else "was not scored"
    )
    return (
        f"distilled from the teacher {summary['teacher_source']}, which {scored} "
        f"(alpha {summary['alpha']}, temperature {summary['temperature']}; reported, not judged)"
    )
