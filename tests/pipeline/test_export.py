import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import Trained
from tuneops.config import ExportConfig
from tuneops.errors import ExportParityError
from tuneops.pipeline.export import ExportResult, export
from tuneops.pipeline.modeling import load_classifier, load_tokenizer, predict_logits
from tuneops.runtime import OnnxClassifier


def test_bundle_holds_model_tokenizer_labels_metadata_and_card(exported: ExportResult) -> None:
    names = {p.name for p in exported.export_dir.iterdir()}
    assert names == {"model.onnx", "tokenizer.json", "labels.json", "bundle.json", "README.md"}
    meta = json.loads((exported.export_dir / "bundle.json").read_text())
    assert meta["input_names"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert meta["parity"]["label_agreement"] == 1.0
    assert meta["parity"]["max_abs_diff"] <= 1e-4


def test_onnx_reproduces_pytorch_logits_at_other_batch_sizes_and_lengths(
    exported: ExportResult, trained: Trained
) -> None:
    texts = pd.read_parquet(trained.paths.data_prepared / "test.parquet")["text"].tolist()[:23]
    texts.append("word " * 200)  # longer than max_length: truncated the same way by both
    model = load_classifier(trained.paths.candidate)
    tokenizer = load_tokenizer(trained.paths.candidate)
    reference = predict_logits(model, tokenizer, texts, trained.params.train.max_length, 7)
    onnx_logits = OnnxClassifier(exported.export_dir).logits(texts, batch_size=5)
    np.testing.assert_allclose(onnx_logits, reference, atol=1e-4)


def test_failed_parity_raises_and_keeps_the_previous_bundle(
    exported: ExportResult, trained: Trained
) -> None:
    before = (exported.export_dir / "model.onnx").read_bytes()
    strict = ExportConfig(parity_max_abs_diff=1e-30)  # no float32 export can meet this
    with pytest.raises(ExportParityError, match=r"previous bundle .* was kept"):
        export(
            strict,
            trained.params.train.max_length,
            trained.paths.candidate,
            trained.paths.data_prepared,
            trained.paths.export,
        )
    assert (exported.export_dir / "model.onnx").read_bytes() == before


def test_bundle_runs_where_torch_and_transformers_cannot_be_imported(
    exported: ExportResult,
) -> None:
    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from tuneops.runtime import OnnxClassifier\n"
        f"p = OnnxClassifier({str(exported.export_dir)!r}).predict(['a wonderful film'])[0]\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "print(p.label, round(sum(p.probabilities.values()), 4))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
        check=False,
    )
    assert done.returncode == 0, done.stderr
    label, total = done.stdout.split()
    assert label in ("negative", "positive") and total == "1.0"
