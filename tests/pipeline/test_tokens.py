"""Token-classification data helpers: CoNLL reading, IOB2 checks, spans, label alignment."""

from pathlib import Path

import pytest

from pipeline.tasks.iob2 import align_labels, bio_error, entities, read_conll
from tuneops.errors import DataValidationError


def test_conll_sentences_skip_docstart_and_name_their_first_line(tmp_path: Path) -> None:
    path = tmp_path / "train.conll"
    path.write_text(
        "-DOCSTART- -X- O O\n\nEU NNP B-ORG\nrejects VBZ O\n\n"
        "Peter NNP B-PER\nBlackburn NNP I-PER\n"
    )
    sentences = read_conll(path)
    assert [(s.tokens, s.tags, s.source) for s in sentences] == [
        (["EU", "rejects"], ["B-ORG", "O"], "train.conll:3"),
        (["Peter", "Blackburn"], ["B-PER", "I-PER"], "train.conll:6"),
    ]


def test_a_conll_line_without_a_tag_column_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.conll"
    path.write_text("EU B-ORG\nrejects\n")
    with pytest.raises(DataValidationError, match=r"bad.conll:2: expected 'token \.\.\. tag'"):
        read_conll(path)


@pytest.mark.parametrize(
    ("tags", "error"),
    [
        (["B-PER", "I-PER", "O", "B-LOC"], None),
        (["I-PER"], "tag 0 'I-PER' follows the sentence start"),
        (["O", "I-LOC"], "tag 1 'I-LOC' follows 'O'"),
        (["B-PER", "I-LOC"], "tag 1 'I-LOC' follows 'B-PER'"),
        (["B-PER", "PER"], "tag 1 'PER' is neither 'O' nor B-TYPE / I-TYPE"),
    ],
)
def test_iob2_violations_are_found_and_described(tags: list[str], error: str | None) -> None:
    found = bio_error(tags)
    assert found == error if error is None else found is not None and found.startswith(error)


def test_entities_are_word_spans_and_a_stray_i_starts_a_new_one() -> None:
    tags = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-ORG", "I-ORG"]
    assert entities(tags) == [("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 5), ("ORG", 5, 7)]


def test_only_the_first_sub_token_of_a_word_carries_its_tag() -> None:
    # [CLS] new york ##er [SEP]: word 1 is split in two
    word_ids = [None, 0, 1, 1, None]
    assert align_labels(word_ids, [3, 4], all_subtokens=False) == [-100, 3, 4, -100, -100]
    assert align_labels(word_ids, [3, 4], all_subtokens=True) == [-100, 3, 4, 4, -100]
