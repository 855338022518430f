"""Token-classification (NER, slot filling) data: CoNLL/JSONL reading, BIO checks, label alignment.

The tag scheme is IOB2: every entity starts with B-TYPE, continues with I-TYPE; an I-TYPE
after O, at the start of a sentence, or after a tag of another type is an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.io import jsonl_records, raw_files, read_text
from tuneops.errors import DataValidationError
from tuneops.runtime import iob2_entities as entities  # noqa: F401  (one implementation)

OUTSIDE = "O"
INTENT_KEY = "intent"  # a JSONL sentence's intent (read when present, written when set)


@dataclass(frozen=True)
class Sentence:
    tokens: list[str]
    tags: list[str]
    source: str  # "file:line" of the sentence's first line, for error messages
    split: str | None = None  # "test" when the dataset ships its own test split
    intent: str | None = None  # the sentence's intent (JSONL "intent"; intent-and-slots)


def read_conll(path: Path, split: str | None = None, encoding: str = "utf-8") -> list[Sentence]:
    """One token per line, the tag in the last column, a blank line between sentences.

    `-DOCSTART-` lines are skipped. A non-blank line with a single column is an error
    naming the line.
    """
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    text = read_text(path, encoding)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            if tokens:
                sentences.append(Sentence(tokens, tags, f"{path.name}:{start}", split))
            tokens, tags = [], []
            continue
        if line.startswith("-DOCSTART-"):
            continue
        columns = line.split()
        if len(columns) < 2:
            raise DataValidationError(
                f"{path}:{number}: expected 'token ... tag' (at least two columns), found {line!r}"
            )
        if not tokens:
            start = number
        tokens.append(columns[0])
        tags.append(columns[-1])
    if tokens:
        sentences.append(Sentence(tokens, tags, f"{path.name}:{start}", split))
    return sentences


def read_token_jsonl(
    path: Path, tokens_key: str, tags_key: str, encoding: str = "utf-8"
) -> list[Sentence]:
    """JSON lines with a list of tokens and a list of tags (and an optional "split")."""
    sentences = []
    for number, record in jsonl_records(path, encoding):
        missing = [k for k in (tokens_key, tags_key) if k not in record]
        if missing:
            raise DataValidationError(
                f"{path}:{number}: missing field(s) {missing}; expected {tokens_key!r} and "
                f"{tags_key!r} lists, found {sorted(record)}"
            )
        for key in (tokens_key, tags_key):
            value = record[key]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise DataValidationError(
                    f"{path}:{number}: field {key!r} must be a list of strings, found {value!r}"
                )
        intent = record.get(INTENT_KEY)
        sentences.append(
            Sentence(
                record[tokens_key],
                record[tags_key],
                f"{path.name}:{number}",
                record.get("split"),
                None if intent is None else str(intent),
            )
        )
    return sentences


def read_sentences(
    path: Path, tokens_key: str = "tokens", tags_key: str = "tags", encoding: str = "utf-8"
) -> list[Sentence]:
    if path.suffix.lower() == ".jsonl":
        return read_token_jsonl(path, tokens_key, tags_key, encoding)
    return read_conll(path, encoding=encoding)


TOKEN_SUFFIXES = (".jsonl", ".conll", ".bio")


def read_raw_sentences(
    dataset_dir: Path,
    tokens_key: str,
    tags_key: str,
    max_rows: int | None = None,
    encoding: str = "utf-8",
) -> list[Sentence]:
    """Every batch of a token dataset (JSONL or CoNLL files, text in `encoding`), in file
    order."""
    sentences = []
    for path in raw_files(dataset_dir, TOKEN_SUFFIXES):
        found = read_sentences(path, tokens_key, tags_key, encoding)
        if not found:
            raise DataValidationError(f"{path}: no sentences; expected at least one")
        sentences += found
    if max_rows:  # a hash-chosen slice, as for text datasets
        import hashlib

        def key(s: Sentence) -> str:
            return hashlib.sha256(f"slice:{' '.join(s.tokens)}".encode()).hexdigest()

        chosen = {id(s) for s in sorted(sentences, key=key)[:max_rows]}
        sentences = [s for s in sentences if id(s) in chosen]
    return sentences


def write_jsonl(path: Path, sentences: list[Sentence]) -> None:
    lines = (
        json.dumps(
            {"tokens": s.tokens, "tags": s.tags, "split": s.split}
            | ({INTENT_KEY: s.intent} if s.intent is not None else {}),
            ensure_ascii=False,
        )
        for s in sentences
    )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def bio_error(tags: list[str]) -> str | None:
    """The first IOB2 violation in a tag sequence, described; None when consistent."""
    previous = OUTSIDE
    for i, tag in enumerate(tags):
        if tag != OUTSIDE and not tag.startswith(("B-", "I-")):
            return f"tag {i} {tag!r} is neither 'O' nor B-TYPE / I-TYPE"
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            after = "the sentence start" if i == 0 else f"{previous!r}"
            return f"tag {i} {tag!r} follows {after}; an I- tag must continue B-/I- of its type"
        previous = tag
    return None


def entity_types(tags: list[str] | tuple[str, ...]) -> list[str]:
    return sorted({t[2:] for t in tags if t != OUTSIDE})


def align_labels(
    word_ids: list[int | None], word_tags: list[int], all_subtokens: bool
) -> list[int]:
    """Per-sub-token label ids: the first sub-token of a word carries the word's tag.

    Special tokens get -100 (ignored by the loss); the other sub-tokens of a word get
    -100 too, or the word's tag when `all_subtokens`.
    """
    labels = []
    previous = None
    for word in word_ids:
        if word is None:
            labels.append(-100)
        elif word != previous or all_subtokens:
            labels.append(word_tags[word])
        else:
            labels.append(-100)
        previous = word
    return labels
