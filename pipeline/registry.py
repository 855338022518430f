"""register: log the ONNX bundle as an MLflow model and register a new version.

Every candidate becomes a new version with alias `challenger` and its lineage tags
(set at creation, so no version exists without them). `champion` moves only when the
gate passes; the version it leaves gets `previous`. Aliases are set last.
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import pandas as pd

from tuneops.errors import ConfigError, ExternalToolError
from tuneops.paths import atomic_write_text
from tuneops.tracking import MlflowTracker, mlflow_store

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
        client.create_registered_model(model_name, description="tuneops fine-tuned model")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    # MLflow resolves a "models:/<model_id>" source through its global tracking URI.
    with mlflow_store(tracker.tracking_uri):
        created = client.create_model_version(
            model_name, info.model_uri, run_id=tracker.run_id, tags=tags, model_id=info.model_id
        )
    version = str(created.version)
    client.set_registered_model_alias(model_name, CHALLENGER, version)
    if promote:
        previous = move_champion(client, model_name, version, {})
        champion: str | None = version
    else:
        previous, champion = None, _alias_version(client, model_name, CHAMPION)
    aliases = sorted(client.get_model_version(model_name, version).aliases)
    result = RegistrationResult(
        model_name,
        version,
        aliases,
        champion,
        previous,
        promote,
        f"models:/{model_name}/{version}",
    )
    atomic_write_text(record, json.dumps(asdict(result), indent=2) + "\n")
    return result


def version_by_alias(client: Any, model_name: str, alias: str) -> Any | None:
    """The ModelVersion an alias points at, or None (no such alias or model)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def _alias_version(client: Any, model_name: str, alias: str) -> str | None:
    found = version_by_alias(client, model_name, alias)
    return None if found is None else str(found.version)


def _log_bundle(export_dir: Path, tracker: MlflowTracker) -> Any:
    import mlflow
    from mlflow.models import infer_signature

    import tuneops
    from pipeline import tasks
    from tuneops.mlflow_model import predictions_frame
    from tuneops.runtime import load_bundle

    bundle = load_bundle(export_dir)
    texts = list(tasks.get(bundle.meta["task"]).example_inputs)
    example = pd.DataFrame({"text": texts})
    output = predictions_frame(bundle, texts)
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


@contextmanager
def registry_lock(
    client: Any, model_name: str, timeout_s: float = 600.0, stale_after_s: float = 900.0
) -> Iterator[None]:
    """Mutual exclusion for alias changes of one model, across processes and machines.

    Written by hand because MLflow's registry has no transactions: the lock is a
    registered model named "<model>.promotion-lock", and creating a registered model is
    atomic in every MLflow store (a unique key), so exactly one caller succeeds. A lock
    older than `stale_after_s` (a crashed holder) is broken.
    """
    from mlflow.exceptions import MlflowException

    lock_name = f"{model_name}.promotion-lock"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.create_registered_model(
                lock_name,
                tags={
                    "acquired_at": str(time.time()),
                    "holder": f"{socket.gethostname()}:{os.getpid()}",
                },
                description="tuneops promotion lock; held while a gate compares and moves aliases",
            )
            break
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            _break_if_stale(client, lock_name, stale_after_s)
            if time.monotonic() > deadline:
                raise ExternalToolError(
                    f"registry lock {lock_name!r} still held after {timeout_s:.0f}s; if no "
                    f"flow is running, delete that registered model"
                ) from exc
            time.sleep(0.2 + random.random() * 0.3)
    try:
        yield
    finally:
        client.delete_registered_model(lock_name)


def _break_if_stale(client: Any, lock_name: str, stale_after_s: float) -> None:
    from mlflow.exceptions import MlflowException

    try:
        acquired = float(client.get_registered_model(lock_name).tags.get("acquired_at", "0"))
        if time.time() - acquired > stale_after_s:
            client.delete_registered_model(lock_name)
    except MlflowException:
        pass  # released (or broken by another waiter) in the meantime: just retry


def champion_version(client: Any, model_name: str) -> str | None:
    return _alias_version(client, model_name, CHAMPION)


def load_bundle(tracking_uri: str, model_name: str, version: str) -> Any:
    """The runtime bundle (OnnxClassifier or OnnxTokenClassifier) of a registered version."""
    import mlflow

    with mlflow_store(tracking_uri):
        model = mlflow.pyfunc.load_model(f"models:/{model_name}/{version}")
    return model.unwrap_python_model().classifier


def move_champion(client: Any, model_name: str, version: str, tags: dict[str, str]) -> str | None:
    """champion -> `version`; the version it leaves gets `previous`. Returns that version.

    `champion` is overwritten in one call, never deleted, so it is never missing.
    """
    previous = _alias_version(client, model_name, CHAMPION)
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    if previous is not None and previous != version:
        client.set_registered_model_alias(model_name, PREVIOUS, previous)
    client.set_registered_model_alias(model_name, CHAMPION, version)
    return previous


def rollback(client: Any, model_name: str, tags: dict[str, str]) -> tuple[str, str]:
    """Swap `champion` and `previous` (a second rollback undoes the first)."""
    current = _alias_version(client, model_name, CHAMPION)
    previous = _alias_version(client, model_name, PREVIOUS)
    if current is None or previous is None:
        raise ConfigError(
            f"{model_name}: rollback needs both a champion and a previous version "
            f"(champion={current}, previous={previous})"
        )
    for version in (current, previous):
        for key, value in tags.items():
            client.set_model_version_tag(model_name, version, key, value)
    client.set_registered_model_alias(model_name, CHAMPION, previous)
    client.set_registered_model_alias(model_name, PREVIOUS, current)
    return current, previous
