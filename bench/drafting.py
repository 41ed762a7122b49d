"""Drafting overhead: what a model draft adds to answering one inbound email, orchestration only.

    uv run python bench/drafting.py [--emails 20] [--rounds 3] [--project DIR]

Answers the same number of emails with the fixed draft and with a scripted model (pydantic-ai's
FunctionModel: no provider, no network), taking turns, in one process against one fake and a
throwaway Prefect server, and prints the median and p95 seconds per email of each.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _project import installed_project, run_driver


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=20, help="emails per way and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--project", type=Path, help="an installed render to reuse")
    args = parser.parse_args()
    project = installed_project(args.project)
    print(f"project: {project}")
    return run_driver(
        project, "drafting_driver.py", "--emails", str(args.emails), "--rounds", str(args.rounds)
    )


if __name__ == "__main__":
    sys.exit(main())
