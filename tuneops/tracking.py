"""The one module that talks to MLflow tracking; pipeline steps see only `Tracker`.

Steps take a `Tracker` argument so that they run (and are tested) without a tracking
server: `NullTracker` drops everything, `MlflowTracker` logs to one MLflow run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from tuneops.errors import ExternalToolError

# MLflow's limit on one param value is 6000 characters; longer ones are cut, not rejected.
_MAX_PARAM_CHARS = 6000


class Tracker(Protocol):
    """What a step may record about itself."""

    @property
    def run_id(self) -> str | None: ...

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, Any]) -> None: ...

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...


class NullTracker:
    """Records nothing: for tests and for running a step on its own."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        return None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        return None

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        return None

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        return None


def store_client(tracking_uri: str) -> Any:
    """An MlflowClient whose registry is the same store as its tracking.

    Both explicit: left out, the registry URI falls back to MLflow's process-global one,
    which another project in the same process may have set.
    """
    from mlflow import MlflowClient

    quiet_run_links(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def quiet_run_links(tracking_uri: str) -> None:
    """Stop MLflow printing "View run ... at: <URL>" when `tracking_uri` holds credentials.

    On a tracking server MLflow writes that line to stdout whenever a run ends, the URL built
    from the tracking URI as given, user:password@ included (mlflow 3.17
    `TrackingServiceClient._log_url`). Set for the whole process, not around each call: the
    flag is read from os.environ, and Prefect runs tasks in threads. tuneops names the run
    and the (redacted) store itself (flows/training.py).
    """
    if redact_uri(tracking_uri) != tracking_uri:
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"


class MlflowTracker:
    """Logs to one MLflow run through an explicit `MlflowClient` (no global active run)."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.tracking_uri = tracking_uri
        self.client = store_client(tracking_uri)
        self._run_id = run_id

    @property
    def run_id(self) -> str:
        return self._run_id

    @classmethod
    def start(
        cls,
        tracking_uri: str,
        experiment: str,
        artifact_location: str | None,
        run_name: str,
        tags: Mapping[str, Any],
    ) -> MlflowTracker:
        """Create the experiment if needed and start a new run in it."""
        from mlflow.exceptions import MlflowException

        client = store_client(tracking_uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            experiment_id = exp.experiment_id
        else:
            try:
                experiment_id = client.create_experiment(
                    experiment, artifact_location=artifact_location
                )
            except MlflowException as exc:  # another flow created it a moment ago
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                existing = client.get_experiment_by_name(experiment)
                if existing is None:
                    raise
                experiment_id = existing.experiment_id
        run = client.create_run(
            experiment_id, run_name=run_name, tags={k: str(v) for k, v in tags.items()}
        )
        return cls(tracking_uri, run.info.run_id)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:_MAX_PARAM_CHARS]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
            self.client.log_batch(self._run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step or 0)
            for k, v in metrics.items()
            if isinstance(v, int | float) and math.isfinite(v)
        ]
        if items:
            self.client.log_batch(self._run_id, metrics=items)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self._run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if path.is_dir():
            self.client.log_artifacts(self._run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self._run_id, str(path), artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self._run_id, status=status)

    @contextmanager
    def active(self) -> Iterator[None]:
        """Make this run MLflow's active run for APIs that need one (e.g. `log_model`)."""
        import mlflow

        with (
            mlflow_store(self.tracking_uri),
            mlflow.start_run(run_id=self._run_id, log_system_metrics=False),
        ):
            yield
        # Leaving `start_run` marks the run FINISHED; the steps decide when it really is.
        self.client.update_run(self._run_id, status="RUNNING")


_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextmanager
def mlflow_store(uri: str) -> Iterator[None]:
    """Point MLflow's global (fluent) APIs at `uri` for the block, then put them back.

    `mlflow.set_tracking_uri` also exports MLFLOW_TRACKING_URI to os.environ; left there,
    it would win over the next project's params.yaml in the same process (a worker
    running several flows). The environment is the faithful record of what was set.
    """
    import mlflow

    saved = {name: os.environ.get(name) for name in _URI_VARIABLES}
    quiet_run_links(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])  # type: ignore[arg-type]
        mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])  # type: ignore[arg-type]
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# Stores tuneops documents (README "Scale out"); a "+driver" suffix is allowed
# (postgresql+psycopg2://). MLflow 3's file store is in maintenance mode: use sqlite.
TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")


def check_tracking_server(tracking_uri: str, timeout_s: int = 10) -> None:
    """Fail fast, before any compute, when the tracking store cannot be used.

    One request with no retries and a `timeout_s` limit: MLflow's client on its own
    retries an unreachable server with backoff for about four minutes. Raises
    ExternalToolError with one line naming the (redacted) URI and the cause.
    """
    shown = redact_uri(tracking_uri)
    scheme = tracking_uri.partition("://")[0].split("+")[0] if "://" in tracking_uri else ""
    if scheme not in TRACKING_SCHEMES:
        raise ExternalToolError(
            f"MLflow tracking URI {shown!r} has an unsupported scheme {scheme!r}; expected one "
            f"of {', '.join(TRACKING_SCHEMES)} (e.g. sqlite:///mlflow.db or "
            f"http://host:5000), set by tracking.uri or MLFLOW_TRACKING_URI"
        )
    if scheme == "sqlite" and _new_sqlite_file(tracking_uri, shown):
        return  # creatable; not created here, so a run that stops early leaves no store
    limits = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}
    saved = {name: os.environ.get(name) for name in limits}
    os.environ.update(limits)
    try:
        store_client(tracking_uri).search_experiments(max_results=1)
    except Exception as exc:  # MLflow raises many types (HTTP, SQL, URI): one message for all
        cause = redact_text((str(exc).strip().splitlines() or [""])[0][:300], tracking_uri)
        raise ExternalToolError(
            f"MLflow tracking store {shown} is not usable: {type(exc).__name__}: {cause}"
        ) from exc
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _new_sqlite_file(tracking_uri: str, shown: str) -> bool:
    """True when the SQLite file does not exist yet but can be created (MLflow creates it
    and its folders on first use); raises when it cannot be."""
    database = Path(tracking_uri.partition(":///")[2])
    if str(database) in ("", ".", ":memory:") or database.exists():
        return False
    existing = next(p for p in database.parents if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ExternalToolError(
            f"MLflow tracking store {shown} is not usable: {existing} is not a writable "
            f"folder, so {database} cannot be created"
        )
    return True


def redact_uri(uri: str) -> str:
    """The URI with any user:password@ part replaced, for messages and logs."""
    return redact_text(uri, uri)


def redact_text(text: str, uri: str) -> str:
    """`text` with the user:password@ part of `uri` (if it has one) replaced by ***@."""
    _scheme, sep, rest = uri.partition("://")
    host = rest.split("/", 1)[0]
    if sep and "@" in host:
        return text.replace(host.rsplit("@", 1)[0] + "@", "***@")
    return text
