"""Where the template suite's time goes, per test: a pytest plugin (issue 23).

    uv run python -m pytest -n 2 -p bench.suite_profile  # writes bench/.suite-profile/*.jsonl
    uv run python bench/suite_profile.py                   # the table, longest first

Per test (setup, call and teardown together): wall seconds; CPU seconds of the test's own
process and of the processes it started and waited for (renders in-process count as own CPU,
`uv sync`, generated suites, servers and CLI steps as children's); and how many processes it
started (counted from `subprocess.Popen`, so the processes those start are not counted).
Also when each test started, on which worker, and (from the controlling process) how busy the
machine's cores were every 5 s: the report ends with each worker's timeline and the cores' idle
share over the run, which is what packing leaves on the table.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
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
    if "PYTEST_XDIST_WORKER" not in os.environ:  # the controller samples the machine
        threading.Thread(target=_sample_cores, daemon=True).start()


def _cores_busy_idle() -> tuple[int, int]:
    """Clock ticks all cores spent busy and idle since boot (/proc/stat's first line)."""
    ticks = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle and iowait
    return sum(ticks) - idle, idle


def _sample_cores() -> None:
    with (OUT / "cores.jsonl").open("a") as out:
        before = _cores_busy_idle()
        while True:
            time.sleep(5)
            now = _cores_busy_idle()
            busy, idle = now[0] - before[0], now[1] - before[1]
            out.write(json.dumps({"at": time.time(), "busy": busy, "idle": idle}) + "\n")
            out.flush()
            before = now


def _cpu() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    start_wall, (start_own, start_children), start_processes = time.monotonic(), _cpu(), _started
    started_at = time.time()
    yield
    own, children = _cpu()
    record = {
        "test": item.nodeid,
        "start": round(started_at, 2),
        "wall": round(time.monotonic() - start_wall, 2),
        "own_cpu": round(own - start_own, 2),
        "children_cpu": round(children - start_children, 2),
        "processes": _started - start_processes,
    }
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with (OUT / f"{worker}.jsonl").open("a") as out:
        out.write(json.dumps(record) + "\n")


def _report(folder: Path) -> None:
    rows = [
        json.loads(line)
        for path in folder.glob("*.jsonl")
        if path.name != "cores.jsonl"
        for line in path.open()
    ]
    for path in sorted(folder.glob("*.jsonl")):
        if path.name != "cores.jsonl":
            _timeline(path.stem, [json.loads(line) for line in path.open()])
    if (folder / "cores.jsonl").exists():
        _cores([json.loads(line) for line in (folder / "cores.jsonl").open()])
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


def _timeline(worker: str, rows: list[dict[str, Any]]) -> None:
    """A worker's span and its tests longer than 60 s, in the order it ran them."""
    if not rows or "start" not in rows[0]:
        return
    rows.sort(key=lambda row: row["start"])
    first = rows[0]["start"]
    end = max(row["start"] + row["wall"] for row in rows)
    busy = sum(row["wall"] for row in rows)
    print(f"{worker}: {len(rows)} tests, {busy:.0f} s of tests in a span of {end - first:.0f} s")
    for row in rows:
        if row["wall"] >= 60:
            at = row["start"] - first
            print(f"  {at:6.0f}-{at + row['wall']:4.0f} s  {row['test'].split('/')[-1][:90]}")


def _cores(samples: list[dict[str, Any]]) -> None:
    """The cores' idle share per minute of the run, and over all of it."""
    busy = sum(s["busy"] for s in samples)
    idle = sum(s["idle"] for s in samples)
    print(f"cores idle {100 * idle / max(busy + idle, 1):.0f}% of the run; per minute:", end="")
    for minute in range(0, len(samples), 12):
        chunk = samples[minute : minute + 12]
        share = sum(s["idle"] for s in chunk) / max(sum(s["busy"] + s["idle"] for s in chunk), 1)
        print(f" {100 * share:.0f}", end="")
    print("\n")


if __name__ == "__main__":
    _report(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
