"""Keep the tests hermetic, before anything imports Prefect (pytest loads this with `-p`, see
pyproject.toml's addopts): Prefect reads its settings once, when it is imported, and conftest.py
imports the package, which imports Prefect. So no MULTIMAIL_* or PREFECT_* variable, no `.env`
and no `~/.prefect` of the developer's reaches the tests, and Prefect stays local and quiet.
"""

from __future__ import annotations

import os
import tempfile

import pytest
from pydantic_ai import models

from ..settings import Settings

#: Prefect settings the suite is meant to pass under either way, so they may come from outside
#: (the template's own suite runs the suspend tests with result persistence on).
KEPT_VARIABLES = frozenset({"PREFECT_RESULTS_PERSIST_BY_DEFAULT"})


def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> None:
    """Runs before conftest.py is imported, unlike `pytest_configure`."""
    for name in list(os.environ):
        if name.startswith(("MULTIMAIL_", "PREFECT_")) and name not in KEPT_VARIABLES:
            del os.environ[name]
    Settings.model_config["env_file"] = None
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="prefect-home-")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # Tasks called outside a flow (the fault tests) have no flow run to send logs to.
    os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"
    # The same retry policy as in production, with delays shrunk so fault tests stay quick.
    os.environ["MULTIMAIL_RETRY_BACKOFF_SECONDS"] = "0.01"
    # Replies get the fixed draft unless a test brings its scripted model (tests/drafting), and
    # a request to a real model fails the test, whatever settings.toml names.
    os.environ["MULTIMAIL_DRAFTING__MODEL"] = ""
    models.ALLOW_MODEL_REQUESTS = False
