"""Run an exported tuneops bundle with onnxruntime, tokenizers and numpy only.

This module must import where torch and transformers are absent: a deployment host
needs nothing else. Keep its imports to the standard library and those three.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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


class OnnxClassifier:
    """A text classifier from a bundle: model.onnx, tokenizer.json, labels.json, bundle.json."""

    def __init__(self, bundle_dir: str | Path, threads: int | None = None) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.meta: dict[str, Any] = _read_json(self.bundle_dir / "bundle.json")
        self.labels: list[str] = _read_json(self.bundle_dir / "labels.json")
        self.max_length = int(self.meta["max_length"])
        self.input_names: list[str] = list(self.meta["input_names"])
        self.tokenizer = self._load_tokenizer()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        model_path = self.bundle_dir / "model.onnx"
        try:
            self.session = ort.InferenceSession(
                str(model_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BundleError(f"{model_path}: cannot be loaded by onnxruntime: {exc}") from exc

    def _load_tokenizer(self) -> Tokenizer:
        path = self.bundle_dir / "tokenizer.json"
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:
            raise BundleError(f"{path}: cannot be loaded as a tokenizers file: {exc}") from exc
        tokenizer.enable_truncation(max_length=self.max_length)
        tokenizer.enable_padding(
            pad_id=int(self.meta["pad_token_id"]), pad_token=str(self.meta["pad_token"])
        )
        return tokenizer

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch(texts)
        columns = {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
        }
        return {name: np.asarray(columns[name], dtype=np.int64) for name in self.input_names}

    def logits(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Logits [len(texts), num_labels], in input order."""
        parts = [
            self.session.run(["logits"], self.encode(texts[i : i + batch_size]))[0]
            for i in range(0, len(texts), batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.labels)), np.float32)

    def predict(self, texts: list[str], batch_size: int = 32) -> list[Prediction]:
        probabilities = softmax(self.logits(texts, batch_size))
        return [
            Prediction(
                label=self.labels[int(row.argmax())],
                score=float(row.max()),
                probabilities={lab: float(p) for lab, p in zip(self.labels, row, strict=True)},
            )
            for row in probabilities
        ]


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
