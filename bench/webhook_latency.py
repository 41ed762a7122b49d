"""Webhook latency: inbound delivery -> flow run created -> flow run finished, for single
messages and a burst, with runs started, duplicates and lost counted.

    uv run python bench/webhook_latency.py [--single 10] [--burst 200] [--executor serve|worker]
        [--poll 2] [--server postgres|sqlite] [--project DIR]

The fake MultiMail delivers inbound mail and posts signed `message.received` webhooks to the
project's receiver, which records one answer-inbound run per email (idempotency key on the email
id); `serve` (a runner) or a process worker runs them. `--poll` sets the runner's poll interval
(PREFECT_RUNNER_POLL_FREQUENCY) and the worker's (PREFECT_WORKER_QUERY_SECONDS); Prefect's
default for both is 10 s. `--server postgres` (the default where Debian's postgresql is
installed) starts a Prefect server on a throwaway PostgreSQL cluster, as the template's
end-to-end test does; `--server sqlite` uses a temporary SQLite-backed test server.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _project import installed_project, run_driver

from tests import prefect_postgres


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--single", type=int, default=10, help="emails sent one at a time")
    parser.add_argument("--burst", type=int, default=200, help="emails delivered at once")
    parser.add_argument("--executor", choices=["serve", "worker"], default="serve")
    parser.add_argument("--poll", type=float, default=2.0, help="runner/worker poll seconds")
    parser.add_argument("--limit", type=int, default=4, help="runs at a time (worker mode)")
    parser.add_argument(
        "--server",
        choices=["postgres", "sqlite"],
        default="postgres" if prefect_postgres.postgres_bin() else "sqlite",
    )
    parser.add_argument("--project", type=Path, help="an installed render to reuse")
    args = parser.parse_args()
    project = installed_project(args.project)
    print(f"project: {project}")
    options = ["--single", str(args.single), "--burst", str(args.burst)]
    options += ["--executor", args.executor, "--poll", str(args.poll), "--limit", str(args.limit)]
    if args.server == "sqlite":
        print("server: SQLite-backed Prefect test server")
        return run_driver(project, "webhook_driver.py", *options)
    server = prefect_postgres.start(project / ".venv" / "bin" / "prefect")
    print(f"server: Prefect on PostgreSQL ({server.database_url})")
    try:
        return run_driver(project, "webhook_driver.py", *options, "--api-url", server.api_url)
    finally:
        prefect_postgres.stop(server)


if __name__ == "__main__":
    sys.exit(main())
