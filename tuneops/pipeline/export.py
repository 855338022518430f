"""export: the candidate as an ONNX bundle, checked against PyTorch with onnxruntime.

The bundle (models/export/) needs only onnxruntime + tokenizers + numpy to run:
model.onnx, tokenizer.json, labels.json, bundle.json and a model card (README.md).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
import torch

from tuneops.config import ExportConfig
from tuneops.errors import ExportParityError
from tuneops.paths import atomic_dir
from tuneops.pipeline.modeling import load_classifier, load_tokenizer, predict_logits
from tuneops.runtime import OnnxClassifier


@dataclass
class ExportResult:
    export_dir: Path
    onnx_path: Path
    onnx_bytes: int
    opset: int
    parity_examples: int
    parity_max_abs_diff: float
    parity_label_agreement: float


class _LogitsOnly(torch.nn.Module):
    """Positional inputs in a fixed order, logits out: the graph ONNX hosts call."""

    def __init__(self, model: torch.nn.Module, input_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, inputs, strict=True))).logits


def export(
    cfg: ExportConfig,
    max_length: int,
    candidate_dir: Path,
    prepared_dir: Path,
    export_dir: Path,
    card: dict[str, Any] | None = None,
) -> ExportResult:
    """Write the bundle atomically; on a parity mismatch raise ExportParityError."""
    model = load_classifier(candidate_dir).eval()
    tokenizer = load_tokenizer(candidate_dir)
    labels = json.loads((candidate_dir / "labels.json").read_text(encoding="utf-8"))
    input_names = [
        n
        for n in ("input_ids", "attention_mask", "token_type_ids")
        if n in tokenizer.model_input_names
    ]
    texts = (
        pd.read_parquet(prepared_dir / "test.parquet")["text"].head(cfg.parity_examples).tolist()
    )

    with atomic_dir(export_dir) as tmp:
        onnx_path = tmp / "model.onnx"
        _export_onnx(model, tokenizer, input_names, cfg.opset, onnx_path)
        tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
        (tmp / "labels.json").write_text(json.dumps(labels) + "\n", encoding="utf-8")
        meta = {
            "task": "text-classification",
            "max_length": max_length,
            "input_names": input_names,
            "output_names": ["logits"],
            "opset": cfg.opset,
            "pad_token": tokenizer.pad_token,
            "pad_token_id": tokenizer.pad_token_id,
        } | (card or {})
        (tmp / "bundle.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

        reference = predict_logits(model, tokenizer, texts, max_length, batch_size=64)
        exported = OnnxClassifier(tmp).logits(texts, batch_size=64)
        max_diff = float(np.abs(reference - exported).max()) if len(texts) else 0.0
        agreement = float((reference.argmax(1) == exported.argmax(1)).mean()) if len(texts) else 1.0
        result = ExportResult(
            export_dir,
            export_dir / "model.onnx",
            onnx_path.stat().st_size,
            cfg.opset,
            len(texts),
            max_diff,
            agreement,
        )
        if max_diff > cfg.parity_max_abs_diff or agreement < cfg.parity_min_label_agreement:
            raise ExportParityError(
                f"ONNX parity failed on {len(texts)} test examples: max |logit diff| "
                f"{max_diff:.2e} (allowed {cfg.parity_max_abs_diff:.0e}), label agreement "
                f"{agreement:.2%} (required {cfg.parity_min_label_agreement:.0%}); "
                f"the previous bundle in {export_dir} was kept"
            )
        meta["parity"] = {
            "examples": len(texts),
            "max_abs_diff": max_diff,
            "label_agreement": agreement,
        }
        (tmp / "bundle.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(_model_card(meta, labels, result), encoding="utf-8")
    return result


def _export_onnx(
    model: torch.nn.Module, tokenizer: Any, input_names: list[str], opset: int, path: Path
) -> None:
    # The TorchScript exporter (dynamo=False): for BERT-class encoders it gives a clean
    # graph with dynamic batch and sequence axes in about a second, without the extra
    # onnxscript rewrite passes of the dynamo exporter.
    sample = tokenizer(
        ["a short example", "a second, slightly longer example text"],
        padding=True,
        return_tensors="pt",
    )
    args = tuple(sample[name] for name in input_names)
    axes = {name: {0: "batch", 1: "sequence"} for name in input_names} | {"logits": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _LogitsOnly(model, input_names),
            args,
            str(path),
            input_names=input_names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    onnx.checker.check_model(str(path))


def _model_card(meta: dict[str, Any], labels: list[str], result: ExportResult) -> str:
    facts = asdict(result) | {k: v for k, v in meta.items() if k not in ("parity",)}
    lines = "\n".join(f"| {k} | {v} |" for k, v in facts.items() if k not in ("export_dir",))
    return (
        "# tuneops model bundle\n\n"
        f"Text classifier over {len(labels)} labels: {', '.join(labels)}.\n\n"
        "Runs with onnxruntime + tokenizers + numpy only:\n\n"
        "```python\nfrom tuneops.runtime import OnnxClassifier\n"
        "OnnxClassifier('models/export').predict(['some text'])\n```\n\n"
        f"| fact | value |\n| --- | --- |\n{lines}\n"
    )
