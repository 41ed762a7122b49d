"""Render the template into a folder and install it: what every benchmark here runs against."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import copier
import yaml

REPO = Path(__file__).resolve().parents[1]
DRIVERS = Path(__file__).resolve().parent / "drivers"


def installed_project(folder: Path | None = None) -> Path:
    """A default render of this working tree, installed with uv; reused when `folder` has one."""
    if folder is not None and (folder / ".venv").is_dir():
        return folder
    target = folder or Path(tempfile.mkdtemp(prefix="bench-")) / "my-mail-flows"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        copier.run_copy(
            str(REPO), target, defaults=True, skip_tasks=True, vcs_ref="HEAD", quiet=True
        )
    uv = shutil.which("uv")
    if uv is None:
        sys.exit("uv is not installed: run scripts/test once, or `pip install uv`")
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    subprocess.run([uv, "sync", "--quiet"], cwd=target, env=env, check=True)
    return target


def run_driver(project: Path, driver: str, *args: str) -> int:
    """Run `drivers/<driver>` with the project's own interpreter; returns its exit code.

    The driver gets the project's package name as `--package`, and runs in the project folder.
    """
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    python = project / ".venv" / "bin" / "python"
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    command = [str(python), str(DRIVERS / driver), "--package", answers["package_name"], *args]
    return subprocess.run(command, cwd=project, env=env, check=False).returncode
