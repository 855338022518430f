"""The bad-input corpus: every case, its file's bytes, and what tuneops must say about it.

`python tests/data/bad/corpus.py` (re)writes the files beside it (tests/data/bad/text/,
ner/, accepted/); tests/reliability/test_bad_input.py checks that the committed files
equal what this script writes, then runs each one through `tuneops ingest` and
`tuneops run`. Binary cases (non-UTF-8, a truncated Parquet file) are committed like the
others; the 5 MB single text is not (it would be the largest file in the repository):
`huge_text()` writes it at test time.

Text cases are batches for the bundled movie_sentiment dataset (labels negative,
positive); NER cases are batches for the bundled ATIS slots (its 127 IOB2 tags). Ingest
checks a batch's own rows alone and the rest (every label present, rows per label,
repeats) on the dataset it grows, so a case that breaks only the rest is a `run` case:
as a batch it is accepted.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
DATA_EXIT = 3  # DataValidationError (README, exit codes)


@dataclass(frozen=True)
class Case:
    """One input tuneops must reject (or, for `accepted`, read correctly)."""

    name: str  # file name under tests/data/bad/<kind>/
    kind: str  # "text" (movie_sentiment batches), "ner" (ATIS batches) or "accepted"
    what: str  # the fault, as the reliability table says it
    content: bytes = b""
    # Fragments the one-line error must hold (the file is always checked too): the row or
    # field it names and what was expected.
    says: tuple[str, ...] = ()
    # Entry points that reject it: `tuneops ingest` (a new batch) and `tuneops run` (the
    # file as the dataset). A batch may be fine alone and still unusable as a whole dataset.
    paths: tuple[str, ...] = ("ingest", "run")
    exit_code: int = DATA_EXIT
    generated: bool = False  # written at test time, not committed
    # `--set KEY=VALUE` options the entry points run with (a policy that is not the default).
    settings: tuple[str, ...] = ()
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return HERE / self.kind / self.name


def good_rows(tag: str, per_label: int = 12) -> list[tuple[str, str]]:
    """Valid rows no bundled snippet repeats: `per_label` of each label."""
    words = {"negative": "tedious", "positive": "moving"}
    return [
        (f"tuneops corpus {tag} row {i}: a {words[label]} film", label)
        for i in range(per_label)
        for label in ("negative", "positive")
    ]


def csv_bytes(rows: list[tuple[object, ...]], header: tuple[str, ...] = ("text", "label")) -> bytes:
    frame = pd.DataFrame(rows, columns=list(header))
    return frame.to_csv(index=False, lineterminator="\n").encode("utf-8")


def jsonl_bytes(records: list[dict[str, object]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def records(rows: list[tuple[str, str]]) -> list[dict[str, object]]:
    return [{"text": t, "label": label} for t, label in rows]


def truncated_parquet() -> bytes:
    buffer = io.BytesIO()
    pd.DataFrame(good_rows("parquet"), columns=["text", "label"]).to_parquet(buffer, index=False)
    whole = buffer.getvalue()
    return whole[: len(whole) // 2]  # cut mid-file: the footer (schema, row groups) is gone


def split_starved() -> bytes:
    """2 negative rows whose texts hash out of the test split: too few to reach train,
    validation and test (a label with three or more gets a train row moved into the split
    its hashes missed, so that is normal data, not bad input)."""
    from pipeline.prepare import normalise_text, split_of

    def lands_in_test(text: str) -> bool:
        return split_of(normalise_text(text), 0.1, 0.1) == "test"

    candidates = (f"tuneops corpus starved row {i}: a tedious film" for i in range(1000))
    negative = [(t, "negative") for t in candidates if not lands_in_test(t)][:2]
    positive = [r for r in good_rows("starved", 40) if r[1] == "positive"]
    assert any(lands_in_test(t) for t, _ in positive), "positive rows must reach the test split"
    return csv_bytes([*positive, *negative])


def conflicts_with_existing() -> bytes:
    """A valid batch but for its last row: a bundled snippet with the opposite label."""
    from pipeline.fetch_data import _movie_sentiment

    bundled, _ = _movie_sentiment()
    text, label = bundled.iloc[0]["text"], bundled.iloc[0]["label"]
    flipped = "negative" if label == "positive" else "positive"
    return csv_bytes([*good_rows("existing"), (text, flipped)])


HUGE_TEXT_CHARS = 5 * 2**20


def huge_text(folder: Path) -> Path:
    """A valid batch but for one 5 MB text (validate.max_text_chars is 1,000,000)."""
    rows = [*good_rows("huge"), ("a" * (HUGE_TEXT_CHARS - 20) + " the end of it", "positive")]
    path = folder / "huge_text.csv"
    path.write_bytes(csv_bytes(rows))
    return path


def _ner(tokens: list[str], tags: list[str]) -> dict[str, object]:
    return {"tokens": tokens, "tags": tags}


NER_GOOD = [
    _ner(
        ["flights", "from", "boston", "to", "denver"],
        ["O", "O", "B-fromloc.city_name", "O", "B-toloc.city_name"],
    ),
    _ner(
        ["show", "me", "flights", "to", "new", "york"],
        ["O", "O", "O", "O", "B-toloc.city_name", "I-toloc.city_name"],
    ),
]

CASES: tuple[Case, ...] = (
    Case(
        "missing_text_column.csv",
        "text",
        "missing text column",
        csv_bytes(good_rows("a"), ("review", "label")),
        ("missing column(s) ['text']", "expected 'text' and 'label' (data.text_column"),
    ),
    Case(
        "missing_label_column.csv",
        "text",
        "missing label column",
        csv_bytes(good_rows("b"), ("text", "sentiment")),
        ("missing column(s) ['label']", "expected 'text' and 'label'"),
    ),
    Case(
        "empty_text.csv",
        "text",
        "an empty text",
        csv_bytes([*good_rows("c"), ("", "positive")]),
        ("expect_column_values_to_not_be_null column 'text'", "empty_text.csv:25"),
    ),
    Case(
        "whitespace_text.csv",
        "text",
        "a whitespace-only text",
        csv_bytes([*good_rows("d"), (" \t  ", "negative")]),
        ("expect_column_values_to_not_match_regex column 'text'", "whitespace_text.csv:25"),
    ),
    Case(
        "null_label.csv",
        "text",
        "a null label (CSV: empty field)",
        csv_bytes([*good_rows("e"), ("a film with no label", "")]),
        ("expect_column_values_to_not_be_null column 'label'", "null_label.csv:25"),
    ),
    Case(
        "null_label.jsonl",
        "text",
        "a null label (JSONL: null)",
        jsonl_bytes([*records(good_rows("f")), {"text": "a film with no label", "label": None}]),
        ("expect_column_values_to_not_be_null column 'label'", "null_label.jsonl:25"),
    ),
    Case(
        "label_outside_set.csv",
        "text",
        "a label outside the allowed set",
        csv_bytes([*good_rows("g"), ("a film nobody felt strongly about", "neutral")]),
        (
            "expect_column_values_to_be_in_set column 'label'",
            "label_outside_set.csv:25 ('neutral')",
            "value_set=['negative', 'positive']",
        ),
    ),
    Case(
        "mixed_label_types.jsonl",
        "text",
        "numeric and string labels mixed (JSONL)",
        jsonl_bytes([*records(good_rows("h")), {"text": "a film scored as a number", "label": 1}]),
        (
            "expect_label_values_to_share_one_type column 'label'",
            "mixed_label_types.jsonl:25 ('1, a number')",
            "every label a string, or every label a number",
        ),
    ),
    Case(
        "list_label.jsonl",
        "text",
        "a list of labels in a row (multi-label data) for single-label text classification",
        jsonl_bytes(
            [
                *records(good_rows("ml")),
                {"text": "a long and moving film", "label": ["long", "moving"]},
            ]
        ),
        (
            "expect_label_values_to_be_single column 'label'",
            "list_label.jsonl:25 (\"['long', 'moving']\")",
            "one label per row",
            "multi-label",
        ),
    ),
    Case(
        "non_utf8.csv",
        "text",
        "non-UTF-8 bytes (Latin-1 text)",
        b"text,label\n"
        + "".join(
            f"{t},{label}\n"
            for t, label in [
                *good_rows("i")[:12],
                ("un caf\xe9 tr\xe8s froid", "negative"),
                *good_rows("i")[12:],
            ]
        ).encode("latin-1"),
        ("non_utf8.csv:14: not valid UTF-8", "expected UTF-8 text", "set data.encoding"),
    ),
    Case(
        "truncated.parquet",
        "text",
        "a truncated (corrupt) Parquet file",
        truncated_parquet(),
        ("cannot be read as parquet", "magic bytes not found"),
    ),
    Case(
        "empty.csv",
        "text",
        "an empty file (0 bytes, CSV)",
        b"",
        ("empty file (0 bytes)", "expected a header and rows"),
    ),
    Case(
        "empty.jsonl",
        "text",
        "an empty file (0 bytes, JSONL)",
        b"",
        ("empty file (0 bytes)", "expected a header and rows"),
    ),
    Case(
        "header_only.csv",
        "text",
        "a header-only file",
        b"text,label\n",
        ("no data rows (a header only)", "expected at least one labelled row"),
    ),
    Case(
        "single_class.csv",
        "text",
        "a single-class batch (every row positive)",
        csv_bytes([r for r in good_rows("j", 24) if r[1] == "positive"]),
        (
            "expect_column_distinct_values_to_contain_set column 'label'",
            "value_set=['negative', 'positive']",
            "observed {'missing': ['negative']}",
        ),
        paths=("run",),  # as a batch, judged with the dataset: accepted
    ),
    Case(
        "single_class_inferred.csv",
        "text",
        "a single-class dataset with no label set given (labels inferred)",
        csv_bytes([r for r in good_rows("k", 24) if r[1] == "positive"]),
        ("expect_at_least_two_labels column 'label'", "expected at least 2 labels"),
        paths=("run",),
        notes={"labels_json": "none"},
    ),
    Case(
        "too_few_of_a_class.csv",
        "text",
        "a class with fewer rows than validate.min_examples_per_class (3 < 10)",
        csv_bytes(
            [r for r in good_rows("l", 20) if r[1] == "positive"]
            + [r for r in good_rows("l", 3) if r[1] == "negative"]
        ),
        (
            "expect_each_label_to_have_min_examples column 'label'",
            "negative: 3",
            "at least 10 rows per label",
        ),
        paths=("run",),  # as a batch, judged with the dataset: accepted
    ),
    Case(
        "conflicting_labels.csv",
        "text",
        "the same text with two different labels",
        csv_bytes(
            [
                *good_rows("m"),
                ("an utterly ordinary film", "positive"),
                ("an utterly  ordinary film", "negative"),
            ]
        ),
        (
            "expect_no_text_with_conflicting_labels column 'text'",
            "conflicting_labels.csv:25 (positive), conflicting_labels.csv:26 (negative)",
            "each text to have one label",
            "their 2 rows are 7.69% of 26, above validate.max_conflicting_rate: 0.01",
        ),
        paths=("run",),  # as a batch, judged with the dataset: accepted
    ),
    Case(
        "huge_text.csv",
        "text",
        "a 5 MB single text (validate.max_text_chars is 1,000,000)",
        says=(
            "expect_column_value_lengths_to_be_between column 'text'",
            "huge_text.csv:25",
            "max_value=1000000",
            "validate.max_text_chars: 1000000; 1 rows are longer (longest 5,242,874): raise it",
        ),
        generated=True,
    ),
    Case(
        "broken_json.jsonl",
        "text",
        "a JSONL line that is not valid JSON (cut off)",
        jsonl_bytes(records(good_rows("n"))) + b'{"text": "a film cut off mid-',
        ("broken_json.jsonl:25: not valid JSON", "expected one JSON object per line"),
    ),
    Case(
        "json_array_line.jsonl",
        "text",
        "a JSONL line that is an array, not an object",
        jsonl_bytes(records(good_rows("o"))) + b'["a film", "positive"]\n',
        ("json_array_line.jsonl:25: expected a JSON object, found list",),
    ),
    Case(
        "text_not_string.jsonl",
        "text",
        "a text that is a number, not a string (JSONL)",
        jsonl_bytes([*records(good_rows("p")), {"text": 12345, "label": "positive"}]),
        (
            "expect_column_values_to_be_of_type column 'text'",
            "text_not_string.jsonl:25 (12345)",
            "type_=str",
        ),
    ),
    Case(
        "reviews.txt",
        "text",
        "an unsupported file type (.txt)",
        b"a moving film\tpositive\n",
        ("unsupported file type '.txt'", "expected one of ('.csv', '.jsonl', '.parquet')"),
        paths=("ingest",),
    ),
    Case(
        "conflicts_with_existing.csv",
        "text",
        "a text already in data/raw with the other label, under validate.conflicting_labels: "
        "reject (ingest checks the batch against data/raw; the default, drop, accepts it and "
        "lists the rows prepare drops)",
        conflicts_with_existing(),
        (
            "labels a text differently from the batches in",
            "expect_no_text_with_conflicting_labels column 'text'",
            "conflicts_with_existing.csv:25",
            "validate.conflicting_labels: reject",
        ),
        paths=("ingest",),
        settings=("validate.conflicting_labels=reject",),
    ),
    Case(
        "split_starved.csv",
        "text",
        "a class with two rows (validate.min_examples_per_class lowered to 2), neither of "
        "which hashes into the test split (three rows or more get one moved there)",
        split_starved(),
        (
            "the test split has no rows of label(s) ['negative']",
            "split_starved.csv:41",
            "expected every label in test",
            "a label needs three rows or more",
        ),
        paths=("run",),
        settings=("validate.min_examples_per_class=2",),
    ),
    Case(
        "tokens_tags_mismatch.jsonl",
        "ner",
        "NER: tokens and tags of different lengths",
        jsonl_bytes([*NER_GOOD, _ner(["flights", "to", "dallas"], ["O", "B-toloc.city_name"])]),
        (
            "expect_column_pair_values_to_be_equal column 'n_tokens'",
            "tokens_tags_mismatch.jsonl:3",
            "column_B=n_tags",
        ),
    ),
    Case(
        "broken_bio.jsonl",
        "ner",
        "NER: broken BIO (I- after O)",
        jsonl_bytes(
            [
                *NER_GOOD,
                _ner(["to", "new", "york"], ["O", "I-toloc.city_name", "I-toloc.city_name"]),
            ]
        ),
        (
            "expect_column_values_to_be_null column 'bio_error'",
            "broken_bio.jsonl:3",
            "an I- tag must continue B-/I- of its type",
        ),
    ),
    Case(
        "unknown_tag.jsonl",
        "ner",
        "NER: a tag outside the tag set",
        jsonl_bytes([*NER_GOOD, _ner(["fly", "to", "mars"], ["O", "O", "B-planet"])]),
        (
            "expect_column_values_to_be_null column 'unknown_tag'",
            "unknown_tag.jsonl:3 ('B-planet')",
        ),
    ),
    Case(
        "empty_sentence.jsonl",
        "ner",
        "NER: an empty sentence",
        jsonl_bytes([*NER_GOOD, _ner([], [])]),
        (
            "expect_column_values_to_be_between column 'n_tokens'",
            "empty_sentence.jsonl:3",
            "min_value=1",
        ),
    ),
    Case(
        "tags_not_a_list.jsonl",
        "ner",
        "NER: tags given as one string, not a list",
        jsonl_bytes([*NER_GOOD, {"tokens": ["to", "boston"], "tags": "O B-toloc.city_name"}]),
        ("tags_not_a_list.jsonl:3: field 'tags' must be a list of strings",),
    ),
    Case(
        "one_column.conll",
        "ner",
        "NER (CoNLL): a line with a token and no tag",
        b"flights O\nfrom O\nboston B-fromloc.city_name\n\nto O\ndenver\n",
        ("one_column.conll:6: expected 'token ... tag'",),
    ),
)

ACCEPTED: tuple[Case, ...] = (
    Case(
        "utf8_bom.csv",
        "accepted",
        "a UTF-8 BOM before the header",
        b"\xef\xbb\xbf" + csv_bytes(good_rows("bom")),
        notes={"first_text": good_rows("bom")[0][0]},
    ),
    Case(
        "utf8_bom.jsonl",
        "accepted",
        "a UTF-8 BOM before the first JSON line",
        b"\xef\xbb\xbf" + jsonl_bytes(records(good_rows("bomj"))),
        notes={"first_text": good_rows("bomj")[0][0]},
    ),
    Case(
        "crlf_quoted_newlines.csv",
        "accepted",
        "CRLF line ends, and quoted fields holding newlines, commas and quotes",
        csv_bytes(
            [
                *good_rows("crlf"),
                ('a film that "works",\r\nthen, on a second line, does not', "negative"),
            ]
        )
        .replace(b"\n", b"\r\n")
        .replace(b"\r\r\n", b"\r\n"),
        notes={"last_text": 'a film that "works",\r\nthen, on a second line, does not'},
    ),
    Case(
        "extra_columns.csv",
        "accepted",
        "extra columns (id, annotator) beside text and label: kept in the batch file, ignored",
        csv_bytes(
            [(i, t, label, "ann-1") for i, (t, label) in enumerate(good_rows("extra"))],
            ("id", "text", "label", "annotator"),
        ),
        notes={"first_text": good_rows("extra")[0][0]},
    ),
)


def write_all() -> list[Path]:
    written = []
    for case in (*CASES, *ACCEPTED):
        if case.generated:
            continue
        case.path.parent.mkdir(parents=True, exist_ok=True)
        case.path.write_bytes(case.content)
        written.append(case.path)
    return written


if __name__ == "__main__":
    for path in write_all():
        print(path.relative_to(HERE), path.stat().st_size, "bytes")
