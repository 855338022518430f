"""Faults around the pipeline: an unusable tracking store (the preflight stops the flow
before any step), and a DVC remote that is missing or unwritable during an ingest (the
batch is not half-added). Real stores, servers and `dvc` commands throughout."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, make_dvc_project, run_tool, write_params
from tests.data.bad.corpus import csv_bytes, good_rows
from tests.reliability.conftest import CliRun, record, run_cli, tree_hash
from tuneops import stages

pytestmark = pytest.mark.integration


def files_project(root: Path, uri: str) -> Path:
    """A valid dataset of the user's own: without a preflight the flow would go on."""
    dataset = root / "data" / "raw" / "mine"
    dataset.mkdir(parents=True)
    (dataset / "batch-0000.csv").write_bytes(csv_bytes(good_rows("preflight", 20)))
    write_params(root, {"data.source": "files", "data.name": "mine", "tracking.uri": uri})
    return root


def prefect_api_root() -> str:
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value()).removesuffix("/api")


# (case, tracking URI (a function of the test's folder), what the one line must say)
STORES = [
    (
        "server down (nothing listens on the port)",
        lambda tmp: f"http://127.0.0.1:{free_port()}",
        "is not usable: MlflowException",
    ),
    (
        "a server that is not MLflow (Prefect's API)",
        lambda tmp: prefect_api_root(),
        "is not usable: RestException",
    ),
    (
        "unsupported URI scheme (sqlite3:// typed for sqlite://)",
        lambda tmp: f"sqlite3:///{tmp}/mlflow.db",
        "has an unsupported scheme 'sqlite3'",
    ),
    (
        "SQLite path that cannot be created (under a regular file)",
        lambda tmp: f"sqlite:///{tmp}/a-file/mlflow.db",
        "a-file is not a writable folder",
    ),
]


def blocker(tmp: Path) -> None:
    (tmp / "a-file").write_text("a file, not a folder")


def timed_run(
    capfd: pytest.CaptureFixture[str], root: Path, command: str, case: str, record_property: Any
) -> tuple[CliRun, float]:
    started = time.monotonic()
    run = run_cli(capfd, "--root", str(root), command)
    seconds = time.monotonic() - started
    outcome = "survived" if run.exit_code == 6 else f"exit {run.exit_code}"
    detail = f"exit {run.exit_code} after {seconds:.1f} s: {run.error_line}"
    record(record_property, "fault", case, outcome, detail)
    return run, seconds


def check_preflight_stop(run: CliRun, root: Path, says: str, seconds: float) -> None:
    assert run.exit_code == 6, run.err[-3000:]
    assert run.error_line.startswith("tuneops: ExternalToolError: MLflow tracking"), run.err
    assert says in run.error_line
    assert len(run.error_line.splitlines()) == 1
    assert "Traceback" not in run.err + run.out
    assert "Task run 'fetch-data" not in run.err  # nothing ran after the preflight
    for later in ("data/prepared", "models", "reports/validation.json", "mlflow.db"):
        assert not (root / later).exists(), later
    assert seconds < 60


@pytest.mark.parametrize(("case", "uri", "says"), STORES, ids=[s[0] for s in STORES])
def test_an_unusable_tracking_store_stops_the_flow_before_any_step(
    case: str,
    uri: Any,
    says: str,
    prefect_server: None,
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
    record_property: Any,
) -> None:
    blocker(tmp_path)
    root = files_project(tmp_path / "project", uri(tmp_path))
    run, seconds = timed_run(capfd, root, "run", f"tracking store: {case}", record_property)
    check_preflight_stop(run, root, says, seconds)


def test_mlflow_tracking_uri_from_the_environment_is_checked_too(
    prefect_server: None,
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    record_property: Any,
) -> None:
    root = files_project(tmp_path / "project", f"sqlite:///{tmp_path}/good.db")
    port = free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    case = "tracking store: MLFLOW_TRACKING_URI set to a dead server (tuneops retrain)"
    run, seconds = timed_run(capfd, root, "retrain", case, record_property)
    check_preflight_stop(run, root, f"http://127.0.0.1:{port} is not usable", seconds)


@pytest.fixture(scope="module")
def dvc_ingest_project(tmp_path_factory: pytest.TempPathFactory) -> stages.Context:
    """The bundled data tracked and pushed to a local remote (data version 1)."""
    root = make_dvc_project(tmp_path_factory.mktemp("remote"))
    write_params(root, {"data.hold_back_rows": 0})
    ctx = stages.load_context(root)
    stages.step_fetch(ctx)
    stages.step_version_data(ctx)
    return ctx


def dvc(ctx: stages.Context, *args: str) -> str:
    return run_tool(ctx.paths.root, sys.executable, "-m", "dvc", *args).stdout


def remote_url(tmp: Path) -> str:
    return str(tmp / "a-file" / "remote")  # its parent is a file: it can never be created


# (case, how to break the remote, what the one line must say); each is undone afterwards
REMOTES = [
    (
        "remote folder missing and impossible to create",
        lambda ctx, tmp: dvc(ctx, "remote", "modify", "local", "url", remote_url(tmp)),
        # the cause, DVC's own ERROR: line (the path it could not create)
        "`dvc push data/raw.dvc` failed in {root}: ERROR: unexpected error - [Errno 20] "
        "Not a directory: '{tmp}/a-file/remote/",
    ),
    (
        "no default remote configured",
        lambda ctx, tmp: dvc(ctx, "remote", "default", "--unset"),
        "no DVC default remote, so the new data version could not be pushed",
    ),
]


@pytest.mark.audit("M18", "T7", "D7")
@pytest.mark.parametrize(("case", "damage", "says"), REMOTES, ids=[r[0] for r in REMOTES])
def test_a_failed_push_leaves_no_half_added_batch(
    case: str,
    damage: Any,
    says: str,
    dvc_ingest_project: stages.Context,
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
    record_property: Any,
) -> None:
    ctx = dvc_ingest_project
    raw, dvc_file = ctx.paths.data_raw, ctx.paths.data_raw.with_name("raw.dvc")
    config = ctx.paths.root / ".dvc" / "config"
    saved_config = config.read_bytes()
    before = tree_hash(raw, dvc_file)
    source = tmp_path / "new-batch.csv"
    source.write_bytes(csv_bytes(good_rows("remote")))
    blocker(tmp_path)
    damage(ctx, tmp_path)
    try:
        run = run_cli(capfd, "--root", str(ctx.paths.root), "ingest", str(source))
    finally:
        config.write_bytes(saved_config)
    unchanged = tree_hash(raw, dvc_file) == before
    record(
        record_property,
        "fault",
        f"DVC remote during ingest: {case}",
        "survived" if run.exit_code == 6 and unchanged else f"exit {run.exit_code}",
        f"exit {run.exit_code}; data/raw and data/raw.dvc "
        f"{'unchanged' if unchanged else 'CHANGED'}: {run.error_line}",
    )
    assert run.exit_code == 6, run.err[-3000:]
    assert run.error_line.startswith("tuneops: ExternalToolError: ")
    assert says.format(root=ctx.paths.root, tmp=tmp_path) in run.error_line
    assert "Having any troubles" not in run.error_line  # DVC's support banner is not a cause
    assert unchanged
    assert not (raw / "movie_sentiment" / "batch-0001.csv").exists()
    assert "up to date" in dvc(ctx, "status", "data/raw.dvc")
    assert "in sync" in dvc(ctx, "status", "--cloud", "data/raw.dvc")  # remote repaired


def test_the_remote_repaired_the_same_batch_is_added_and_pushed(
    dvc_ingest_project: stages.Context, capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """After the failed attempts above, nothing stands in the way of a retry."""
    ctx = dvc_ingest_project
    source = tmp_path / "new-batch.csv"
    source.write_bytes(csv_bytes(good_rows("remote")))
    run = run_cli(capfd, "--root", str(ctx.paths.root), "ingest", str(source))
    assert run.exit_code == 0, run.err[-3000:]
    added = ctx.paths.data_raw / "movie_sentiment" / "batch-0001.csv"
    assert added.read_bytes() == source.read_bytes()
    assert "in sync" in dvc(ctx, "status", "--cloud", "data/raw.dvc")
