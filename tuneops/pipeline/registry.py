"""register: log the ONNX bundle as an MLflow model and register a new version.

Every candidate becomes a new version with alias `challenger` and its lineage tags
(set at creation, so no version exists without them). `champion` moves only when the
gate passes; the version it leaves gets `previous`. Aliases are set last.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import pandas as pd

from tuneops.paths import atomic_write_text
from tuneops.tracking import MlflowTracker

CHALLENGER, CHAMPION, PREVIOUS = "challenger", "champion", "previous"


@dataclass
class RegistrationResult:
    model_name: str
    version: str
    aliases: list[str]
    champion_version: str | None
    previous_champion: str | None
    promoted: bool
    model_uri: str


def register(
    model_name: str,
    export_dir: Path,
    tags: dict[str, str],
    promote: bool,
    tracker: MlflowTracker,
    record: Path,
) -> RegistrationResult:
    """Log + register the bundle; move `champion` to it when `promote`; write `record`."""
    from mlflow.exceptions import MlflowException

    client = tracker.client
    info = _log_bundle(export_dir, tracker)
    try:
        client.create_registered_model(model_name, description="tuneops text classifier")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    created = client.create_model_version(
        model_name, info.model_uri, run_id=tracker.run_id, tags=tags, model_id=info.model_id
    )
    version = str(created.version)
    client.set_registered_model_alias(model_name, CHALLENGER, version)
    previous = _alias_version(client, model_name, CHAMPION)
    if promote:
        if previous is not None and previous != version:
            client.set_registered_model_alias(model_name, PREVIOUS, previous)
        client.set_registered_model_alias(model_name, CHAMPION, version)
    champion = version if promote else previous
    aliases = sorted(client.get_model_version(model_name, version).aliases)
    result = RegistrationResult(
        model_name,
        version,
        aliases,
        champion,
        previous if promote else None,
        promote,
        f"models:/{model_name}/{version}",
    )
    atomic_write_text(record, json.dumps(asdict(result), indent=2) + "\n")
    return result


def _alias_version(client: Any, model_name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


def _log_bundle(export_dir: Path, tracker: MlflowTracker) -> Any:
    import mlflow
    from mlflow.models import infer_signature

    import tuneops
    from tuneops.runtime import OnnxClassifier

    example = pd.DataFrame({"text": ["a great, moving film", "dull and far too long"]})
    output = pd.DataFrame(
        [
            {"label": p.label, "score": p.score} | {f"p_{k}": v for k, v in p.probabilities.items()}
            for p in OnnxClassifier(export_dir).predict(example["text"].tolist())
        ]
    )
    requirements = [
        f"{name}=={package_version(name)}"
        for name in ("onnxruntime", "tokenizers", "numpy", "pandas")
    ]
    with tracker.active():
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(tuneops.__file__).with_name("mlflow_model.py")),
            artifacts={"bundle": str(export_dir)},
            code_paths=[str(Path(tuneops.__file__).parent)],
            pip_requirements=requirements,
            signature=infer_signature(example, output),
            input_example=example,
        )
