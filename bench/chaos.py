"""Chaos soak: every inbound email answered or rejected exactly once under ordinary faults.

    uv run python bench/chaos.py [--emails 100] [--seed 1] [--drain-timeout 900]
        [--project DIR] [--keep] [--sweep-interval S] [--stuck-run-seconds S] [--repeat 2]
        [--faults a,b,...]

A default render of this working tree (or `--project DIR`, an installed render) deployed as in
production on 127.0.0.1: a Prefect server on a throwaway PostgreSQL cluster (Debian's binaries,
started and stopped here), prefect.yaml's deployments on a process work pool, two process
workers (`prefect worker start --pool ...`, PREFECT_WORKER_QUERY_SECONDS=2), the receiver
(`receiver serve`) and the fake MultiMail (`fake serve`) behind a fault-injecting proxy (10% of
API requests: 503, applied-but-answer-lost, slow), subscribed to the receiver through a webhook
proxy (`provision --webhook-url`).

N inbound emails arrive over the load phase, alternately to a gated audience (the operator
approves or rejects each reply at a random moment, some before the run has suspended) and an
autonomous one. Meanwhile each fault hits `--repeat` times (2), in a seeded random order:
`kill -9` of a worker and its flow-run processes mid-run and mid-submission (a replacement
worker starts), the receiver down longer than MultiMail's retries (~7 s), a Prefect server
restart (SIGTERM, then SIGKILL), and a window of duplicate webhook deliveries (same delivery
id, re-signed under a new id, and accepted deliveries answered 502 so MultiMail redelivers).
Then a drain: faults off, until every email is answered or rejected and no run is left, or
`--drain-timeout`.

Prints the timeline, each email (runs, replies, recorded state, the operator's decision,
outcome), the faults and a summary. Exits 1 on any duplicate (a second reply, or two runs of
one email running at once), any email without its reply or recorded rejection, any run left
non-final after the drain, a drain timeout or a secret in a log; 2 when a fault could not be
injected as often as asked; 3 when the soak could not be set up; else 0. `--keep` keeps the log
folder (every process's output, the timeline, emails.json, the Prefect server's log).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _project import installed_project, run_driver

from tests import prefect_postgres

FAULTS = "kill_running,kill_submitting,receiver_down,server_restart,duplicates"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=100, help="inbound emails (default 100)")
    parser.add_argument("--seed", type=int, default=1, help="seed of every random choice")
    parser.add_argument(
        "--drain-timeout", type=float, default=900.0, help="seconds to drain (default 900)"
    )
    parser.add_argument("--project", type=Path, help="an installed render to reuse")
    parser.add_argument("--keep", action="store_true", help="keep the log folder")
    parser.add_argument("--phase", type=float, help="seconds over which emails arrive (3 s each)")
    parser.add_argument("--repeat", type=int, default=2, help="times each fault hits (default 2)")
    parser.add_argument("--faults", default=FAULTS, help=f"which faults (default {FAULTS})")
    parser.add_argument(
        "--sweep-interval",
        type=float,
        help="run every interval schedule of prefect.yaml at most this often (a brief run); "
        "default: as deployed",
    )
    parser.add_argument(
        "--stuck-run-seconds",
        type=float,
        help="MULTIMAIL_STUCK_RUN_SECONDS for the workers (so their flow runs) and the "
        "receiver (a brief run); default: settings.toml's stuck_run_seconds",
    )
    parser.add_argument("--api-fault-rate", type=float, default=0.1)
    parser.add_argument("--gap", type=float, nargs=2, default=(5.0, 20.0), metavar=("MIN", "MAX"))
    parser.add_argument("--warmup", type=float, default=20.0)
    args = parser.parse_args()
    if prefect_postgres.postgres_bin() is None:
        sys.exit("PostgreSQL's binaries are needed: apt-get install postgresql")
    project = installed_project(args.project)
    print(f"project: {project}")
    logs = Path(tempfile.mkdtemp(prefix="chaos-logs-"))
    server = prefect_postgres.start(project / ".venv" / "bin" / "prefect")
    state_file = logs / "prefect-server.json"
    state_file.write_text(json.dumps(dataclasses.asdict(server)))
    print(f"server: Prefect on PostgreSQL ({server.api_url}); logs: {logs}")
    options = ["--server-state", str(state_file), "--logs", str(logs)]
    options += ["--emails", str(args.emails), "--seed", str(args.seed)]
    options += ["--drain-timeout", str(args.drain_timeout), "--repeat", str(args.repeat)]
    options += ["--faults", args.faults, "--api-fault-rate", str(args.api_fault_rate)]
    options += ["--gap", *map(str, args.gap), "--warmup", str(args.warmup)]
    if args.phase is not None:
        options += ["--phase", str(args.phase)]
    if args.sweep_interval is not None:
        options += ["--sweep-interval", str(args.sweep_interval)]
    if args.stuck_run_seconds is not None:
        options += ["--stuck-run-seconds", str(args.stuck_run_seconds)]
    try:
        return run_driver(project, "chaos_driver.py", *options)
    finally:
        # The driver may have restarted the server: stop the one the state file names now.
        server = prefect_postgres.PrefectOnPostgres(**json.loads(state_file.read_text()))
        if args.keep:
            log = Path(server.root) / "prefect-server.log"
            if log.exists():
                shutil.copy(log, logs / "prefect-server.log")
        prefect_postgres.stop(server)
        if args.keep:
            print(f"logs kept in {logs}")
        else:
            shutil.rmtree(logs, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
