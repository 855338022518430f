"""Real shared servers on 127.0.0.1 for the tests that are about them: PostgreSQL (Debian's
`postgresql` server binaries) and `mlflow server` on any backend store.

PostgreSQL's initdb and postgres refuse to run as root; as root (CI containers) they run as
the `postgres` user that Debian's package creates, through `runuser`, in a folder under
/tmp that the user owns (pytest's own temp folders are readable by root only).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import free_port, local_server, tool_env

POSTGRES_TOOLS = ("initdb", "pg_ctl", "postgres", "createdb", "psql")


def postgres_bin() -> Path:
    """The folder of the PostgreSQL server binaries; a test failure (not a skip) without."""
    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for folder in candidates:
        if all((folder / tool).exists() for tool in POSTGRES_TOOLS):
            return folder
    pytest.fail(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) are not on PATH or in "
        "/usr/lib/postgresql/*/bin: install Debian's `postgresql` package "
        "(`apt-get install postgresql`; .ci/run does this when it can)"
    )


def _as_postgres_user() -> tuple[list[str], pwd.struct_passwd | None]:
    """The command prefix that runs PostgreSQL's tools, and the user it switches to."""
    if os.geteuid() != 0:
        return [], None
    runuser = shutil.which("runuser")
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        user = None
    if runuser is None or user is None:
        pytest.fail(
            "running as root, where initdb refuses to run: need `runuser` and the `postgres` "
            "user (Debian's postgresql package creates it)"
        )
    return [runuser, "-u", "postgres", "--"], user


def _run(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@contextmanager
def postgres(database: str) -> Iterator[tuple[str, list[str]]]:
    """A fresh PostgreSQL cluster on 127.0.0.1 (trust auth) with `database` created.

    Yields its SQLAlchemy URI (psycopg2 driver) and a psql command line for that database.
    Stopped and deleted afterwards.
    """
    tools = postgres_bin()
    prefix, user = _as_postgres_user()
    folder = Path(tempfile.mkdtemp(prefix="tuneops-postgres-"))
    if user is not None:
        os.chown(folder, user.pw_uid, user.pw_gid)
    data, port = folder / "data", free_port()
    _run([*prefix, str(tools / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
          "-E", "UTF8", "--no-sync"])  # fmt: skip
    options = f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off"
    _run([*prefix, str(tools / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"),
          "-o", options, "-w", "-t", "120", "start"])  # fmt: skip
    try:
        client = ["-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
        _run([str(tools / "createdb"), *client, database])
        psql = [str(tools / "psql"), *client, "-d", database, "-tA", "-c"]
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/{database}", psql
    finally:
        _run([*prefix, str(tools / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def mlflow_server(backend_store_uri: str, folder: Path, workers: int = 1) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 that serves its artifacts (kept in
    `folder`/artifacts) to its clients; yields its URL, stopped after the block."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_store_uri,
        "--artifacts-destination",
        str(folder / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        # uvicorn kills a worker that misses a 5 s health ping; on a loaded 2-core CI
        # machine that took both workers down mid-test.
        "--uvicorn-opts",
        "--timeout-worker-healthcheck 60",
    ]
    uri = f"http://127.0.0.1:{port}"
    with local_server(argv, tool_env(), f"{uri}/health", folder / "mlflow-server.log", 120):
        yield uri
