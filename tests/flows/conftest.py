"""A real `prefect server start` on 127.0.0.1 for the flow tests, and the helpers that drive
it as a user does (the test harness's temporary server, `prefect_server`, is in
tests/conftest.py: the reliability tests use it too)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, free_port, local_server, tool_env

TUNEOPS = (sys.executable, "-m", "tuneops.cli")
PREFECT = str(Path(sys.executable).parent / "prefect")


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
