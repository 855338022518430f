"""Prefect servers for the flow tests: the test harness's temporary one, or a real
`prefect server start` on 127.0.0.1; and the helpers that drive them as a user does."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.testing.utilities import prefect_test_harness

from tests.conftest import REPO, free_port, local_server, tool_env

TUNEOPS = (sys.executable, "-m", "tuneops.cli")
PREFECT = str(Path(sys.executable).parent / "prefect")


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """Prefect's real temporary server (SQLite in a temp dir) for the whole session."""
    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def prefect_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A real `prefect server start` on a free port; the environment that points at it."""
    port = free_port()
    env = tool_env() | {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    argv = [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    health = f"http://127.0.0.1:{port}/api/health"
    with local_server(argv, env, health, tmp_path / "prefect-server.log"):
        yield env


def tuneops(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TUNEOPS, "--root", str(root), *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=REPO,
        timeout=900,
    )


def trigger(env: dict[str, str], deployment: str) -> Any:
    """Run a deployment once through the server's API and wait for its final state."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        return run_deployment(deployment, timeout=900, poll_interval=2)
