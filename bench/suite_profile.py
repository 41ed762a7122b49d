"""Where the template suite's time goes, per test: a pytest plugin (issue 23).

    uv run python -m pytest -n 2 -p bench.suite_profile  # writes bench/.suite-profile/*.jsonl
    uv run python bench/suite_profile.py                   # the table, longest first

Per test (setup, call and teardown together): wall seconds; CPU seconds of the test's own
process and of the processes it started and waited for (renders in-process count as own CPU,
`uv sync`, generated suites, servers and CLI steps as children's); and how many processes it
started (counted from `subprocess.Popen`, so the processes those start are not counted).
Also when each test started, on which worker, and (from the controlling process) how busy the
machine's cores were every 5 s: the report ends with each worker's timeline and the cores' idle
share over the run, which is what packing leaves on the table. And which kinds of process used
the CPU (every process's CPU read from /proc each second, sorted by its command line into
Prefect servers, flow runs, `serve`, workers, the generated suites, tools): processes that
live less than a second between two readings count only as "not seen".
"""

from __future__ import annotations

import json
import os
import re
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


#: What a process is, from its command line, first match wins.
KINDS = (
    ("Prefect server (test harness, demo, ephemeral)", r"uvicorn .*prefect\.server\.api\.server"),
    ("Prefect server (`prefect server start`)", r"prefect server start|prefect\.cli.*server"),
    ("flow run process", r"prefect\.engine|prefect\.flow_engine|flow_run"),
    ("`serve` (runner)", r" -m \w+ serve\b|\bserve\b.*--"),
    ("Prefect worker", r"worker start"),
    ("generated suite (pytest in a project)", r"pytest-of-\S*/\.venv/bin/\S*pytest"),
    ("template suite (pytest and its xdist workers)", r"exec\(eval\(sys\.stdin|bin/pytest -n"),
    ("mypy", r"mypy"),
    ("ruff", r"ruff"),
    ("pre-commit", r"pre.commit"),
    ("uv", r"(^|/)uv(x)? "),
    ("copier", r"copier"),
    ("git", r"(^|/)git "),
    ("PostgreSQL", r"postgres"),
    ("Chromium", r"chrom"),
    ("a generated project's command (demo, CLI steps, fake serve)", r"pytest-of-|/tmp/"),
    ("other Python", r"python"),
)


def _kind(command: str) -> str:
    for name, pattern in KINDS:
        if re.search(pattern, command):
            return name
    return "other"


def _processes() -> dict[int, tuple[int, str]]:
    """CPU ticks (user + system) and command line of every process now."""
    found: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        found[int(entry.name)] = (int(fields[11]) + int(fields[12]), command)
    return found


def _sample_cores() -> None:
    seen = {pid: ticks for pid, (ticks, _) in _processes().items()}  # counted from now on
    by_kind: dict[str, int] = {}
    with (OUT / "cores.jsonl").open("a") as out:
        before = _cores_busy_idle()
        last_write = time.monotonic()
        while True:
            time.sleep(1)
            for pid, (ticks, command) in _processes().items():
                kind = _kind(command)
                by_kind[kind] = by_kind.get(kind, 0) + ticks - seen.get(pid, 0)
                seen[pid] = ticks
            if time.monotonic() - last_write < 5:
                continue
            last_write = time.monotonic()
            now = _cores_busy_idle()
            busy, idle = now[0] - before[0], now[1] - before[1]
            sample = {"at": time.time(), "busy": busy, "idle": idle, "kinds": by_kind}
            out.write(json.dumps(sample) + "\n")
            out.flush()
            before, by_kind = now, {}


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
    print()
    ticks = sum(s["busy"] for s in samples)
    kinds: dict[str, int] = {}
    for sample in samples:
        for kind, used in sample.get("kinds", {}).items():
            kinds[kind] = kinds.get(kind, 0) + used
    hertz = os.sysconf("SC_CLK_TCK")
    print(f"CPU by kind of process ({ticks / hertz:.0f} CPU s in all):")
    for kind, used in sorted(kinds.items(), key=lambda item: -item[1]):
        print(f"  {used / hertz:6.0f} s  {kind}")
    print(f"  {(ticks - sum(kinds.values())) / hertz:6.0f} s  not seen (shorter than a second)\n")


if __name__ == "__main__":
    _report(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
