"""The names a package or distribution must not take cover the generated project's whole lock.

copier.yml's validators read hooks/reserved-names.yml. When the generated project gains a
dependency (or one of its dependencies does), this test names what is missing; refresh the file
with `uv run python hooks/refresh_reserved_names.py <synced generated project>`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from .conftest import REPO

pytestmark = pytest.mark.slow


def _refresh_script() -> ModuleType:
    """hooks/refresh_reserved_names.py, loaded from its file (hooks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "refresh_reserved_names", REPO / "hooks" / "refresh_reserved_names.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_data_file_holds_every_name_of_the_generated_lock(installed_project: Path) -> None:
    data = yaml.safe_load((REPO / "hooks" / "reserved-names.yml").read_text())
    needed: dict[str, set[str]] = _refresh_script().reserved(installed_project)
    for kind in ("distributions", "import_names"):
        missing = sorted(needed[kind] - set(data[kind]))
        assert not missing, (
            f"hooks/reserved-names.yml lacks {kind} {missing}: run "
            "`uv run python hooks/refresh_reserved_names.py <synced generated project>`"
        )
    # The generated project's own names are never reserved (its default answers must pass).
    assert "my-mail-flows" not in data["distributions"]
    assert "my_mail_flows" not in data["import_names"]
