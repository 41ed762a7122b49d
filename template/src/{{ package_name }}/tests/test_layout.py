"""Nothing an update left half done: no conflict markers, no notice of a module that moved."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
PROJECT = PACKAGE.parents[1]
CONFLICT = re.compile(r"^(<<<<<<< before updating|>>>>>>> after updating)$", re.MULTILINE)
#: How a notice of a moved module starts (hooks/moved.jinja in the template).
MOVED_NOTICE = '"""MOVED: `'


def test_no_update_left_a_conflict_or_a_moved_module_behind() -> None:
    """`copier update` marks what it could not merge, and leaves a notice at the old path of a
    module that moved: a run of the tests must not pass while either is left."""
    checked = [
        *PACKAGE.rglob("*.py"),
        *PACKAGE.rglob("*.toml"),
        *(PROJECT / name for name in ("prefect.yaml", "pyproject.toml", "README.md")),
    ]
    left = []
    for path in sorted(p for p in checked if p.is_file() and p != Path(__file__).resolve()):
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(PROJECT)
        if CONFLICT.search(text):
            left.append(f"{where}: conflict markers from `copier update`: merge the two sides")
        elif text.startswith(MOVED_NOTICE):
            left.append(f"{where}: moved (the file says where): move any change, then delete it")
    assert not left, "\n".join(left)
