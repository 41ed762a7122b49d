"""Render the template from this working tree (uncommitted changes included)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import copier
import httpx
import pytest
import yaml

from .answers import DEFAULT

REPO = Path(__file__).resolve().parents[1]

Render = Callable[..., Path]


def render_template(dst: Path, answers: dict[str, Any], *, trust: bool = False) -> Path:
    """Copy the template into `dst` with `answers`, defaults for the rest, no prompts."""
    copier.run_copy(
        str(REPO),
        dst,
        data=answers,
        defaults=True,
        unsafe=trust,
        skip_tasks=not trust,
        vcs_ref="HEAD",  # HEAD plus the working tree's uncommitted changes
        quiet=True,
    )
    return dst


@pytest.fixture
def render(tmp_path: Path) -> Render:
    def _render(answers: dict[str, Any], name: str = "project", *, trust: bool = False) -> Path:
        return render_template(tmp_path / name, answers, trust=trust)

    return _render


def uv() -> str:
    found = shutil.which("uv")
    if found is None:
        pytest.skip("uv is not installed (scripts/test installs it)")
    return found


def run(
    args: list[str], cwd: Path, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command, failing the test with its output when it fails."""
    result = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False, env=env
    )
    if result.returncode != 0:
        pytest.fail(
            f"`{' '.join(args)}` exited {result.returncode}\n"
            f"--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-6000:]}"
        )
    return result


@pytest.fixture(scope="session")
def installed_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One default render, installed with uv once per session (uv's cache holds Prefect)."""
    root = render_template(tmp_path_factory.mktemp("generated") / "my-mail-flows", DEFAULT)
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    result = subprocess.run(
        [uv(), "sync", "--quiet"], cwd=root, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"uv sync of the generated project failed:\n{result.stderr[-4000:]}")
    return root


def project_command(project: Path, *args: str) -> list[str]:
    """The generated project's own command (`<project_slug> ...`) from its environment."""
    slug = yaml.safe_load((project / ".copier-answers.yml").read_text())["project_slug"]
    return [str(project / ".venv" / "bin" / slug), *args]


@pytest.fixture
def fake_url(installed_project: Path) -> Iterator[str]:
    """`<project> fake serve --port 0`, as a user would start it; its URL read from its output."""
    command = project_command(installed_project, "fake", "serve", "--port", "0")
    server = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert server.stdout is not None
    first_line = server.stdout.readline()  # "Fake MultiMail: http://127.0.0.1:<port> ..."
    found = re.search(r"http://127\.0\.0\.1:\d+", first_line)
    if found is None:
        server.kill()
        pytest.fail(f"`fake serve` did not come up: {first_line}{server.stdout.read()}")
    url = found[0]
    httpx.get(f"{url}/_fake/clock", timeout=5).raise_for_status()
    yield url
    server.terminate()
    server.wait(timeout=10)


#: The longest tests, longest first (each installs and runs a generated project or a server):
#: started first, the xdist workers share them evenly and the quick tests fill the gaps,
#: instead of one long test running alone at the end.
LONGEST_FIRST = (
    "test_generated.py",
    "test_tutorial.py",
    "test_postgres.py",
    "test_benchmarks.py",
    "test_approval_page.py",
    "test_deployments.py",
    "test_agent_kit.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each module keeps its own order
