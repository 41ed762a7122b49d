"""A generated project, installed with uv, passes its own checks and its demo (slow: ~1.5 min).

One default render per session is installed once (uv's cache makes Prefect a one-time download
per machine); every test here then runs one of the project's own commands in it.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from .answers import DEFAULT
from .conftest import render_template, run, uv

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


def test_a_trusted_copy_runs_the_hooks(tmp_path: Path) -> None:
    uv()  # the hook runs `uv lock`
    root = render_template(tmp_path / "trusted", DEFAULT, trust=True)
    log = subprocess.run(
        ["git", "log", "--format=%s"], cwd=root, capture_output=True, text=True, check=True
    )
    assert log.stdout.strip() == "Initial commit from copier-prefect-multimail"
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True
    )
    assert status.stdout == ""  # everything rendered is committed, uv.lock included
    assert (root / "uv.lock").is_file()
    hook = root / ".git" / "hooks" / "pre-commit"  # `pre-commit install` ran
    assert hook.is_file()
    assert "pre-commit" in hook.read_text()
