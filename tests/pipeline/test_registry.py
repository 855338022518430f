"""Registry semantics on MLflow's real SQLite store and model registry."""

import contextlib
import os
import threading
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from pipeline.export import ExportResult
from pipeline.registry import register, registry_lock, rollback
from tests.conftest import store_client
from tuneops.errors import ConfigError, ExternalToolError
from tuneops.tracking import MlflowTracker, mlflow_store

NAME = "tiny-sentiment"
TAGS = {"data.version": "abc123", "git.commit": "deadbeef", "params.hash": "0123"}


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def new_run(uri: str, tmp_path: Path) -> MlflowTracker:
    return MlflowTracker.start(uri, "tests", (tmp_path / "artifacts").as_uri(), "run", {})


def aliases(uri: str) -> dict[str, str]:
    return {a: str(v) for a, v in store_client(uri).get_registered_model(NAME).aliases.items()}


def test_first_passing_version_becomes_challenger_and_champion_with_its_tags(
    tracking_uri: str, tmp_path: Path, exported: ExportResult
) -> None:
    result = register(
        NAME,
        exported.export_dir,
        TAGS,
        True,
        new_run(tracking_uri, tmp_path),
        tmp_path / "registry.json",
    )
    assert (result.version, result.promoted, result.champion_version) == ("1", True, "1")
    version = store_client(tracking_uri).get_model_version_by_alias(NAME, "champion")
    assert str(version.version) == "1"
    assert {k: version.tags[k] for k in TAGS} == TAGS
    assert aliases(tracking_uri) == {"challenger": "1", "champion": "1"}
    assert (tmp_path / "registry.json").exists()
    # Logging the model used MLflow's global URIs; they must not leak into the environment.
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ


def test_a_failing_version_is_only_challenger_and_champion_stays(
    tracking_uri: str, tmp_path: Path, exported: ExportResult
) -> None:
    register(
        NAME, exported.export_dir, TAGS, True, new_run(tracking_uri, tmp_path), tmp_path / "r.json"
    )
    result = register(
        NAME, exported.export_dir, TAGS, False, new_run(tracking_uri, tmp_path), tmp_path / "r.json"
    )
    assert (result.version, result.promoted, result.champion_version) == ("2", False, "1")
    assert aliases(tracking_uri) == {"challenger": "2", "champion": "1"}


@pytest.mark.audit("D3")
def test_a_promoted_version_leaves_the_old_champion_as_previous_and_a_rejection_moves_neither(
    tracking_uri: str, tmp_path: Path, exported: ExportResult
) -> None:
    for passed in (True, True, False):
        register(
            NAME,
            exported.export_dir,
            TAGS,
            passed,
            new_run(tracking_uri, tmp_path),
            tmp_path / "r.json",
        )
        if passed:
            promoted = aliases(tracking_uri)
    assert promoted == {"challenger": "2", "champion": "2", "previous": "1"}
    # The rejected v3: champion and previous stay; challenger names the newest candidate,
    # as the README says (MLflow's champion/challenger aliases: the one under evaluation).
    assert aliases(tracking_uri) == {"challenger": "3", "champion": "2", "previous": "1"}


def test_champion_loads_as_pyfunc_and_predicts_on_a_text_column(
    tracking_uri: str, tmp_path: Path, exported: ExportResult
) -> None:
    register(
        NAME, exported.export_dir, TAGS, True, new_run(tracking_uri, tmp_path), tmp_path / "r.json"
    )
    with mlflow_store(tracking_uri):  # scoped: MLflow's global URI is restored after
        model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    out = model.predict(pd.DataFrame({"text": ["lovely", "awful", "fine"]}))
    assert list(out.columns) == ["label", "score", "p_negative", "p_positive", "truncated"]
    assert len(out) == 3
    assert ((out["p_negative"] + out["p_positive"]).round(5) == 1.0).all()
    with pytest.raises(MlflowException):
        model.predict(pd.DataFrame({"sentence": ["no text column"]}))


def test_the_registry_lock_excludes_a_second_holder_and_is_released(tracking_uri: str) -> None:
    client = store_client(tracking_uri)
    with registry_lock(client, NAME):
        assert client.get_registered_model(f"{NAME}.promotion-lock").tags["holder"]
        held = r"'tiny-sentiment\.promotion-lock' still held"
        with pytest.raises(ExternalToolError, match=held), registry_lock(client, NAME, 0.5):
            pass
    assert [m.name for m in client.search_registered_models()] == []


def test_a_stale_lock_left_by_a_crashed_holder_is_broken(tracking_uri: str) -> None:
    client = store_client(tracking_uri)
    client.create_registered_model(f"{NAME}.promotion-lock", tags={"acquired_at": "0"})
    with registry_lock(client, NAME, timeout_s=10, stale_after_s=1):
        acquired = client.get_registered_model(f"{NAME}.promotion-lock").tags["acquired_at"]
        assert float(acquired) > 0


@pytest.mark.audit("M1")
def test_the_holder_renews_its_heartbeat_while_it_holds_the_lock(tracking_uri: str) -> None:
    client = store_client(tracking_uri)
    with registry_lock(client, NAME, stale_after_s=30, heartbeat_s=0.2):
        tags = client.get_registered_model(f"{NAME}.promotion-lock").tags
        time.sleep(1.5)
        later = client.get_registered_model(f"{NAME}.promotion-lock").tags
    assert len(tags["token"]) == 32 and later["token"] == tags["token"]
    assert float(later["heartbeat"]) > float(tags["heartbeat"])
    assert [m.name for m in client.search_registered_models()] == []


def test_rollback_swaps_champion_and_previous_and_needs_both(
    tracking_uri: str, tmp_path: Path, exported: ExportResult
) -> None:
    client = store_client(tracking_uri)
    register(
        NAME, exported.export_dir, TAGS, True, new_run(tracking_uri, tmp_path), tmp_path / "r.json"
    )
    with pytest.raises(ConfigError, match="champion=1, previous=None"):
        rollback(client, NAME, {})
    register(
        NAME, exported.export_dir, TAGS, True, new_run(tracking_uri, tmp_path), tmp_path / "r.json"
    )
    assert rollback(client, NAME, {"rollback.reason": "r"}) == ("2", "1")
    assert aliases(tracking_uri) == {"challenger": "2", "champion": "1", "previous": "2"}
    assert client.get_model_version(NAME, "1").tags["rollback.reason"] == "r"


class _SlowWaiter:
    """A registry client whose calls on the lock model interleave the way a real race does.

    Both waiters read the stale lock before either acts (a barrier after that read); a
    waiter's delete of the lock, other than the first one made, waits until some waiter holds
    the lock: the second breaker acts on its stale view after the first has taken over.
    """

    def __init__(self, client: object, lock: str, state: dict) -> None:
        self._client, self._lock, self._state = client, lock, state

    def __getattr__(self, name: str) -> object:
        return getattr(self._client, name)

    def get_registered_model(self, name: str) -> object:
        model = self._client.get_registered_model(name)  # type: ignore[attr-defined]
        if name == self._lock and model.tags.get("acquired_at") == "0":
            with contextlib.suppress(threading.BrokenBarrierError):
                self._state["read"].wait(timeout=5)
        return model

    def delete_registered_model(self, name: str) -> object:
        if name == self._lock:
            with self._state["guard"]:
                first = not self._state["deleted"]
                self._state["deleted"] = True
            if not first:
                self._state["held"].wait(timeout=5)
        return self._client.delete_registered_model(name)  # type: ignore[attr-defined]


@pytest.mark.audit("M1", "T6")
def test_two_waiters_racing_to_break_a_stale_lock_never_both_hold_it(tracking_uri: str) -> None:
    lock = f"{NAME}.promotion-lock"
    stale = {"acquired_at": "0", "heartbeat": "0", "token": "crashed", "holder": "gone:1"}
    store_client(tracking_uri).create_registered_model(lock, tags=stale)
    state: dict = {
        "read": threading.Barrier(2),
        "guard": threading.Lock(),
        "deleted": False,
        "held": threading.Event(),
    }
    inside, most, entered, errors = [0], [0], [], []
    count = threading.Lock()

    def waiter(who: str) -> None:
        client = _SlowWaiter(store_client(tracking_uri), lock, state)
        try:
            with registry_lock(client, NAME, timeout_s=60, stale_after_s=1.5):
                with count:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                    entered.append(who)
                state["held"].set()
                time.sleep(3)  # longer than stale_after_s: the heartbeat keeps it held
                with count:
                    inside[0] -= 1
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=waiter, args=(w,)) for w in ("w1", "w2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert most[0] == 1, "both waiters held the registry lock at once"
    assert errors == []
    assert sorted(entered) == ["w1", "w2"]
    assert [m.name for m in store_client(tracking_uri).search_registered_models()] == []


@pytest.mark.audit("M1")
def test_a_holder_whose_lock_was_broken_does_not_delete_the_next_holders_lock(
    tracking_uri: str,
) -> None:
    client = store_client(tracking_uri)
    lock = f"{NAME}.promotion-lock"
    with pytest.raises(ExternalToolError, match="lost"), registry_lock(client, NAME):
        # Meanwhile a waiter judged it stale, broke it and holds a fresh lock of its own.
        client.delete_registered_model(lock)
        client.create_registered_model(lock, tags={"token": "next-holder", "heartbeat": "1"})
    assert client.get_registered_model(lock).tags["token"] == "next-holder"
