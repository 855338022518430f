"""The environment defaults every entry point applies before importing the libraries."""

from __future__ import annotations

import os
import subprocess
import sys

READ_TIMEOUT = (
    "from tuneops import quiet; quiet.apply(); "
    "from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as s; "
    "print(s.value())"
)


def _startup_timeout(env: dict[str, str]) -> int:
    done = subprocess.run(
        [sys.executable, "-c", READ_TIMEOUT], env=env, capture_output=True, text=True, check=True
    )
    return int(done.stdout.strip().splitlines()[-1])


def test_prefect_temporary_server_gets_time_to_start_on_a_busy_machine() -> None:
    # `tuneops run` without a Prefect server starts a temporary one and waits for it
    # PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (Prefect's default: 20 s). On a
    # 2-core machine at load 20 it took longer, and the run failed before any step with
    # "Timed out while attempting to connect to ephemeral Prefect API server".
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_SERVER_EPHEMERAL")}
    assert _startup_timeout(env) == 120
    assert _startup_timeout(env | {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "7"}) == 7
