"""A generated project, installed with uv, passes its own checks and its demo (slow: ~1.5 min).

One default render per session is installed once (uv's cache makes Prefect a one-time download
per machine); every test here then runs one of the project's own commands in it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, run, uv

pytestmark = pytest.mark.slow


@pytest.fixture
def project(installed_project: Path) -> Path:
    """The installed default render (one per session, shared with other modules)."""
    return installed_project


def test_its_own_test_suite_passes(project: Path) -> None:
    result = run([uv(), "run", "--frozen", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project)
    summary = result.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary), summary
    assert "failed" not in summary, summary


def test_it_type_checks_strictly(project: Path) -> None:
    result = run([uv(), "run", "--frozen", "mypy"], cwd=project)
    assert "Success" in result.stdout


def test_its_demo_runs_every_step(project: Path, tmp_path: Path) -> None:
    slug = yaml.safe_load((project / ".copier-answers.yml").read_text())["project_slug"]
    # A Prefect home of its own: never the developer's ~/.prefect database or profile.
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    result = run([uv(), "run", "--frozen", slug, "demo"], cwd=project, env=env)
    out = result.stdout
    for step in (
        "1. Provision",
        "2. Status digest",
        "3. A customer writes",
        "4. Another",
        "5. Audit trail",
    ):
        assert step in out
    assert "FAILED" not in out
    assert "is rejected (expected rejected" in out
    assert "Demo passed" in out


def test_the_closing_message_steps_work_on_a_plain_copy(tmp_path: Path) -> None:
    """No --trust: Copier runs nothing; the steps it prints make the repository and the hook."""
    uv()
    root = tmp_path / "plain"
    copy = run(
        [
            sys.executable,
            "-m",
            "copier",
            "copy",
            "--defaults",
            "--vcs-ref=HEAD",
            str(REPO),
            str(root),
        ],
        cwd=tmp_path,
    )
    assert not (root / ".git").exists()  # no task ran
    message = copy.stderr
    steps = [
        line.split("#")[0].strip()
        for line in message.splitlines()
        if line.strip().startswith(("git ", "uv sync"))
    ]
    assert steps[0].startswith("git init && uv sync && uv run pre-commit install"), steps
    env = {
        **{k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"},
        "UV_PYTHON_DOWNLOADS": "never",
        "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"),
        "GIT_AUTHOR_NAME": "Owner",
        "GIT_AUTHOR_EMAIL": "owner@localhost",
        "GIT_COMMITTER_NAME": "Owner",
        "GIT_COMMITTER_EMAIL": "owner@localhost",
    }
    for step in steps:  # the commit runs every pre-commit hook on the fresh project
        run(["bash", "-c", step], cwd=root, env=env, timeout=900)
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True
    )
    assert status.stdout == ""  # everything rendered is committed, uv.lock included
    assert "uv.lock" in run(["git", "ls-files"], cwd=root).stdout.split()
    hook = root / ".git" / "hooks" / "pre-commit"
    assert "pre-commit" in hook.read_text()
