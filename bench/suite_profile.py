"""Where the template suite's time goes, per test: a pytest plugin (issue 23).

    uv run python -m pytest -n 2 -p bench.suite_profile  # writes bench/.suite-profile/*.jsonl
    uv run python bench/suite_profile.py                   # the table, longest first

Per test (setup, call and teardown together): wall seconds; CPU seconds of the test's own
process and of the processes it started and waited for (renders in-process count as own CPU,
`uv sync`, generated suites, servers and CLI steps as children's); and how many processes it
started (counted from `subprocess.Popen`, so the processes those start are not counted).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

OUT = Path(os.environ.get("SUITE_PROFILE_DIR", Path(__file__).parent / ".suite-profile"))

_started = 0
_original_init = subprocess.Popen.__init__


def _counting_init(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
    global _started
    _started += 1
    _original_init(self, *args, **kwargs)


def pytest_configure(config: pytest.Config) -> None:
    subprocess.Popen.__init__ = _counting_init  # type: ignore[method-assign]
    OUT.mkdir(parents=True, exist_ok=True)


def _cpu() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    start_wall, (start_own, start_children), start_processes = time.monotonic(), _cpu(), _started
    yield
    own, children = _cpu()
    record = {
        "test": item.nodeid,
        "wall": round(time.monotonic() - start_wall, 2),
        "own_cpu": round(own - start_own, 2),
        "children_cpu": round(children - start_children, 2),
        "processes": _started - start_processes,
    }
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with (OUT / f"{worker}.jsonl").open("a") as out:
        out.write(json.dumps(record) + "\n")


def _report(folder: Path) -> None:
    rows = [json.loads(line) for path in folder.glob("*.jsonl") for line in path.open()]
    rows.sort(key=lambda row: -row["wall"])
    total = {key: sum(row[key] for row in rows) for key in ("wall", "own_cpu", "children_cpu")}
    print(
        f"{len(rows)} tests; wall {total['wall']:.0f} s, own CPU {total['own_cpu']:.0f} s, "
        f"children's CPU {total['children_cpu']:.0f} s"
    )
    print("| test | wall s | own CPU s | children's CPU s | processes |")
    print("|---|---:|---:|---:|---:|")
    for row in rows[:30]:
        print(
            f"| {row['test']} | {row['wall']:.0f} | {row['own_cpu']:.0f} | "
            f"{row['children_cpu']:.0f} | {row['processes']} |"
        )


if __name__ == "__main__":
    _report(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
