from collections.abc import Iterator

import pytest
from prefect.testing.utilities import prefect_test_harness


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """Prefect's real temporary server (SQLite in a temp dir) for the whole session."""
    with prefect_test_harness(server_startup_timeout=180):
        yield
