"""The benchmark drivers work (a small soak proves exactly once end to end) and type-check in
the generated project's environment, where they run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import REPO, run

pytestmark = pytest.mark.slow


def test_a_small_fault_soak_delivers_every_message_once(installed_project: Path) -> None:
    python = installed_project / ".venv" / "bin" / "python"
    result = run(
        [
            str(python),
            str(REPO / "bench/drivers/soak_driver.py"),
            "--package",
            "my_mail_flows",
            "--messages",
            "150",
        ],
        cwd=installed_project,
    )
    figures = dict(re.findall(r"^(\w[\w ]*?):\s+(\d+)", result.stdout, flags=re.MULTILINE))
    assert figures["delivered"] == "150"
    assert figures["duplicates"] == "0"
    assert figures["lost"] == "0"
    assert int(figures["faults injected"]) > 0


def test_the_latency_benchmark_measures_both_ways_of_waiting(installed_project: Path) -> None:
    python = installed_project / ".venv" / "bin" / "python"
    result = run(
        [
            str(python),
            str(REPO / "bench/drivers/latency_driver.py"),
            "--package",
            "my_mail_flows",
            "--flows",
            "1",
            "--think",
            "1",
            "--runner-poll",
            "1",
        ],
        cwd=installed_project,
    )
    held = dict(re.findall(r"^(poll|suspend) .*per flow run:\s+([\d.]+) s", result.stdout, re.M))
    assert set(held) == {"poll", "suspend"}, result.stdout
    # Polling holds the run for the human's second; suspending lets it go.
    assert float(held["poll"]) > float(held["suspend"])


def test_the_drivers_type_check_where_they_run(installed_project: Path) -> None:
    mypy = installed_project / ".venv" / "bin" / "mypy"
    drivers = sorted(str(path) for path in (REPO / "bench" / "drivers").glob("*.py"))
    result = run([str(mypy), "--strict", *drivers], cwd=installed_project)
    assert "Success" in result.stdout
