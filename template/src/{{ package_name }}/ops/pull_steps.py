"""The pull step of process deployments (prefect.yaml), run by the worker before each flow run.

Prefect's default pull step records the absolute path of the machine that ran `prefect deploy`;
a worker elsewhere then fails to enter it. A process worker instead runs in this project's own
environment (`uv run prefect worker start --pool ...`, from any directory): its Python imports
this package, and this step finds the project from the package itself, at run time.
"""

from __future__ import annotations

import os
from pathlib import Path


def enter_project_directory() -> dict[str, str]:
    """Change to the project this package was installed from (where `.env` lives).

    `uv sync` installs the project in editable mode, so the package sits in `<project>/src/`.
    Installed any other way (a wheel), the working directory is left as it is.
    """
    package = Path(__file__).resolve().parents[1]
    root = package.parents[1]
    if package.parent.name == "src" and (root / "pyproject.toml").is_file():
        os.chdir(root)
    return {"directory": str(Path.cwd())}
