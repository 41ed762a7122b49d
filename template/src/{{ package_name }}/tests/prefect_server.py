"""The tests' Prefect server: Prefect's test harness, its SQLite transactions begun IMMEDIATE.

On SQLite, Prefect begins a transaction DEFERRED. One that reads, and then writes after another
connection has committed (the server records task runs and events in its own services
meanwhile), fails at once with SQLITE_BUSY_SNAPSHOT: the server answers 503 without a
Retry-After, and the client waits 2 s before it tries again. In this suite that was about 40 of
3,400 requests, a third of the time of the flow tests that met most of them (measured in the
template's bench/README.md). Begun IMMEDIATE, a transaction waits for the write lock instead
(SQLite's busy timeout): none fails.

Only the tests' own server is changed, by running it as `python -m <package>.tests.prefect_server`
(uvicorn with the harness's arguments) in place of `python -m uvicorn`. A Prefect server of your
own behaves as Prefect made it; give it PostgreSQL when many runs write at once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import prefect
import prefect.testing.utilities
from prefect.server.api.server import SubprocessASGIServer
from prefect.server.database.configurations import SQLITE_BEGIN_MODE, AioSqliteConfiguration
from prefect.settings import get_current_settings
from sqlalchemy import Connection


class ImmediateSQLiteServer(SubprocessASGIServer):
    """Prefect's temporary server (the same arguments and environment), run by this module."""

    def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                __name__,
                *("--app-dir", str(prefect.__module_path__.parent)),
                *("--factory", "prefect.server.api.server:create_app"),
                *("--host", "127.0.0.1", "--port", str(self.port)),
                *("--log-level", "error", "--lifespan", "on"),
            ],
            env={
                **os.environ,
                "PREFECT_UI_ENABLED": "0",
                "PREFECT__SERVER_EPHEMERAL": "1",
                "PREFECT__SERVER_FINAL": "1",
                **get_current_settings().to_environment_variables(exclude_unset=True),
            },
        )


@contextmanager
def prefect_test_server() -> Iterator[None]:
    """`prefect_test_harness` (a throwaway SQLite database, PREFECT_API_URL set), its server an
    `ImmediateSQLiteServer`."""
    with (
        mock.patch.object(prefect.testing.utilities, "SubprocessASGIServer", ImmediateSQLiteServer),
        prefect.testing.utilities.prefect_test_harness(server_startup_timeout=90),
    ):
        yield


def _begin_immediate(self: AioSqliteConfiguration, conn: Connection) -> None:
    """Prefect's `begin_sqlite_stmt`, with IMMEDIATE wherever Prefect begins a transaction."""
    if SQLITE_BEGIN_MODE.get() is not None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


if __name__ == "__main__":
    import uvicorn

    AioSqliteConfiguration.begin_sqlite_stmt = _begin_immediate  # type: ignore[method-assign]
    uvicorn.main()
