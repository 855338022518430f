"""Behavioural checks of token classification: the entities a model finds in a sentence.

The file's format is pipeline/behaviour.py's (the same Suite, floors, reports and gate),
with entity cases instead of label ones. A sentence is its whitespace-separated words,
as the runtime tags a raw text (tuneops.runtime.OnnxTokenClassifier), and an entity is
(type, its words):

- mft: `examples` of {text, entities: [{type, text}, ...]} ([] for none); a case passes
  when the entities predicted are exactly the expected ones (the same (type, words), as
  many times each). Exactly, not "contains": an entity found where there is none is an
  error as seqeval's precision counts it, so a check's examples list every entity.
- inv: test rows (`sample`, with their gold tags) and/or `examples` under one edit:
  punctuation (a full stop appended as a word of its own, or a last word of only
  punctuation removed; `texts` may be given too), typos (two adjacent letters swapped in
  one word outside every gold entity), swap_entity (one gold entity of `types`, or of any
  type, replaced by another value of its type among the check's cases). A case passes
  when the predicted entities outside the edit are the same (the words before and after
  it, shifted by its length) and, for swap_entity, the edited words are predicted as the
  same entity as the original words were (a city predicted fromloc.city_name stays one;
  one not found stays not found). An entity that covers part of the edit is not judged.

Cases depend on the gold entities and the check's seed, never on a model, so the
candidate and the champion are scored on the same cases.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from pipeline.behaviour import CheckResult, CheckSpec, Failure, Suite, sampled, typo
from pipeline.tasks.iob2 import entities
from tuneops.errors import ConfigError

# IOB2 tags per word of each sentence (OnnxTokenClassifier.predict_words).
Tagger = Callable[[list[list[str]]], list[list[str]]]
Span = tuple[str, int, int]  # (type, first word, last word + 1)


@dataclass(frozen=True)
class TokenCase:
    words: list[str]
    expected: list[tuple[str, str]] | None = None  # mft: (type, words) in the file's order
    edited: list[str] | None = None  # inv: the words after the edit
    # inv: words[start:end] became edited[start:start + length]
    edit: tuple[int, int, int] = (0, 0, 0)
    keep: bool = False  # the edited words must keep the original's entity (swap_entity)


@dataclass(frozen=True)
class EntityChecks:
    """The checks of a task that tags words with IOB2 entities."""

    types: tuple[str, ...] = ("mft", "inv")
    perturbations: tuple[str, ...] = ("punctuation", "typos", "swap_entity")
    example_key: str = "entities"

    def refuse(self, suite: Suite, task: str) -> None:
        for index, check in enumerate(suite.checks):
            if check.texts and check.perturbation != "punctuation":
                raise suite.refuse(
                    index,
                    "texts",
                    f"a {check.perturbation} check of {task} needs the entities: `sample` "
                    "(test rows) or `examples` ({text, entities}), not `texts`",
                )
            if check.types and check.perturbation != "swap_entity":
                raise suite.refuse(index, "types", "`types` is for swap_entity checks")
            for i, example in enumerate(check.examples):
                gold_spans(suite, index, i, example.text.split(), example.entities or ())

    def run(self, suite: Suite, bundle: Any, split: Any) -> list[CheckResult]:
        return evaluate(suite, lambda s: bundle.predict_words(s, batch_size=64), split)


CHECKER = EntityChecks()


def gold_spans(
    suite: Suite, index: int, example: int, words: list[str], expected: Any
) -> list[Span]:
    """The word span of each expected entity (its first run of words in the sentence);
    ConfigError naming the entity when its words are not a run of the sentence's."""
    spans = []
    for j, entity in enumerate(expected):
        run = entity.text.split()
        start = next(
            (i for i in range(len(words) - len(run) + 1) if words[i : i + len(run)] == run), None
        )
        if start is None:
            raise suite.refuse(
                index,
                f"examples[{example}].entities[{j}]",
                f"{entity.text!r} is not a run of words of {' '.join(words)!r}",
            )
        spans.append((entity.type, start, start + len(run)))
    return spans


def cases(suite: Suite, check: CheckSpec, split: Any) -> list[TokenCase]:
    """A check's cases; `sample` draws test rows of `split` (sentences, gold tags) with the
    check's seed. Edits that change nothing are left out."""
    index = suite.checks.index(check)
    if check.type == "mft":
        return [
            TokenCase(e.text.split(), expected=[(t.type, t.text) for t in e.entities or ()])
            for e in check.examples
        ]
    rows = [
        (e.text.split(), gold_spans(suite, index, i, e.text.split(), e.entities or ()))
        for i, e in enumerate(check.examples)
    ]
    rows += [
        (list(split.sentences[i]), entities(list(split.tags[i])))
        for i in sampled(check, len(split.sentences))
    ]
    rows += [(t.split(), []) for t in check.texts]
    pool = _values(rows, check.types)
    found = [_edit(check, words, gold, pool) for words, gold in rows]
    return [c for c in found if c is not None and c.edited != c.words]


def _values(
    rows: list[tuple[list[str], list[Span]]], types: tuple[str, ...]
) -> dict[str, list[str]]:
    """swap_entity's replacements: the values (words) of each type among the cases."""
    values: dict[str, set[str]] = {}
    for words, gold in rows:
        for kind, start, end in gold:
            if not types or kind in types:
                values.setdefault(kind, set()).add(" ".join(words[start:end]))
    return {kind: sorted(found) for kind, found in values.items()}


def _edit(
    check: CheckSpec, words: list[str], gold: list[Span], pool: dict[str, list[str]]
) -> TokenCase | None:
    """One sentence under the check's perturbation, seeded by the seed and the sentence."""
    rng = np.random.default_rng([check.seed, zlib.crc32(" ".join(words).encode("utf-8"))])
    n = len(words)
    if check.perturbation == "punctuation":
        if n and not any(ch.isalnum() for ch in words[-1]):
            return TokenCase(words, edited=words[:-1], edit=(n - 1, n, 0))
        return TokenCase(words, edited=[*words, "."], edit=(n, n, 1))
    if check.perturbation == "typos":
        inside = {i for _, start, end in gold for i in range(start, end)}
        spots = [i for i, w in enumerate(words) if i not in inside and _typable(w)]
        if not spots:
            return None
        i = spots[int(rng.integers(len(spots)))]
        return TokenCase(
            words, edited=[*words[:i], typo(words[i], rng), *words[i + 1 :]], edit=(i, i + 1, 1)
        )
    # swap_entity
    swappable = [
        (kind, start, end)
        for kind, start, end in gold
        if kind in pool and [v for v in pool[kind] if v != " ".join(words[start:end])]
    ]
    if not swappable:
        return None
    kind, start, end = swappable[int(rng.integers(len(swappable)))]
    others = [v for v in pool[kind] if v != " ".join(words[start:end])]
    value = others[int(rng.integers(len(others)))].split()
    edited = [*words[:start], *value, *words[end:]]
    return TokenCase(words, edited=edited, edit=(start, end, len(value)), keep=True)


def _typable(word: str) -> bool:
    """The word has two adjacent, different letters for `typo` to swap."""
    return any(a.isalpha() and b.isalpha() and a != b for a, b in pairwise(word))


def evaluate(suite: Suite, tag: Tagger, split: Any) -> list[CheckResult]:
    """Every check's pass rate under `tag`. Each check's sentences are tagged in a call of
    their own (int8 dynamic quantisation scales activations per batch: one check's rate
    must not move when another joins the file). ConfigError for a check with no case."""
    built = [cases(suite, check, split) for check in suite.checks]
    for index, (check, found) in enumerate(zip(suite.checks, built, strict=True)):
        if not found:
            raise ConfigError(
                f"{suite.path}: {suite.key(index, check.name)}: no case: its "
                f"{check.perturbation} perturbation changes none of its sentences (swap_entity "
                "needs two values of a type among them; typos a word outside the entities)"
            )
    return [
        _result(suite, index, check, found, _predicted(tag, found))
        for index, (check, found) in enumerate(zip(suite.checks, built, strict=True))
    ]


def _predicted(tag: Tagger, found: list[TokenCase]) -> dict[tuple[str, ...], list[Span]]:
    """Each sentence of the cases (originals and edits) -> its predicted entities."""
    sentences = list(
        dict.fromkeys(tuple(s) for c in found for s in (c.words, c.edited) if s is not None)
    )
    tags = tag([list(s) for s in sentences])
    return {s: entities(list(t)) for s, t in zip(sentences, tags, strict=True)}


def _result(
    suite: Suite,
    index: int,
    check: CheckSpec,
    found: list[TokenCase],
    predicted: dict[tuple[str, ...], list[Span]],
) -> CheckResult:
    failures = []
    for case in found:
        before = predicted[tuple(case.words)]
        if case.edited is None:
            got = [(kind, " ".join(case.words[a:b])) for kind, a, b in before]
            if Counter(got) != Counter(case.expected or []):
                failures.append(
                    Failure(" ".join(case.words), None, _names(case.expected or []), _names(got))
                )
            continue
        after = predicted[tuple(case.edited)]
        if _outside(before, case, edited=False) != _outside(after, case, edited=True):
            failures.append(
                Failure(
                    " ".join(case.words),
                    " ".join(case.edited),
                    f"the same entities outside the edit as {_described(before, case.words)}",
                    _described(after, case.edited),
                )
            )
    return CheckResult.of(suite, index, check, len(found), failures, check.perturbation or "")


def _outside(spans: list[Span], case: TokenCase, edited: bool) -> set[tuple[str, str, int, int]]:
    """The entities of one side of an edit in a frame both sides share: before the edit
    as they are, after it shifted back by its length, and the edit itself (swap_entity)
    as "edit"; an entity covering part of the edit is left out."""
    start, end, length = case.edit
    stop = start + length if edited else end
    kept = set()
    for kind, a, b in spans:
        if b <= start:
            kept.add((kind, "before", a, b))
        elif a >= stop:
            kept.add((kind, "after", a - stop, b - stop))
        elif case.keep and (a, b) == (start, stop):
            kept.add((kind, "edit", 0, 0))
    return kept


def _names(found: list[tuple[str, str]]) -> str:
    return ", ".join(f"{kind} {words!r}" for kind, words in found) or "no entity"


def _described(spans: list[Span], words: list[str]) -> str:
    return _names([(kind, " ".join(words[a:b])) for kind, a, b in spans])
