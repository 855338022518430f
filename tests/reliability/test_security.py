"""Loading is safe: weights come from safetensors only, pickles are never unpickled, a
model folder's own code never runs, and a registered champion is opened from its verified
bundle files, never by running the code stored beside them; the server answers errors
without paths or tracebacks. (That no secret from the environment is recorded is tested on
a whole flow run: tests/flows/test_training.py::test_no_secret_from_the_environment_is_recorded.)"""

from __future__ import annotations

import ast
import hashlib
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
from pipeline.gate import GateVerdict
from pipeline.register import RegisterInputs, gate_and_register
from pipeline.registry import RegistrationResult
from pipeline.training.modeling import load_classifier
from tests.conftest import REPO, TEXT, Trained, store_client, stored_model_dir
from tests.reliability.conftest import record
from tuneops.config import GateConfig
from tuneops.errors import ModelFileError
from tuneops.runtime import OnnxClassifier
from tuneops.serving.pull import pull_bundle
from tuneops.serving.server import Limits, create_app
from tuneops.tracking import MlflowTracker


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


# Calls that load an MLflow model by running its code: a pyfunc "model from code" executes
# its logged python_model file and puts its logged code_paths first on sys.path; the other
# flavours unpickle. Whoever can write the artifact store then runs code in our process.
MLFLOW_LOADERS = re.compile(
    r"(^|\.)(pyfunc\.(load_model|load_pyfunc|spark_udf)|models\.Model\.load|"
    r"(sklearn|pytorch|transformers|onnx|keras|tensorflow)\.load_model)$"
)


def mlflow_model_loads(source: str) -> list[str]:
    """The calls (and `from mlflow... import load_model` names) in `source` that load an
    MLflow model through MLflow; read from the syntax tree, so docstrings and comments
    that show users the pyfunc API do not count."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and MLFLOW_LOADERS.search(ast.unparse(node.func)):
            found.append(f"line {node.lineno}: {ast.unparse(node.func)}()")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mlflow"):
            for alias in node.names:
                if MLFLOW_LOADERS.search(f"{node.module}.{alias.name}"):
                    found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
    return found


def test_the_source_has_no_unsafe_loading(record_property: Any) -> None:
    found = [
        f"{path.relative_to(REPO)}: {name}"
        for package in ("tuneops", "pipeline", "flows")
        for path in sorted((REPO / package).rglob("*.py"))
        for name, pattern in FORBIDDEN.items()
        if pattern.search(path.read_text(encoding="utf-8"))
    ]
    found += [
        f"{path.relative_to(REPO)}: {call} (runs code from the artifact store)"
        for package in ("tuneops", "pipeline", "flows")
        for path in sorted((REPO / package).rglob("*.py"))
        for call in mlflow_model_loads(path.read_text(encoding="utf-8"))
    ]
    record(
        record_property,
        "security",
        "tuneops/, pipeline/ and flows/ scanned for unsafe loading calls",
        "none found" if not found else "FOUND",
        "; ".join(found)
        or ", ".join(
            [*FORBIDDEN, "an MLflow model loaded through MLflow (pyfunc.load_model, ...)"]
        ),
    )
    assert found == []
    loader = (REPO / "pipeline" / "training" / "modeling.py").read_text(encoding="utf-8")
    assert '"use_safetensors": True, "trust_remote_code": False' in loader


@pytest.mark.audit("M19", "D9")
def test_the_scan_catches_the_champion_loaded_as_a_pyfunc() -> None:
    """The gate's champion loader at 9fa413e (pipeline/registry.py), which the scan above
    must find; a docstring showing users the pyfunc API must not count."""
    old_loader = (
        "def load_bundle(tracking_uri, model_name, version):\n"
        '    """`mlflow.pyfunc.load_model("models:/m@champion")` is what users call."""\n'
        "    import mlflow\n"
        "    with mlflow_store(tracking_uri):\n"
        '        model = mlflow.pyfunc.load_model(f"models:/{model_name}/{version}")\n'
        "    return model.unwrap_python_model().classifier\n"
    )
    assert mlflow_model_loads(old_loader) == ["line 5: mlflow.pyfunc.load_model()"]
    assert mlflow_model_loads("from mlflow.pyfunc import load_model\n") == [
        "line 1: from mlflow.pyfunc import load_model"
    ]
    assert mlflow_model_loads("import mlflow\nmlflow.sklearn.load_model(uri)\n") == [
        "line 2: mlflow.sklearn.load_model()"
    ]
    assert mlflow_model_loads("from mlflow.pyfunc import PythonModel\n") == []


@pytest.mark.audit("M19")
def test_gating_against_the_champion_never_runs_code_from_the_artifact_store(
    trained: Trained, exported: ExportResult, tmp_path: Path, record_property: Any
) -> None:
    uri, name = f"sqlite:///{tmp_path / 'mlflow.db'}", "guarded"
    _, first = _register(uri, tmp_path, name, trained, exported)
    # Someone with write access to the artifact store plants code in the champion's files:
    # the pyfunc's python_model file and its logged copy of tuneops/.
    marker = tmp_path / "artifact-code-ran"
    stored = stored_model_dir(uri, name, first.version)
    planted = [stored / "mlflow_model.py", *sorted((stored / "code").rglob("*.py"))]
    payload = f"\nimport os\nos.makedirs({str(marker)!r}, exist_ok=True)\n"
    for path in planted:  # appended: each file still imports, then plants the marker
        path.write_text(path.read_text() + payload)
    verdict, second = _register(uri, tmp_path, name, trained, exported)
    comparison = verdict.comparison
    record(
        record_property,
        "security",
        "the champion's stored code (its pyfunc python_model and tuneops/ copy) rewritten to "
        "run on load, then a gate against it",
        "not run" if not marker.exists() else "RAN",
        f"{len(planted)} files planted; champion v{first.version} re-scored from its "
        f"verified bundle with tuneops.runtime: macro-F1 "
        f"{comparison.champion_metrics['test_macro_f1']:.4f}"
        if comparison
        else "not compared",
    )
    assert not marker.exists()
    assert comparison is not None and comparison.champion_version == first.version
    assert second.version == "2"


@pytest.mark.audit("M19")
def test_a_changed_champion_file_is_refused_naming_the_file_and_both_hashes(
    trained: Trained, exported: ExportResult, tmp_path: Path, record_property: Any
) -> None:
    uri, name = f"sqlite:///{tmp_path / 'mlflow.db'}", "guarded"
    _, first = _register(uri, tmp_path, name, trained, exported)
    client = store_client(uri)
    tags = client.get_model_version(name, first.version).tags
    files = sorted(p for p in exported.export_dir.iterdir() if p.is_file())
    assert {k: v for k, v in tags.items() if k.startswith("bundle.sha256.")} == {
        f"bundle.sha256.{p.name}": hashlib.sha256(p.read_bytes()).hexdigest() for p in files
    }
    # The champion's labels swapped in the artifact store: every prediction would flip.
    labels = stored_model_dir(uri, name, first.version) / "artifacts" / "export" / "labels.json"
    labels.write_text(json.dumps(list(reversed(json.loads(labels.read_text())))) + "\n")
    changed = hashlib.sha256(labels.read_bytes()).hexdigest()
    expected = (
        f"{name} v1: labels.json has sha256 {changed}, but {tags['bundle.sha256.labels.json']} "
        "was recorded at registration: the file changed in the artifact store; not opened"
    )
    with pytest.raises(ModelFileError) as gated:
        _register(uri, tmp_path, name, trained, exported)
    with pytest.raises(ModelFileError) as pulled:
        pull_bundle(uri, name, "champion", tmp_path / "pulled")
    record(
        record_property,
        "security",
        "a champion file changed in the artifact store (labels.json reordered), then a gate "
        "against it and a pull-bundle",
        "refused" if str(gated.value) == expected else "OPENED",
        str(gated.value),
    )
    assert str(gated.value) == expected and str(pulled.value) == expected
    assert ModelFileError.exit_code == 8
    assert not (tmp_path / "pulled").exists()
    # Nothing registered or moved by the refused gate.
    assert [str(v.version) for v in client.search_model_versions(f"name='{name}'")] == ["1"]
    assert {k: str(v) for k, v in client.get_registered_model(name).aliases.items()} == {
        "challenger": "1",
        "champion": "1",
        "best": "1",
    }


def _register(
    uri: str, tmp_path: Path, name: str, trained: Trained, exported: ExportResult
) -> tuple[GateVerdict, RegistrationResult]:
    """The register step for the exported bundle, with the champion comparison on."""
    cfg = GateConfig(floors={}, beat_baselines=False, per_class=False, bootstrap_resamples=100)
    tracker = MlflowTracker.start(uri, "tests", (tmp_path / "artifacts").as_uri(), "run", {})
    reports = tmp_path / "reports"
    reports.mkdir(exist_ok=True)
    inputs = RegisterInputs(TEXT, cfg, uri, name, trained.paths.data_prepared, reports)
    return gate_and_register(inputs, tracker, exported.export_dir, {})


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
