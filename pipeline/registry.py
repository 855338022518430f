"""register: log the ONNX bundle as an MLflow model and register a new version.

Every candidate becomes a new version with alias `challenger`, its lineage tags and the
sha256 of each bundle file (set at creation, so no version exists without them; opened
again only through `pipeline.registered`, which checks them and runs no stored code).
`champion` moves only when the gate passes; the version it leaves gets `previous`.
`best` names the champion with the best primary-metric point estimate so far, the anchor
every challenger is also compared with (audit M6; moved by `pipeline.register` through
`move_best`, by the rule `pipeline.gate.best_after`). Aliases are set last.
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import pandas as pd

from tuneops.errors import ConfigError, ExternalToolError
from tuneops.paths import atomic_write_text
from tuneops.tracking import MlflowTracker, mlflow_store

CHALLENGER, CHAMPION, PREVIOUS = "challenger", "champion", "previous"
# The best champion so far: with the champion comparison on, a challenger must also be
# non-inferior to it, so quality cannot drift down one tolerance per promotion.
BEST = "best"


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
    logged: Any | None = None,
) -> RegistrationResult:
    """Register the bundle (logged by `log_bundle` first, unless `logged` is that model)
    with `tags` and the sha256 of each bundle file (bundle.sha256.<file>, checked whenever
    the version is opened again); move `champion` to it when `promote`; write `record`."""
    from mlflow.exceptions import MlflowException

    from pipeline.registered import bundle_checksums

    client = tracker.client
    tags = tags | bundle_checksums(export_dir)
    info = logged if logged is not None else log_bundle(export_dir, tracker)
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
    write_registration(result, record)
    return result


def write_registration(result: RegistrationResult, record: Path) -> None:
    """reports/registry.json: the version, its aliases and the champion after registering."""
    atomic_write_text(record, json.dumps(asdict(result), indent=2) + "\n")


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


def log_bundle(export_dir: Path, tracker: MlflowTracker) -> Any:
    """Upload the bundle as an MLflow model of the run (the slow part, ~110 MB); call it
    before taking the registry lock, so the lock is held only while versions and aliases
    change."""
    return _log_bundle(export_dir, tracker)


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


@dataclass
class _Lease:
    """One acquisition of the registry lock: its token, and whether it is still ours."""

    client: Any
    lock_name: str
    token: str
    lost: bool = False

    def owned(self) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            tags = self.client.get_registered_model(self.lock_name).tags
        except MlflowException:
            return False
        return bool(tags.get("token") == self.token)

    def renew(self) -> None:
        """Heartbeat: bump the lock's `heartbeat` tag, or mark the lease lost."""
        from mlflow.exceptions import MlflowException

        if not self.owned():
            self.lost = True
            return
        with suppress(MlflowException):  # a failed beat is retried at the next one
            self.client.set_registered_model_tag(self.lock_name, "heartbeat", _now())


def _now() -> str:
    return f"{time.time():.6f}"


@contextmanager
def registry_lock(
    client: Any,
    model_name: str,
    timeout_s: float = 900.0,
    stale_after_s: float = 120.0,
    heartbeat_s: float | None = None,
) -> Iterator[None]:
    """Mutual exclusion for alias changes of one model, across processes and machines.

    Written by hand because MLflow's registry has no transactions. The lock is a
    registered model named "<model>.promotion-lock"; creating a registered model is atomic
    in every MLflow store (a unique key), so exactly one caller succeeds. Each acquisition
    stores a unique `token` on it, and a thread renews its `heartbeat` tag every
    `heartbeat_s` (default stale_after_s / 6) while it is held.

    A waiter counts the lock stale when its (token, heartbeat) has not changed for
    `stale_after_s` by the waiter's own clock (so clock skew between hosts does not matter).
    Ending a lock instance, by its holder (release) or by a waiter (break), first needs the
    claim "<lock>.release-<token>", itself a registered model that only one caller can
    create; its winner checks the token and deletes the lock, so two breakers never both
    delete, and nobody deletes a lock instance whose token they did not claim. A holder
    whose lock was broken finds that out at release and raises instead of deleting.
    The default `timeout_s` exceeds `stale_after_s`, so a waiter that arrives just after a
    crash outwaits the stale lock instead of giving up first.
    """
    lock_name = f"{model_name}.promotion-lock"
    lease = _acquire(client, lock_name, timeout_s, stale_after_s)
    stop = threading.Event()
    interval = heartbeat_s if heartbeat_s is not None else stale_after_s / 6

    def beat() -> None:
        while not stop.wait(interval) and not lease.lost:
            lease.renew()

    heart = threading.Thread(target=beat, name=f"{lock_name}-heartbeat", daemon=True)
    heart.start()
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        stop.set()
        heart.join()
        released = _end(client, lock_name, lease.token)
        if not released and not failed:
            raise ExternalToolError(
                f"registry lock {lock_name!r} was lost while held (another waiter judged it "
                f"stale after {stale_after_s:.0f}s without a heartbeat and broke it); the "
                f"alias changes made under it may have raced with another flow: check "
                f"the model's aliases"
            )


def _acquire(client: Any, lock_name: str, timeout_s: float, stale_after_s: float) -> _Lease:
    from mlflow.exceptions import MlflowException

    token = uuid.uuid4().hex
    deadline = time.monotonic() + timeout_s
    seen: tuple[str | None, str | None] | None = None
    seen_since = time.monotonic()
    while True:
        try:
            client.create_registered_model(
                lock_name,
                tags={
                    "token": token,
                    "heartbeat": _now(),
                    "acquired_at": _now(),
                    "holder": f"{socket.gethostname()}:{os.getpid()}",
                },
                description="tuneops promotion lock; held while a gate compares and moves aliases",
            )
            return _Lease(client, lock_name, token)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        try:
            tags = client.get_registered_model(lock_name).tags
        except MlflowException:
            continue  # released in the meantime: try again at once
        key = (tags.get("token"), tags.get("heartbeat", tags.get("acquired_at")))
        if key != seen:
            seen, seen_since = key, time.monotonic()
        elif time.monotonic() - seen_since > stale_after_s:
            _end(client, lock_name, key[0])  # at most one waiter's break succeeds
            seen = None
            continue
        if time.monotonic() > deadline:
            raise ExternalToolError(
                f"registry lock {lock_name!r} still held after {timeout_s:.0f}s (holder "
                f"{tags.get('holder', '?')}, token {key[0]}); if no flow is running, delete "
                f"that registered model and any {lock_name}.release-* one"
            )
        time.sleep(0.2 + random.random() * 0.3)


def _end(client: Any, lock_name: str, token: str | None) -> bool:
    """Delete the lock instance whose token is `token`, if we win the right to; True if done.

    Only the creator of the claim "<lock>.release-<token>" may delete that instance, and it
    checks the token after winning the claim: nobody else can delete the instance in
    between, so a check-then-delete here never removes another holder's lock.
    """
    from mlflow.exceptions import MlflowException

    claim = f"{lock_name}.release-{token or 'untokened'}"
    try:
        client.create_registered_model(claim, tags={"holder": f"{socket.gethostname()}"})
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return False  # someone else is ending it
    try:
        try:
            current = client.get_registered_model(lock_name).tags.get("token")
        except MlflowException:
            return False
        if current != token:
            return False
        client.delete_registered_model(lock_name)
        return True
    finally:
        with suppress(MlflowException):
            client.delete_registered_model(claim)


def champion_version(client: Any, model_name: str) -> str | None:
    return _alias_version(client, model_name, CHAMPION)


def best_version(client: Any, model_name: str) -> str | None:
    return _alias_version(client, model_name, BEST)


def move_best(client: Any, model_name: str, version: str) -> None:
    """best -> `version` (overwritten in one call, as `champion` is); under the registry lock."""
    if _alias_version(client, model_name, BEST) != version:
        client.set_registered_model_alias(model_name, BEST, version)


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
