"""The settings every stage runs with: params (typed), project paths, tracking URI, task.

`load_context` reads params.yaml (or a preset), resolves the tracking URI and looks the
task up once, checking the keys that name its metrics before any compute.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import tasks
from pipeline.tasks.base import Task
from tuneops.config import Params, load_params
from tuneops.paths import Paths


@dataclass(frozen=True)
class Context:
    params: Params
    paths: Paths
    tracking_uri: str

    @property
    def task(self) -> Task:
        return tasks.get(self.params.task)

    @property
    def artifact_location(self) -> str | None:
        """Artifact root for new experiments: `tracking.artifact_location` in the project for
        a local store; None for a tracking server, whose own artifact root (proxied, or object
        storage) every client can reach, unlike a folder on this machine."""
        if self.tracking_uri.startswith(("http://", "https://")):
            return None
        return (self.paths.root / self.params.tracking.artifact_location).resolve().as_uri()


def tracking_uri_for(params: Params, root: Path) -> str:
    """MLFLOW_TRACKING_URI wins; a relative sqlite path is anchored at the project root."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str((root / uri.removeprefix(prefix)).resolve())
    return uri


def load_context(
    root: Path, params_file: Path | None = None, overrides: dict[str, Any] | None = None
) -> Context:
    """The project's settings; ConfigError (before any compute) on keys that do not fit
    the task, e.g. a baseline or validation metric the task does not have."""
    root = root.resolve()
    params = load_params(params_file or root / "params.yaml", overrides)
    tasks.get(params.task).check(params)
    return Context(params, Paths(root), tracking_uri_for(params, root))
