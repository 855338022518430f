"""Run an exported tuneops bundle with onnxruntime, tokenizers and numpy only.

This module must import where torch and transformers are absent: a deployment host
needs nothing else. Keep its imports to the standard library and those three.
"""

from __future__ import annotations

import json
import sys
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
    """A text classifier from a bundle: model.onnx, tokenizer.json, labels.json, bundle.json.

    `model` picks the ONNX file: "fp32", "int8" (names in bundle.json's "models"), a file
    name in the bundle, or None for the bundle's default_model.
    """

    def __init__(
        self, bundle_dir: str | Path, threads: int | None = None, model: str | None = None
    ) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.meta: dict[str, Any] = _read_json(self.bundle_dir / "bundle.json")
        self.labels: list[str] = _read_json(self.bundle_dir / "labels.json")
        self.max_length = int(self.meta["max_length"])
        self.input_names: list[str] = list(self.meta["input_names"])
        self.tokenizer = self._load_tokenizer()
        self.model_file = self._model_file(model)
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

    def _model_file(self, model: str | None) -> str:
        models: dict[str, dict[str, Any]] = self.meta.get("models", {})
        name = model or self.meta.get("default_model", "fp32")
        if name in models:
            entry = models[name]
            if "file" not in entry:
                reason = entry.get("reason", "not in this bundle")
                raise BundleError(f"{self.bundle_dir}: model {name!r} is not available ({reason})")
            return str(entry["file"])
        if name == "fp32" or name.endswith(".onnx"):
            return "model.onnx" if name == "fp32" else name
        raise BundleError(
            f"{self.bundle_dir}: unknown model {name!r}; expected one of {sorted(models)} "
            f"or an .onnx file name"
        )

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
        """Logits [len(texts), num_labels], in input order.

        Texts are batched by length (less padding) and put back in order.
        """
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        result = np.zeros((len(texts), len(self.labels)), np.float32)
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            inputs = self.encode([texts[i] for i in rows])
            result[rows] = self.session.run(["logits"], inputs)[0]
        return result

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


def main(argv: list[str] | None = None) -> int:
    """`python tuneops_runtime.py [--bundle DIR] [--model fp32|int8] TEXT...`: JSON lines."""
    import argparse

    parser = argparse.ArgumentParser(description="classify texts with a tuneops ONNX bundle")
    parser.add_argument("texts", nargs="+")
    parser.add_argument("--bundle", default=str(Path(__file__).resolve().parent))
    parser.add_argument("--model", default=None, help="fp32, int8 or a file (default: bundle's)")
    args = parser.parse_args(argv)
    try:
        classifier = OnnxClassifier(args.bundle, model=args.model)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for text, p in zip(args.texts, classifier.predict(args.texts), strict=True):
        print(json.dumps({"text": text, "label": p.label, "score": round(p.score, 6)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
