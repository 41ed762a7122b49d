"""Exactly once under the settings a Prefect engineer turns on in production (slow).

`suspend_flow_run`'s own docs tell users to set PREFECT_RESULTS_PERSIST_BY_DEFAULT=true. With it,
Prefect's default cache key (inputs, task source, flow run id) would answer a status read after
a resume from the read before the suspension, so an approved reply would be reported timed out.
The generated project's suspend tests must pass with persistence on, as they do without it
(the generated suite runs them with the default in every render).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from .conftest import run, uv

pytestmark = pytest.mark.slow


def test_the_suspend_tests_pass_with_result_persistence_on(installed_project: Path) -> None:
    package = next((installed_project / "src").iterdir())
    tests = package / "tests"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
    }
    result = run(
        [
            uv(),
            "run",
            "--frozen",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(tests / "test_suspend.py"),
            "-k",
            "resume_command or expired_wait or decision_webhook or slower",
        ],
        cwd=installed_project,
        env=env,
        timeout=900,
    )
    summary = result.stdout.strip().splitlines()[-1]
    assert re.search(r"\b5 passed", summary), summary
    assert "failed" not in summary, summary
