"""Approval latency: how soon a flow continues after a human decides, polling vs suspending,
and how many worker-seconds the flow run holds while the human thinks.

    uv run python bench/approval_latency.py [--flows 5] [--think 3] [--project DIR]

Prints p50/p95 of decision -> flow finished, and the mean seconds each flow run spent Running
(holding a worker process) for each way of waiting.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _project import installed_project, run_driver


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=5, help="flow runs per way of waiting")
    parser.add_argument("--think", type=float, default=3.0, help="seconds the human takes")
    parser.add_argument(
        "--runner-poll",
        type=float,
        default=10.0,
        help="PREFECT_RUNNER_POLL_FREQUENCY of the serving process (Prefect's default: 10)",
    )
    parser.add_argument("--project", type=Path, help="an installed render to reuse")
    args = parser.parse_args()
    project = installed_project(args.project)
    print(f"project: {project}")
    return run_driver(
        project,
        "latency_driver.py",
        "--flows",
        str(args.flows),
        "--think",
        str(args.think),
        "--runner-poll",
        str(args.runner_poll),
    )


if __name__ == "__main__":
    sys.exit(main())
