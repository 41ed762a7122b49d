"""Generated projects, installed with uv, pass their own checks and demo (slow).

The README walkthrough runs the default answers the way a new user does (plain copy, the
closing message's steps with every pre-commit hook, pytest, demo); the matrix runs other answer
sets' own tests and demo with an owner's `.env` in place. `scripts/test --quick` runs neither:
the generated project's quick tests stand in for them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .answers import MATRIX, OWNER_DOTENV, OWNER_SHELL
from .conftest import REPO, render_template, run, uv


def _readme_walkthrough() -> list[str]:
    """The console lines of this repo's README section "Use the template", in order."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Use the template", 1)[1]
    block = re.search(r"```console\n(.*?)```", section, re.DOTALL)
    assert block is not None, "no console block under 'Use the template'"
    return [line for line in block[1].splitlines() if line.strip()]


def _owner_env(tmp_path: Path) -> dict[str, str]:
    """A shell like a new user's: a home of its own (uv's cache kept), git identity, no
    virtualenv or Prefect settings of ours, offline pre-commit."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    uv_cache = subprocess.run(
        [uv(), "cache", "dir"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return {
        **{
            k: v
            for k, v in os.environ.items()
            if k != "VIRTUAL_ENV" and not k.startswith("PREFECT_")
        },
        "HOME": str(home),
        "UV_CACHE_DIR": uv_cache,
        "UV_PYTHON_DOWNLOADS": "never",
        "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"),
        "GIT_AUTHOR_NAME": "Owner",
        "GIT_AUTHOR_EMAIL": "owner@localhost",
        "GIT_COMMITTER_NAME": "Owner",
        "GIT_COMMITTER_EMAIL": "owner@localhost",
    }


def assert_pytest_passed(output: str) -> None:
    """The generated project's pytest ended with tests passed and none failed."""
    summary = output.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary), summary
    assert "failed" not in summary, summary


@pytest.mark.slow
def test_the_readme_walkthrough_works_as_written_without_trust(tmp_path: Path) -> None:
    """Plain `copier copy` (no --trust), then every step the README and Copier's closing
    message give: git, install, the pre-commit hook, a first commit through every hook, the
    project's own tests and its demo."""
    uv()
    lines = _readme_walkthrough()
    assert lines[0] == "uvx copier copy <this repo> my-mail-flows", lines[0]
    env = _owner_env(tmp_path)
    copy = run(
        [
            sys.executable,
            "-m",
            "copier",
            "copy",
            "--defaults",
            "--vcs-ref=HEAD",
            str(REPO),
            "my-mail-flows",
        ],
        cwd=tmp_path,
        env=env,
    )
    root = tmp_path / "my-mail-flows"
    assert not (root / ".git").exists()  # Copier ran no command
    assert lines[1] == "cd my-mail-flows"
    for line in lines[2:]:
        assert line in copy.stderr, f"Copier's closing message lacks {line!r}"
    out = {}
    for line in lines[2:]:
        result = run(["bash", "-c", line], cwd=root, env=env, timeout=900)
        out[line] = result.stdout + result.stderr  # git prints the hooks' lines on stderr
    demo = out["uv run my-mail-flows demo"]
    for step in ("1. Provision", "2. Status digest", "3. A customer", "4. Another", "5. Audit"):
        assert step in demo
    assert "is rejected (expected rejected" in demo
    assert "Demo passed" in demo
    assert "Prefect state for this demo:" in demo
    assert "docs/tutorial.md" in demo
    # The first commit ran every pre-commit hook offline on the fresh project: strict mypy,
    # ruff, the pre-commit-hooks checks and the secret patterns.
    commit = next(text for line, text in out.items() if line.startswith("git add -A"))
    for hook in ("ruff check", "ruff format", "mypy (strict)", "no MultiMail API keys"):
        assert re.search(rf"^{re.escape(hook)}.*Passed$", commit, re.MULTILINE), commit[-3000:]
    assert_pytest_passed(out["uv run pytest"])
    assert not (tmp_path / "home" / ".prefect").exists()  # nor did the tests or the hooks
    status = run(["git", "status", "--porcelain"], cwd=root)
    assert status.stdout == ""  # everything rendered is committed, uv.lock included
    assert "uv.lock" in run(["git", "ls-files"], cwd=root).stdout.split()
    assert "pre-commit" in (root / ".git" / "hooks" / "pre-commit").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("answers", MATRIX.values(), ids=MATRIX.keys())
def test_every_answer_set_passes_its_own_tests_and_demo_despite_the_owners_dotenv(
    tmp_path: Path, answers: dict[str, object]
) -> None:
    """No test depends on the default audiences: approval tests bring their own gated one, and
    an owner's `.env` and environment (a real key, another API URL, another mode) change
    nothing."""
    root = render_template(tmp_path / "project", answers)
    (root / ".env").write_text(OWNER_DOTENV)
    env = _owner_env(tmp_path)
    run([uv(), "sync", "--quiet"], cwd=root, env=env)
    # The fake's own contract tests do not depend on the answers (they make their own
    # mailboxes); the README walkthrough runs them once, for the default answers. The suspend,
    # liveness and served drafting tests use only the gated audience they bring: they run for the
    # one-autonomous-audience set (no gated audience of its own, the case that once failed),
    # not again for the others.
    package = (
        root / "src" / yaml.safe_load((root / ".copier-answers.yml").read_text())["package_name"]
    )
    tests = package / "tests"
    once = [tests / "fake"]
    if answers is not MATRIX["one-autonomous-audience"]:
        once += [
            tests / "oversight" / "test_approvals.py",
            tests / "flows" / "test_liveness.py",
            tests / "drafting" / "test_served.py",
        ]
    ignored = [f"--ignore={path}" for path in once]
    # The set that runs the suspend tests runs them with result persistence on, as Prefect's
    # suspend docs advise: a cached status read would turn an approved reply into timed_out
    # (the walkthrough runs the same tests with it off).
    persist = (
        {}
        if answers is not MATRIX["one-autonomous-audience"]
        else {"PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true"}
    )
    result = run(
        [uv(), "run", "--frozen", "pytest", "-q", "-p", "no:cacheprovider", *ignored],
        cwd=root,
        env={**env, **OWNER_SHELL, **persist},
        timeout=900,
    )
    assert_pytest_passed(result.stdout)
    slug = yaml.safe_load((root / ".copier-answers.yml").read_text())["project_slug"]
    demo = run([uv(), "run", "--frozen", slug, "demo"], cwd=root, env=env).stdout
    assert "Demo passed" in demo, demo[-3000:]
    assert "FAILED" not in demo


@pytest.mark.quick_only
def test_the_generated_quick_tests_pass(installed_project: Path) -> None:
    """What `scripts/test --quick` runs in place of the generated suites: the default render's
    own tests that need no Prefect server (`-m "not slow"`). The full suite deselects it: the
    README walkthrough runs every generated test."""
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    result = run(
        [uv(), "run", "--frozen", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow"],
        cwd=installed_project,
        env=env,
    )
    assert_pytest_passed(result.stdout)


@pytest.mark.slow
def test_scripts_demo_passes_beside_a_cpu_burner(tmp_path: Path) -> None:
    """`scripts/demo` on a loaded 2-core machine: a process spinning on one core beside it (and
    the rest of this suite on the others), yet the demo's temporary Prefect server starts in
    its budget and every step passes."""
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert burner.poll() is None
        demo = run(
            ["bash", str(REPO / "scripts" / "demo"), str(tmp_path / "demo")],
            cwd=tmp_path,
            env=_owner_env(tmp_path),
            timeout=900,
        )
        assert burner.poll() is None  # it burned all along
    finally:
        burner.kill()
        burner.wait()
    assert "Demo passed" in demo.stdout, demo.stdout[-3000:]
    assert "FAILED" not in demo.stdout
