"""Conveniences after `copier copy --trust`: a git repository with a first commit, uv.lock, and
pre-commit's git hook.

Copier runs this from the new project's folder. Nothing here is needed for the project to work
(`copier copy --skip-tasks` gives the same files); each step is skipped with a note when its tool
is missing or fails (e.g. `uv lock` without network), and the copy still succeeds.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def _run(*args: str) -> bool:
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        print(f"  skipped: `{' '.join(args)}` failed: {result.stderr.strip()[:300]}")
    return result.returncode == 0


def _inside_git_work_tree() -> bool:
    result = subprocess.run(
        ["git", "rev-parse", "--is-inside-work-tree"], capture_output=True, text=True, check=False
    )
    return result.returncode == 0 and result.stdout.strip() == "true"


def lock() -> None:
    if shutil.which("uv") is None:
        print("  skipped uv lock: uv is not installed (https://docs.astral.sh/uv/)")
        return
    if _run("uv", "lock", "--quiet"):
        print("  wrote uv.lock")


def git_init() -> None:
    if shutil.which("git") is None:
        print("  skipped git init: git is not installed")
        return
    if _inside_git_work_tree():
        print("  left git alone: this folder is already inside a git work tree")
        return
    if not _run("git", "init", "--quiet", "--initial-branch=main"):
        return
    identity = []
    for key, fallback in (
        ("user.name", "copier-prefect-multimail"),
        ("user.email", "noreply@localhost"),
    ):
        configured = subprocess.run(["git", "config", key], capture_output=True, check=False)
        if configured.returncode != 0:
            identity += ["-c", f"{key}={fallback}"]
    if _run("git", "add", "--all") and _run(
        "git",
        *identity,
        "commit",
        "--quiet",
        "--no-verify",
        "-m",
        "Initial commit from copier-prefect-multimail",
    ):
        print("  made the first git commit")


def _is_own_git_repo() -> bool:
    result = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=False
    )
    return result.returncode == 0 and Path(result.stdout.strip()).resolve() == Path.cwd().resolve()


def pre_commit_install() -> None:
    """Install the git hook that runs .pre-commit-config.yaml (all local hooks, no network)."""
    later = "run `uv sync && uv run pre-commit install` later"
    if not Path(".pre-commit-config.yaml").is_file():
        return
    if shutil.which("git") is None or not _is_own_git_repo():
        print(f"  skipped pre-commit install: this folder is not its own git repository; {later}")
        return
    # The git hook runs the pre-commit that installed it; one on PATH is there to stay (unlike
    # Copier's own, possibly temporary, environment).
    pre_commit = shutil.which("pre-commit")
    if pre_commit is None:
        print(f"  skipped pre-commit install: pre-commit is not on PATH; {later}")
        return
    if _run(pre_commit, "install"):
        print("  installed the pre-commit git hook")


def main() -> int:
    print(f"Post-copy steps in {Path.cwd()}:")
    lock()
    git_init()
    pre_commit_install()
    return 0


if __name__ == "__main__":
    sys.exit(main())
