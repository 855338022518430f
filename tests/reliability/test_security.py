"""Loading is safe: weights come from safetensors only, pickles are never unpickled and a
model folder's own code never runs; the server answers errors without paths or
tracebacks. (That no secret from the environment is recorded is tested on a whole flow
run: tests/flows/test_training.py::test_no_secret_from_the_environment_is_recorded.)"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pipeline.export import ExportResult
from pipeline.training.modeling import load_classifier
from tests.conftest import REPO
from tests.reliability.conftest import record
from tuneops.errors import ModelFileError
from tuneops.runtime import OnnxClassifier
from tuneops.serving.server import Limits, create_app


class _Payload:
    """A pickle that, when unpickled, creates a folder: proof that it was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def test_pickled_weights_are_refused_and_never_unpickled(
    tiny_model_dir: Path, tmp_path: Path, record_property: Any
) -> None:
    folder = shutil.copytree(tiny_model_dir, tmp_path / "pickled-only")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "unpickled"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ModelFileError) as caught:
        load_classifier(folder, ("a", "b"))
    record(
        record_property,
        "security",
        "a model folder with only pytorch_model.bin (a pickle)",
        "refused" if not marker.exists() else "UNPICKLED",
        str(caught.value),
    )
    assert "found ['pytorch_model.bin'], which tuneops never unpickles" in str(caught.value)
    assert not marker.exists()


def test_beside_safetensors_a_pickle_is_ignored(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny_model_dir, tmp_path / "both")
    marker = tmp_path / "unpickled"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    load_classifier(folder, ("a", "b"))
    assert not marker.exists()


def test_a_model_folders_own_code_never_runs(
    tiny_model_dir: Path, tmp_path: Path, record_property: Any
) -> None:
    folder = shutil.copytree(tiny_model_dir, tmp_path / "remote-code")
    marker = tmp_path / "remote-code-ran"
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(
        f"import os\nos.mkdir({str(marker)!r})\n"
        "from transformers import BertForSequenceClassification as EvilModel\n"
    )
    model = load_classifier(folder, ("a", "b"))
    record(
        record_property,
        "security",
        "a model folder whose config.json maps to its own code",
        "not run" if not marker.exists() else "RAN",
        f"loaded the library's {type(model).__name__}; evil.py never imported",
    )
    assert type(model).__name__ == "BertForSequenceClassification"
    assert not marker.exists()


# What tuneops's own code must never contain (transformers' Trainer, which loads the
# checkpoints' optimizer/scheduler/RNG states, calls torch.load(..., weights_only=True)).
FORBIDDEN = {
    "trust_remote_code=True": re.compile(r"trust_remote_code\s*=\s*True"),
    "use_safetensors=False": re.compile(r"use_safetensors\s*=\s*False"),
    "safe_serialization=False": re.compile(r"safe_serialization\s*=\s*False"),
    "torch.load without weights_only=True": re.compile(r"torch\.load\((?![^)]*weights_only=True)"),
    "pickle.load(s)": re.compile(r"pickle\.loads?\("),
    "yaml.load (not safe_load)": re.compile(r"yaml\.load\("),
}


def test_the_source_has_no_unsafe_loading(record_property: Any) -> None:
    found = [
        f"{path.relative_to(REPO)}: {name}"
        for package in ("tuneops", "pipeline", "flows")
        for path in sorted((REPO / package).rglob("*.py"))
        for name, pattern in FORBIDDEN.items()
        if pattern.search(path.read_text(encoding="utf-8"))
    ]
    record(
        record_property,
        "security",
        "tuneops/, pipeline/ and flows/ scanned for unsafe loading calls",
        "none found" if not found else "FOUND",
        "; ".join(found) or ", ".join(FORBIDDEN),
    )
    assert found == []
    loader = (REPO / "pipeline" / "training" / "modeling.py").read_text(encoding="utf-8")
    assert '"use_safetensors": True, "trust_remote_code": False' in loader


class _BrokenClassifier(OnnxClassifier):
    """A bundle whose inference fails (an onnxruntime crash cannot be caused on demand)."""

    def predict(self, texts: list[str], batch_size: int = 32) -> list[Any]:
        raise RuntimeError(f"{self.bundle_dir / self.model_file}: node MatMul_17 failed")


def test_server_errors_carry_no_path_and_no_traceback(
    exported: ExportResult, caplog: pytest.LogCaptureFixture, record_property: Any
) -> None:
    bundle = str(exported.export_dir)
    app = create_app(_BrokenClassifier(bundle, model="fp32"), Limits(max_body_bytes=2000))
    with TestClient(app, raise_server_exceptions=False) as client:
        answers = {
            "inference fails (500)": client.post("/predict", json={"texts": ["a film"]}),
            "body over the limit (413)": client.post("/predict", content=b"x" * 3000),
            "a path in bad JSON (400)": client.post("/predict", content=b'{"/etc/passwd'),
            "a path where texts go (422)": client.post("/predict", json={"texts": "/etc/passwd"}),
        }
    statuses = {case: r.status_code for case, r in answers.items()}
    bodies = " ".join(r.text for r in answers.values())
    record(
        record_property,
        "security",
        "server errors (500, 413, 400, 422)",
        "no path, no traceback" if bundle not in bodies and "Traceback" not in bodies else "LEAKED",
        json.dumps({c: [r.status_code, r.json()] for c, r in answers.items()}),
    )
    assert statuses == {
        "inference fails (500)": 500,
        "body over the limit (413)": 413,
        "a path in bad JSON (400)": 400,
        "a path where texts go (422)": 422,
    }
    assert answers["inference fails (500)"].json() == {"error": "internal error"}
    for leak in (bundle, "/etc/passwd", "Traceback", "MatMul_17"):
        assert leak not in bodies
    assert "MatMul_17" in caplog.text  # the traceback stays in the server's own log
