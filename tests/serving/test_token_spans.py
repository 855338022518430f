"""Entity spans from per-word tags: character offsets into the original text (audit M16:
a raw text's words are its whitespace-separated runs, the unit the model was trained on)."""

import numpy as np
import pytest

from tuneops.runtime import Entity, word_entities, words_in

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-TIME", "I-TIME"]


def planted(text: str, word_tags: dict[int, str], cut_from: int | None = None) -> list[Entity]:
    """Logits that put `word_tags[w]` (else O) on word w, with probability 0.9; words from
    `cut_from` on have no logits (NaN), as words cut off by max_length."""
    spans = words_in(text)
    logits = np.zeros((len(spans), len(LABELS)), dtype=np.float32)
    for word in range(len(spans)):
        logits[word, LABELS.index(word_tags.get(word, "O"))] = np.log(0.9 / (0.1 / 6))
    if cut_from is not None:
        logits[cut_from:] = np.nan
    return word_entities(text, spans, logits, LABELS)


def test_words_are_whitespace_runs_with_their_punctuation_and_offsets_into_the_text() -> None:
    text = "Jean-Pierre flew to São Paulo at 5:30pm, twice."
    assert [text[a:b] for a, b in words_in(text)] == [
        "Jean-Pierre", "flew", "to", "São", "Paulo", "at", "5:30pm,", "twice.",
    ]  # fmt: skip
    found = planted(text, {0: "B-PER", 3: "B-LOC", 4: "I-LOC", 6: "B-TIME"})
    assert [(e.type, e.text, e.start, e.end) for e in found] == [
        ("PER", "Jean-Pierre", 0, 11),  # one word, tagged at its first piece as in training
        ("LOC", "São Paulo", 20, 29),
        ("TIME", "5:30pm,", 33, 40),  # attached punctuation is part of the word (documented)
    ]
    assert all(text[e.start : e.end] == e.text for e in found)
    assert all(e.score == pytest.approx(0.9) for e in found)


def test_adjacent_b_tags_are_two_entities_and_any_whitespace_separates_words() -> None:
    text = "  Ottawa \n\tToronto "
    found = planted(text, {0: "B-LOC", 1: "B-LOC"})
    assert [(e.text, e.start, e.end) for e in found] == [("Ottawa", 2, 8), ("Toronto", 11, 18)]
    assert planted("nothing here", {}) == []
    assert planted("", {}) == []


def test_a_word_cut_off_by_max_length_is_o_and_ends_the_entity_before_it() -> None:
    found = planted("from new york city", {1: "B-LOC", 2: "I-LOC", 3: "I-LOC"}, cut_from=3)
    assert [(e.text, e.start, e.end) for e in found] == [("new york", 5, 13)]
