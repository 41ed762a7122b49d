"""The benchmark drivers work (a small soak proves exactly once end to end) and type-check in
the generated project's environment, where they run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, run
from .prefect_postgres import require_postgres

pytestmark = pytest.mark.slow


def run_driver(project: Path, driver: str, *args: str) -> str:
    """Run `bench/drivers/<driver>` with the project's interpreter, as bench/*.py do; stdout."""
    package = yaml.safe_load((project / ".copier-answers.yml").read_text())["package_name"]
    python = project / ".venv" / "bin" / "python"
    command = [str(python), str(REPO / "bench" / "drivers" / driver), "--package", package, *args]
    return run(command, cwd=project).stdout


def test_a_small_fault_soak_delivers_every_message_once(installed_project: Path) -> None:
    output = run_driver(installed_project, "soak_driver.py", "--messages", "150")
    figures = dict(re.findall(r"^(\w[\w ]*?):\s+(\d+)", output, flags=re.MULTILINE))
    assert figures["delivered"] == "150"
    assert figures["duplicates"] == "0"
    assert figures["lost"] == "0"
    assert int(figures["faults injected"]) > 0


def test_the_throughput_benchmark_sends_every_message_once_by_every_pattern(
    installed_project: Path,
) -> None:
    # TLS only, to stay short: it runs `fake serve --tls`, and the patterns are the same.
    output = run_driver(
        installed_project,
        "throughput_driver.py",
        *("--messages", "10", "--rounds", "1", "--transports", "tls", "--profile", "never"),
        # One short order (a .map, then send_many and its retry) and one overhead round.
        *("--orders", "map_single,bulk,retried_bulk", "--overhead-rounds", "1"),
    )
    rows = re.findall(r"^  (.+?)\s+\d+ msg/s", output, flags=re.MULTILINE)
    assert len(rows) == 6, output
    assert "exactly once: yes" in output  # else the driver exits 1 and `run` fails first


def test_the_latency_benchmark_measures_both_ways_of_waiting(installed_project: Path) -> None:
    output = run_driver(
        installed_project, "latency_driver.py", "--flows", "1", "--think", "1", "--runner-poll", "1"
    )
    held = dict(re.findall(r"^(poll|suspend) .*per flow run:\s+([\d.]+) s", output, re.M))
    assert set(held) == {"poll", "suspend"}, output
    # Polling holds the run for the human's second; suspending lets it go.
    assert float(held["poll"]) > float(held["suspend"])


def test_the_drivers_type_check_where_they_run(installed_project: Path) -> None:
    mypy = installed_project / ".venv" / "bin" / "mypy"
    drivers = sorted(str(path) for path in (REPO / "bench" / "drivers").glob("*.py"))
    result = run([str(mypy), "--strict", *drivers], cwd=installed_project)
    assert "Success" in result.stdout


def test_a_brief_chaos_soak_answers_every_email_once(installed_project: Path) -> None:
    """bench/chaos.py for correctness: a few emails, every fault once, the sweeps every 20 s,
    a run with no process noticed after 30 s."""
    require_postgres()
    command = [
        sys.executable,
        str(REPO / "bench" / "chaos.py"),
        "--project",
        str(installed_project),
    ]
    command += ["--emails", "6", "--phase", "30", "--repeat", "1", "--seed", "3"]
    command += ["--sweep-interval", "20", "--drain-timeout", "480", "--gap", "2", "5"]
    # Runs with no process are noticed after 30 s (Pending; Running: 3 heartbeats, 90 s).
    command += ["--warmup", "5", "--stuck-run-seconds", "30"]
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=1200, check=False
    )
    output = done.stdout
    print(output)  # the timeline and the report: shown on a failure, or with -rP
    summary = dict(re.findall(r"^(\w[\w ]*?):\s+(\S+)", output.partition("\nsummary\n")[2], re.M))
    assert summary, f"no summary (exit {done.returncode}):\n{output[-6000:]}\n{done.stderr[-3000:]}"
    report = f"exit {done.returncode}\n{output[-8000:]}"
    assert summary["emails"] == "6", report
    assert int(summary["answered"]) + int(summary["rejected"]) == 6, report
    assert summary["duplicates"] == "0", report
    assert summary["missing"] == "0", report
    assert summary["stuck runs"] == "0", report
    assert "result: PASS" in output, report
    assert done.returncode == 0, report
