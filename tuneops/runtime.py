"""Run an exported tuneops bundle with onnxruntime, tokenizers and numpy only.

This module must import where torch and transformers are absent: a deployment host
needs nothing else. Keep its imports to the standard library and those three.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


class BundleError(Exception):
    """The bundle folder is incomplete or a file in it cannot be loaded."""


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float
    probabilities: dict[str, float]
    # Some of the text was not read: beyond the window (truncate, head_tail) or beyond
    # max_chunks windows (chunks).
    truncated: bool = False


@dataclass(frozen=True)
class Value:
    """A text regression's prediction, in the target's units."""

    value: float
    target: str  # the target column it predicts (bundle.json target.name)
    truncated: bool = False


@dataclass(frozen=True)
class Entity:
    type: str
    start: int  # character offsets in the original text: text[start:end]
    end: int
    text: str
    score: float  # mean probability of the entity's word tags


# train.long_text=head_tail: the share of the window's content tokens taken from the head,
# the rest from the tail (Sun et al. 2019, "How to fine-tune BERT for text classification":
# 128 head + 382 tail tokens at 512 were best on long IMDb and Sogou reviews).
HEAD_SHARE = 128 / 510


def head_tail_window(
    values: list[int], max_length: int, lead: int = 1, trail: int = 1
) -> list[int]:
    """One encoded text's per-token values (ids, masks) cut to `max_length`: the `lead`
    and `trail` special tokens kept, then the first and last content tokens. Shorter
    sequences are returned unchanged. The same function for training and serving."""
    if len(values) <= max_length:
        return list(values)
    content = max_length - lead - trail
    head = round(content * HEAD_SHARE)
    tail = content - head
    end = len(values) - trail
    return [*values[: lead + head], *values[end - tail : end], *values[end:]]


def special_ends(special_tokens_mask: list[int]) -> tuple[int, int]:
    """How many special tokens lead and trail one encoded text ([CLS] ... [SEP]: 1, 1)."""
    lead = next((i for i, m in enumerate(special_tokens_mask) if not m), 0)
    trail = next((i for i, m in enumerate(reversed(special_tokens_mask)) if not m), 0)
    return lead, trail


@dataclass(frozen=True)
class Window:
    """How a text meets the model: `max_length` tokens, a longer text cut by `long_text`.

    truncate keeps the first window; head_tail the first and last tokens (head_tail_window);
    chunks reads the text as overlapping windows (the tokenizer's own overflowing windows,
    consecutive ones sharing `stride` tokens), at most `max_chunks` of them (the first),
    and a text's logits are the mean of its windows' (document_logits). bundle.json and the
    candidate's training_summary.json record these four; training, evaluation, export
    parity and this runtime read a text through the same Window."""

    max_length: int
    long_text: str = "truncate"
    stride: int = 0  # chunks: tokens a window repeats from the one before it
    max_chunks: int = 1  # chunks: windows read per text at most

    @classmethod
    def recorded(cls, meta: dict[str, Any], max_length: int | None = None) -> Window:
        """The window bundle.json or training_summary.json records (`max_length` when the
        file predates the key)."""
        long_text = str(meta.get("long_text", "truncate"))
        if long_text not in LONG_TEXT:
            raise BundleError(f"long_text {long_text!r}: expected one of {list(LONG_TEXT)}")
        return cls(
            int(meta.get("max_length") or max_length or 0),
            long_text,
            int(meta.get("chunk_stride", 0)),
            int(meta.get("max_chunks", 1)) if long_text == "chunks" else 1,
        )


LONG_TEXT = ("truncate", "head_tail", "chunks")
# validate.max_text_chars's default (tuneops.config, which this module must not import).
MAX_TEXT_CHARS = 1_000_000


def kept_windows(documents: list[int], max_chunks: int) -> list[int]:
    """Of windows listed in order with their document's index (the tokenizer's
    overflow_to_sample_mapping), the positions of those read: each document's first
    `max_chunks`. The one cap for training, evaluation and this runtime."""
    kept: list[int] = []
    seen: dict[int, int] = {}
    for position, document in enumerate(documents):
        seen[document] = seen.get(document, 0) + 1
        if seen[document] <= max_chunks:
            kept.append(position)
    return kept


def document_logits(
    window_logits: np.ndarray, documents: np.ndarray | list[int], n_documents: int
) -> np.ndarray:
    """Each document's logits (or features): the mean over its windows' rows, in document
    order. train.long_text=chunks predicts this way in evaluation, export parity, the
    runtime, `predict`, `serve` and the pyfunc; a one-window document keeps its row."""
    index = np.asarray(documents, dtype=np.int64)
    sums = np.zeros((n_documents, window_logits.shape[-1]), np.float64)
    np.add.at(sums, index, window_logits)
    counts = np.bincount(index, minlength=n_documents)
    return (sums / np.maximum(counts, 1)[:, None]).astype(window_logits.dtype)


@dataclass
class Windows:
    """Texts as the model reads them: one row of inputs per window, its document, and per
    text whether some of it was not read (cut off by the window or by max_chunks)."""

    inputs: dict[str, list[list[int]]]
    documents: list[int]
    truncated: list[bool]


INPUT_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")


def encode_windows(tokenizer: Tokenizer, texts: list[str], window: Window) -> Windows:
    """`texts` cut by `window` with a tokenizers Tokenizer (what the bundle runs; training
    does the same with the transformers tokenizer over this library: encode_window)."""
    if window.long_text == "head_tail":
        tokenizer.no_truncation()
    else:  # the tokenizer's own windows: overflowing encodings, `stride` tokens shared
        tokenizer.enable_truncation(max_length=window.max_length, stride=window.stride)
    tokenizer.no_padding()
    found = Windows({name: [] for name in INPUT_COLUMNS}, [], [])
    for document, encoding in enumerate(tokenizer.encode_batch(texts)):
        if window.long_text == "head_tail":
            lead, trail = special_ends(encoding.special_tokens_mask)
            cut = [head_tail_window(v, window.max_length, lead, trail) for v in _values(encoding)]
            found.truncated.append(len(encoding.ids) > window.max_length)
            for name, values in zip(INPUT_COLUMNS, cut, strict=True):
                found.inputs[name].append(values)
            found.documents.append(document)
            continue
        every = [encoding, *encoding.overflowing]
        read = every[: window.max_chunks]
        found.truncated.append(len(every) > len(read))
        for part in read:
            for name, values in zip(INPUT_COLUMNS, _values(part), strict=True):
                found.inputs[name].append(list(values))
            found.documents.append(document)
    return found


def _values(encoding: Any) -> tuple[list[int], list[int], list[int]]:
    return encoding.ids, encoding.attention_mask, encoding.type_ids


def padded(rows: dict[str, list[list[int]]], pad_id: int) -> dict[str, np.ndarray]:
    """Rows of unequal length as [rows, longest] int64 arrays (input_ids padded with
    `pad_id`, the masks with 0)."""
    width = max((len(row) for row in rows["input_ids"]), default=0)
    pads = {"input_ids": pad_id}
    return {
        name: np.asarray(
            [row + [pads.get(name, 0)] * (width - len(row)) for row in values], np.int64
        ).reshape(len(values), width)
        for name, values in rows.items()
    }


def window_inputs(
    tokenizer: Tokenizer, texts: list[str], max_length: int, long_text: str, pad_id: int
) -> dict[str, np.ndarray]:
    """input_ids, attention_mask, token_type_ids [len(texts), longest] of texts cut by
    head_tail (one row per text)."""
    if long_text != "head_tail":
        raise BundleError(f"long_text {long_text!r}: expected head_tail")
    return padded(encode_windows(tokenizer, texts, Window(max_length, long_text)).inputs, pad_id)


# Where the runtime learns the CPU's features. onnxruntime has no Python API for them and
# torch's (torch.cpu.get_capabilities, newer releases only) is not installed on a deploy
# host; the kernel's flags are what onnxruntime's own cpuid checks see.
CPUINFO = Path("/proc/cpuinfo")
# An override of the model file the runtime picks: fp32, int8, int8_s8, a file, or auto.
MODEL_ENV = "TUNEOPS_MODEL"


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags (avx2, avx512_vnni, amx_int8, ...) from /proc/cpuinfo's text,
    or `cpuinfo` when given; empty where there is no such file (macOS, Windows, ARM's
    "Features" lines), which picks the variants meant for any CPU."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


@dataclass(frozen=True)
class ModelChoice:
    """Which of the bundle's models runs (a bundle.json models name or a file) and why."""

    model: str
    reason: str


def choose_model(
    meta: dict[str, Any], flags: frozenset[str], override: str | None = None
) -> ModelChoice:
    """The model to run on a CPU with `flags`: `override` when given (not "auto"); else
    the kept int8 variant whose bundle.json cpu_flags the CPU has one of (int8_s8 on VNNI
    or AMX), else the kept one meant for any CPU (int8, uint8 weights), else fp32. A bundle
    from before per-CPU variants (no cpu_flags recorded) runs its default_model."""
    default = str(meta.get("default_model", "fp32"))
    if override and override != "auto":
        return ModelChoice(override, f"asked for {override!r}")
    models: dict[str, dict[str, Any]] = meta.get("models", {})
    variants = {n: m for n, m in models.items() if "cpu_flags" in m}
    if not variants:
        return ModelChoice(default, "bundle.json default_model (it records no per-CPU variants)")
    kept = {n: m for n, m in variants.items() if m.get("kept") and "file" in m}
    for name, entry in kept.items():
        has = sorted(flags & set(entry["cpu_flags"]))
        if has:
            return ModelChoice(name, f"this CPU has {', '.join(has)}: {entry.get('meant_for')}")
    anywhere = [n for n, m in kept.items() if not m["cpu_flags"]]
    if anywhere:
        needing = {n: m["cpu_flags"] for n, m in variants.items() if m["cpu_flags"]}
        why = "; ".join(
            f"{n} needs one of {', '.join(f)}"
            + ("" if n in kept else f" and was {models[n]['reason']}")
            for n, f in needing.items()
        )
        return ModelChoice(anywhere[0], f"{models[anywhere[0]].get('meant_for')}; {why}")
    left_out = "; ".join(f"{n}: {m.get('reason')}" for n, m in variants.items())
    return ModelChoice(default, f"no int8 variant in this bundle ({left_out})")


class OnnxBundle:
    """What every bundle has: model.onnx, tokenizer.json, labels.json, bundle.json.

    `model` picks the ONNX file: "fp32", "int8", "int8_s8" (names in bundle.json's
    "models"), a file name in the bundle, "default" for bundle.json's default_model, or
    None: $TUNEOPS_MODEL when set, else choose_model by this CPU's flags (`flags`, read
    from /proc/cpuinfo when None). `choice` records which and why.
    """

    def __init__(
        self,
        bundle_dir: str | Path,
        threads: int | None = None,
        model: str | None = None,
        flags: frozenset[str] | None = None,
    ) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.meta: dict[str, Any] = _read_json(self.bundle_dir / "bundle.json")
        self.labels: list[str] = _read_json(self.bundle_dir / "labels.json")
        self.max_length = int(self.meta["max_length"])
        # How a text longer than max_length tokens is read (train.long_text when trained).
        self.window = Window.recorded(self.meta)
        self.long_text = self.window.long_text
        # What validation let through (validate.max_text_chars): `serve`'s default limit.
        self.max_text_chars = int(self.meta.get("max_text_chars", MAX_TEXT_CHARS))
        self.input_names: list[str] = list(self.meta["input_names"])
        self.tokenizer = self._load_tokenizer()
        self.choice = self._choose(model, flags)
        self.model_file = self._model_file(self.choice.model)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        model_path = self.bundle_dir / self.model_file
        if not model_path.is_file():
            raise BundleError(f"{model_path}: missing from the bundle")
        try:
            self.session = ort.InferenceSession(
                str(model_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BundleError(f"{model_path}: cannot be loaded by onnxruntime: {exc}") from exc

    # Texts are read as windows (encode_windows: train.long_text), not by a tokenizer set
    # to truncate and pad (token models).
    reads_windows = False

    def _choose(self, model: str | None, flags: frozenset[str] | None) -> ModelChoice:
        """The model argument, else $TUNEOPS_MODEL (unless "auto"), else by this CPU."""
        env = os.environ.get(MODEL_ENV, "")
        if model is not None:
            return ModelChoice(model, f"asked for {model!r}")
        if env and env != "auto":
            return ModelChoice(env, f"{MODEL_ENV}={env}")
        return choose_model(self.meta, cpu_flags() if flags is None else flags)

    def _model_file(self, model: str) -> str:
        models: dict[str, dict[str, Any]] = self.meta.get("models", {})
        name = self.meta.get("default_model", "fp32") if model == "default" else model
        if name in models:
            entry = models[name]
            if "file" not in entry:
                reason = entry.get("reason", "not in this bundle")
                raise BundleError(f"{self.bundle_dir}: model {name!r} is not available ({reason})")
            return self._plain_name(str(entry["file"]), f"bundle.json models.{name}.file")
        if name == "fp32" or name.endswith(".onnx"):
            source = "bundle.json default_model" if model == "default" else "--model"
            return "model.onnx" if name == "fp32" else self._plain_name(name, source)
        raise BundleError(
            f"{self.bundle_dir}: unknown model {name!r}; expected one of {sorted(models)} "
            f"or an .onnx file name"
        )

    def _plain_name(self, file: str, source: str) -> str:
        """A model file is a plain .onnx file name inside the bundle folder: never a path
        (../x.onnx, /abs/x.onnx, sub/x.onnx) that would run a graph from elsewhere."""
        if Path(file).name != file or file in (".", "..") or "\\" in file:
            raise BundleError(
                f"{self.bundle_dir}: {source} {file!r} is not a plain file name; a bundle's "
                "model files are .onnx files inside its folder (e.g. model.int8.onnx)"
            )
        if not file.endswith(".onnx"):
            raise BundleError(f"{self.bundle_dir}: {source} {file!r} is not an .onnx file")
        return file

    def _load_tokenizer(self) -> Tokenizer:
        path = self.bundle_dir / "tokenizer.json"
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:
            raise BundleError(f"{path}: cannot be loaded as a tokenizers file: {exc}") from exc
        if self.reads_windows:
            return tokenizer  # cut and padded by encode_windows and padded
        tokenizer.enable_truncation(max_length=self.max_length)
        tokenizer.enable_padding(
            pad_id=int(self.meta["pad_token_id"]), pad_token=str(self.meta["pad_token"])
        )
        return tokenizer

    def _inputs(self, encodings: list[Any]) -> dict[str, np.ndarray]:
        columns = {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
        }
        return {name: np.asarray(columns[name], dtype=np.int64) for name in self.input_names}

    def predict(self, texts: list[str], batch_size: int = 32) -> list[Any]:
        """One prediction per text (a Prediction, or a list of Entity for token models)."""
        raise NotImplementedError

    def record(self, prediction: Any) -> dict[str, Any]:
        """A prediction as JSON-ready fields (what `predict`, `serve` and the CLI print)."""
        raise NotImplementedError

    def frame_row(self, prediction: Any) -> dict[str, Any]:
        """A prediction as flat columns (the pyfunc's output frame, `predict --output x.csv`)."""
        raise NotImplementedError

    def run(self, encodings: list[Any]) -> np.ndarray:
        return np.asarray(self.session.run(["logits"], self._inputs(encodings))[0])


class OnnxClassifier(OnnxBundle):
    """A text classifier: one label per text. Its probabilities are softmax(logits / T),
    T the temperature bundle.json records for the model file (fitted on the validation
    split at export, pipeline.calibration; 1 for a bundle from before calibration)."""

    reads_windows = True

    def __init__(
        self,
        bundle_dir: str | Path,
        threads: int | None = None,
        model: str | None = None,
        flags: frozenset[str] | None = None,
    ) -> None:
        super().__init__(bundle_dir, threads, model, flags)
        self.temperature = 1.0
        for entry in self.meta.get("models", {}).values():
            if entry.get("file") == self.model_file and "calibration" in entry:
                self.temperature = float(entry["calibration"]["temperature"])

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        """The model's inputs for `texts`: one row per window read (encode_windows)."""
        windows = encode_windows(self.tokenizer, texts, self.window)
        inputs = padded(windows.inputs, int(self.meta["pad_token_id"]))
        return {name: inputs[name] for name in self.input_names}

    def read(self, texts: list[str], batch_size: int = 32) -> tuple[np.ndarray, list[bool]]:
        """Logits [len(texts), num_labels] in input order (a chunked text's: the mean of its
        windows', document_logits), and per text whether some of it was not read.

        Texts are batched by length (less padding), their windows run `batch_size` at a
        time, and the rows are put back in order.
        """
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        result = np.zeros((len(texts), len(self.labels)), np.float32)
        truncated = [False] * len(texts)
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            windows = encode_windows(self.tokenizer, [texts[i] for i in rows], self.window)
            logits = self._run_windows(windows.inputs, batch_size)
            result[rows] = document_logits(logits, windows.documents, len(rows))
            for row, cut in zip(rows, windows.truncated, strict=True):
                truncated[row] = cut
        return result, truncated

    def _run_windows(self, rows: dict[str, list[list[int]]], batch_size: int) -> np.ndarray:
        order = sorted(range(len(rows["input_ids"])), key=lambda i: len(rows["input_ids"][i]))
        result = np.zeros((len(order), len(self.labels)), np.float32)
        pad_id = int(self.meta["pad_token_id"])
        for start in range(0, len(order), batch_size):
            picked = order[start : start + batch_size]
            inputs = padded({n: [rows[n][i] for i in picked] for n in self.input_names}, pad_id)
            result[picked] = self.session.run(["logits"], inputs)[0]
        return result

    def logits(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Logits [len(texts), num_labels], in input order (see `read`)."""
        return self.read(texts, batch_size)[0]

    def predict(self, texts: list[str], batch_size: int = 32) -> list[Prediction]:
        logits, truncated = self.read(texts, batch_size)
        return [
            Prediction(
                label=self.labels[int(row.argmax())],
                score=float(row.max()),
                probabilities={lab: float(p) for lab, p in zip(self.labels, row, strict=True)},
                truncated=cut,
            )
            for row, cut in zip(softmax(logits / self.temperature), truncated, strict=True)
        ]

    def record(self, prediction: Prediction) -> dict[str, Any]:
        return {
            "label": prediction.label,
            "score": round(prediction.score, 6),
            "probabilities": {k: round(v, 6) for k, v in prediction.probabilities.items()},
            "truncated": prediction.truncated,
        }

    def frame_row(self, prediction: Prediction) -> dict[str, Any]:
        """label, score, one p_<label> column per label (rounded as in `record`), truncated."""
        record = self.record(prediction)
        return (
            {"label": record["label"], "score": record["score"]}
            | {f"p_{k}": v for k, v in record["probabilities"].items()}
            | {"truncated": record["truncated"]}
        )


class OnnxRegressor(OnnxClassifier):
    """A text regression: one value per text, in the target's units (the training scale
    is folded into the exported output layer; bundle.json `target` records it, and the
    target's train-split range, as `target`)."""

    def __init__(
        self,
        bundle_dir: str | Path,
        threads: int | None = None,
        model: str | None = None,
        flags: frozenset[str] | None = None,
    ) -> None:
        super().__init__(bundle_dir, threads, model, flags)
        self.target: dict[str, Any] = dict(self.meta.get("target") or {"name": self.labels[0]})

    def values(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """One value per text, in input order (a chunked text's: its windows' mean)."""
        return self.logits(texts, batch_size)[:, 0]

    def predict(self, texts: list[str], batch_size: int = 32) -> list[Value]:  # type: ignore[override]
        values, truncated = self.read(texts, batch_size)
        name = str(self.target.get("name", self.labels[0]))
        return [Value(float(row[0]), name, cut) for row, cut in zip(values, truncated, strict=True)]

    def record(self, prediction: Value) -> dict[str, Any]:  # type: ignore[override]
        return {
            "value": round(prediction.value, 6),
            "target": prediction.target,
            "truncated": prediction.truncated,
        }

    def frame_row(self, prediction: Value) -> dict[str, Any]:  # type: ignore[override]
        """value, target, truncated."""
        return self.record(prediction)


class OnnxTokenClassifier(OnnxBundle):
    """A token classifier (NER, slot filling): IOB2 tags per word, entities as spans.

    A word's tag is read at its first sub-token, as in training. Words are the given
    tokens when pre-split, and a raw text's whitespace-separated runs otherwise: the
    training files' unit (the test split's texts are its tokens joined by spaces), so a
    served text is tagged word for word as the gate scored its tokens (audit M16).
    """

    def word_logits(self, sentences: list[list[str]], batch_size: int = 32) -> list[np.ndarray]:
        """Per pre-split sentence, logits [n_words, n_tags]; words cut by max_length: NaN."""
        rows: list[np.ndarray] = []
        for start in range(0, len(sentences), batch_size):
            batch = sentences[start : start + batch_size]
            encodings = self.tokenizer.encode_batch(batch, is_pretokenized=True)
            logits = self.run(encodings)
            rows += [
                first_subtoken_rows(e.word_ids, logits[i], len(words))
                for i, (e, words) in enumerate(zip(encodings, batch, strict=True))
            ]
        return rows

    def predict_words(self, sentences: list[list[str]], batch_size: int = 32) -> list[list[str]]:
        """IOB2 tags per pre-split sentence (O for a word cut off by max_length)."""
        return tags_from_rows(self.word_logits(sentences, batch_size), self.labels)

    def predict(self, texts: list[str], batch_size: int = 32) -> list[list[Entity]]:
        """Entities in each raw text, with character offsets into that text.

        Punctuation attached to a word stays in it ("st." of "st. louis" is one word, as in
        ATIS; "Paris," is one word too): send it apart ("Paris , France"), or pre-split
        tokens to predict_words, when the training data's tokens split it off.
        """
        spans = [words_in(text) for text in texts]
        sentences = [[text[a:b] for a, b in s] for text, s in zip(texts, spans, strict=True)]
        rows = self.word_logits(sentences, batch_size)
        return [
            word_entities(text, s, r, self.labels)
            for text, s, r in zip(texts, spans, rows, strict=True)
        ]

    def record(self, prediction: list[Entity]) -> dict[str, Any]:
        return {"entities": [asdict(e) | {"score": round(e.score, 6)} for e in prediction]}

    def frame_row(self, prediction: list[Entity]) -> dict[str, Any]:
        """The entities as one JSON string column."""
        return {"entities": json.dumps(self.record(prediction)["entities"], ensure_ascii=False)}


# Joint intent + slot bundles (task intent-and-slots): labels.json holds the intents, each
# as "intent:<name>", then the IOB2 tags; the graph has two outputs.
INTENT_PREFIX = "intent:"
# A multi-intent utterance's class joins its intents ("atis_flight;atis_airfare", as ATIS
# ships it and the published joint results score it: one class); the runtime splits it.
INTENT_SEPARATOR = ";"
JOINT_OUTPUTS = ("intent_logits", "tag_logits")


def joint_labels(labels: list[str] | tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(intents, tags) of a joint model's one label list (intents carry INTENT_PREFIX)."""
    intents = [x.removeprefix(INTENT_PREFIX) for x in labels if x.startswith(INTENT_PREFIX)]
    return intents, [x for x in labels if not x.startswith(INTENT_PREFIX)]


@dataclass(frozen=True)
class IntentsAndSlots:
    intent: str  # the class predicted (a multi-intent class keeps its joined name)
    intents: list[str]  # that class split on INTENT_SEPARATOR
    score: float  # the class's softmax probability
    entities: list[Entity]


class OnnxIntentSlotModel(OnnxTokenClassifier):
    """One encoder with an intent head and a tag head: the intent(s) of a text and its
    entity spans with character offsets (the token runtime's words and spans)."""

    def __init__(
        self,
        bundle_dir: str | Path,
        threads: int | None = None,
        model: str | None = None,
        flags: frozenset[str] | None = None,
    ) -> None:
        super().__init__(bundle_dir, threads, model, flags)
        self.intents, self.tags = joint_labels(self.labels)

    def joint_logits(
        self, sentences: list[list[str]], batch_size: int = 32
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Intent logits [sentences, intents] and, per sentence, tag logits [words, tags]
        at each word's first sub-token (NaN rows: words cut by max_length)."""
        intent_rows: list[np.ndarray] = []
        tag_rows: list[np.ndarray] = []
        for start in range(0, len(sentences), batch_size):
            batch = sentences[start : start + batch_size]
            encodings = self.tokenizer.encode_batch(batch, is_pretokenized=True)
            intents, tags = self.session.run(list(JOINT_OUTPUTS), self._inputs(encodings))
            intent_rows.append(np.asarray(intents))
            tag_rows += [
                first_subtoken_rows(e.word_ids, tags[i], len(words))
                for i, (e, words) in enumerate(zip(encodings, batch, strict=True))
            ]
        empty = np.zeros((0, len(self.intents)), np.float32)
        return (np.concatenate(intent_rows) if intent_rows else empty), tag_rows

    def word_logits(self, sentences: list[list[str]], batch_size: int = 32) -> list[np.ndarray]:
        return self.joint_logits(sentences, batch_size)[1]

    def predict_words(self, sentences: list[list[str]], batch_size: int = 32) -> list[list[str]]:
        return tags_from_rows(self.word_logits(sentences, batch_size), self.tags)

    def predict_joint(
        self, sentences: list[list[str]], batch_size: int = 32
    ) -> tuple[list[str], list[list[str]]]:
        """Per pre-split sentence: its intent class and its IOB2 tags (what the gate scores)."""
        intents, rows = self.joint_logits(sentences, batch_size)
        return [self.intents[int(i)] for i in intents.argmax(-1)], tags_from_rows(rows, self.tags)

    # An IntentsAndSlots per text, not the token runtime's entity list: the serving layer
    # only passes predictions to this class's own record / frame_row.
    def predict(self, texts: list[str], batch_size: int = 32) -> list[IntentsAndSlots]:  # type: ignore[override]
        spans = [words_in(text) for text in texts]
        sentences = [[text[a:b] for a, b in s] for text, s in zip(texts, spans, strict=True)]
        intents, rows = self.joint_logits(sentences, batch_size)
        found = []
        for text, s, row, logits in zip(texts, spans, rows, intents, strict=True):
            p = softmax(logits)
            intent = self.intents[int(p.argmax())]
            found.append(
                IntentsAndSlots(
                    intent,
                    intent.split(INTENT_SEPARATOR),
                    float(p.max()),
                    word_entities(text, s, row, self.tags),
                )
            )
        return found

    def record(self, prediction: IntentsAndSlots) -> dict[str, Any]:  # type: ignore[override]
        return {
            "intent": prediction.intent,
            "intents": list(prediction.intents),
            "score": round(prediction.score, 6),
        } | super().record(prediction.entities)

    def frame_row(self, prediction: IntentsAndSlots) -> dict[str, Any]:  # type: ignore[override]
        record = self.record(prediction)
        return {
            "intent": record["intent"],
            "intents": INTENT_SEPARATOR.join(record["intents"]),
            "score": record["score"],
            "entities": json.dumps(record["entities"], ensure_ascii=False),
        }


_WORD = re.compile(r"\S+")


def words_in(text: str) -> list[tuple[int, int]]:
    """(start, end) of each whitespace-separated word of a raw text."""
    return [m.span() for m in _WORD.finditer(text)]


def word_entities(
    text: str, spans: list[tuple[int, int]], logits: np.ndarray, labels: list[str]
) -> list[Entity]:
    """Entities of one text from per-word tag logits [words, tags] (a NaN row: a word cut
    off by max_length, tagged O) and each word's (start, end) in the text. An entity spans
    from its first word's start to its last word's end; its score is the mean of its
    words' tag probabilities."""
    tags = tags_from_rows([logits], labels)[0]
    found = []
    for kind, first, last in iob2_entities(tags):
        begin, end = spans[first][0], spans[last - 1][1]
        score = float(np.mean([softmax(row).max() for row in logits[first:last]]))
        found.append(Entity(kind, begin, end, text[begin:end], score))
    return found


def iob2_entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word + 1) for every entity of an IOB2 tag sequence.

    Lenient like seqeval's default mode: an I- tag that does not continue an entity of
    its type starts a new one.
    """
    spans: list[tuple[str, int, int]] = []
    current: tuple[str, int] | None = None
    for i, tag in enumerate([*tags, "O"]):
        kind = tag[2:] if tag != "O" else None
        continues = tag.startswith("I-") and current is not None and current[0] == kind
        if current is not None and not continues:
            spans.append((current[0], current[1], i))
            current = None
        if kind is not None and not continues:
            current = (kind, i)
    return spans


# The serving side's one "which task?" lookup: bundle.json's task -> its runtime class.
RUNTIMES: dict[str, type[OnnxClassifier] | type[OnnxTokenClassifier]] = {
    "text-classification": OnnxClassifier,
    "token-classification": OnnxTokenClassifier,
    "text-regression": OnnxRegressor,
    "intent-and-slots": OnnxIntentSlotModel,
}


def load_bundle(
    bundle_dir: str | Path,
    threads: int | None = None,
    model: str | None = None,
    flags: frozenset[str] | None = None,
) -> OnnxClassifier | OnnxTokenClassifier:
    """The right runtime for the bundle's task."""
    task = _read_json(Path(bundle_dir) / "bundle.json").get("task", "text-classification")
    if task not in RUNTIMES:
        raise BundleError(
            f"{bundle_dir}: bundle.json task {task!r} has no runtime here; "
            f"expected one of {sorted(RUNTIMES)}"
        )
    return RUNTIMES[task](bundle_dir, threads=threads, model=model, flags=flags)


def tags_from_rows(rows: list[np.ndarray], labels: list[str]) -> list[list[str]]:
    """Argmax tag per word of each sentence; a word with no logits (truncated) is O."""
    return [
        ["O" if np.isnan(row).any() else labels[int(row.argmax())] for row in sentence]
        for sentence in rows
    ]


def first_subtoken_rows(word_ids: list[int | None], logits: np.ndarray, n_words: int) -> np.ndarray:
    """One row per word: `logits` (or any per-position values) at the word's first
    sub-token; NaN rows for words cut off by max_length."""
    rows = np.full((n_words, logits.shape[-1]), np.nan, dtype=np.float32)
    seen: set[int] = set()
    for position, word in enumerate(word_ids):
        if word is not None and word not in seen:
            rows[word] = logits[position]
            seen.add(word)
    return rows


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BundleError(f"{path}: missing from the bundle") from exc
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: not valid JSON: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    """`python tuneops_runtime.py [--bundle DIR] [--model fp32|int8|int8_s8] TEXT...`."""
    import argparse

    parser = argparse.ArgumentParser(description="classify texts with a tuneops ONNX bundle")
    parser.add_argument("texts", nargs="+")
    parser.add_argument("--bundle", default=str(Path(__file__).resolve().parent))
    parser.add_argument(
        "--model", default=None, help="fp32, int8, int8_s8 or a file (default: by this CPU)"
    )
    args = parser.parse_args(argv)
    try:
        bundle = load_bundle(args.bundle, model=args.model)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    predictions: list[Any] = list(bundle.predict(args.texts))
    for text, p in zip(args.texts, predictions, strict=True):
        print(json.dumps({"text": text} | bundle.record(p), ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
