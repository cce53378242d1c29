"""One Prefect test server for all flow tests (this package): starting it costs 10-25 s.

The server's settings live in a temporary PREFECT_HOME, analytics are off (no network here),
and the startup timeout is generous because a busy 2-core machine can take half a minute.
Prefect tests must not run under pytest-xdist.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


# Package scope: the server (and its threads) stops after the flow tests, before other tests
# fork worker processes (a fork that copies a live server's threads can break the child).
@pytest.fixture(scope="package")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API URL of the session's Prefect test server; flows run in-process against it."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    settings = {
        PREFECT_HOME: tmp_path_factory.mktemp("prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED: False,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 180,
    }
    with temporary_settings(settings), prefect_test_harness(server_startup_timeout=None):
        yield PREFECT_API_URL.value()
