"""Fault soak: N logical sends through a generated project's tasks with ~30% of requests faulted.

Prints delivered, duplicated and lost messages (goal: N / 0 / 0) and the wall time.

    uv run python bench/soak.py [--messages 1000] [--path tasks|bulk] [--project DIR]

`--path tasks` sends each message with its own `send_email` task run (the default); `--path bulk`
sends them all with one `send_many` task run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _project import installed_project, run_driver


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument(
        "--workers", type=int, default=16, help="concurrent task runs (bulk: concurrent sends)"
    )
    parser.add_argument("--path", choices=["tasks", "bulk"], default="tasks")
    parser.add_argument("--project", type=Path, help="an installed render to reuse")
    args = parser.parse_args()
    project = installed_project(args.project)
    print(f"project: {project}")
    return run_driver(
        project,
        "soak_driver.py",
        "--messages",
        str(args.messages),
        "--workers",
        str(args.workers),
        "--path",
        args.path,
    )


if __name__ == "__main__":
    sys.exit(main())
