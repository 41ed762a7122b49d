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


#: The longest tests with their seconds in a three-worker run (bench/README.md, "Suite time").
#: `scripts/test` has xdist hand out tests one at a time in collection order, each worker
#: holding the next test it will run: these go first, longest first, each of the first ones
#: followed by a quick test (the one its worker holds meanwhile), so no worker queues one long
#: test behind another while the others run out of work.
LONGEST = {
    "test_the_readme_walkthrough_works_as_written_without_trust": 590,
    "test_every_answer_set_passes_its_own_tests_and_demo_despite_the_owners_dotenv"
    "[one-autonomous-audience]": 456,
    "test_every_answer_set_passes_its_own_tests_and_demo_despite_the_owners_dotenv"
    "[five-unusual-audiences]": 288,
    "test_every_answer_set_passes_its_own_tests_and_demo_despite_the_owners_dotenv"
    "[read-only-and-gated-all]": 277,
    "test_a_brief_chaos_soak_answers_every_email_once": 245,
    "test_the_tutorial_runs_as_written[default]": 236,
    "test_inbound_mail_is_answered_once_per_message_on_postgres": 220,
    "test_the_tutorial_runs_as_written[three-audiences-docker]": 175,
}

#: Then the modules of the other tests that start servers or processes, before the quick ones.
SLOWER_MODULES = (
    "test_benchmarks.py",
    "test_worker_import.py",
    "test_generated.py",
    "test_approval_page.py",
    "test_fuzz_fake.py",
    "test_agent_kit.py",
    "test_update.py",
    "test_deployments.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def module_rank(item: pytest.Item) -> int:
        name = item.path.name
        return SLOWER_MODULES.index(name) if name in SLOWER_MODULES else len(SLOWER_MODULES)

    long = sorted((item for item in items if item.name in LONGEST), key=lambda i: -LONGEST[i.name])
    rest = sorted((item for item in items if item.name not in LONGEST), key=module_rank)  # stable
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    first = min(workers, len(long), len(rest))
    held, rest = rest[len(rest) - first :], rest[: len(rest) - first]  # quick ones, from the end
    paired = [item for pair in zip(long[:first], held, strict=True) for item in pair]
    items[:] = paired + long[first:] + rest
