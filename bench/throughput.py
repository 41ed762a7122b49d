"""Throughput: msg/s of each way to send many messages, over plain HTTP and TLS, side by side.

    uv run python bench/throughput.py [--messages 200] [--rounds 3] [--orders default]
                                      [--overhead-rounds 3] [--project DIR]

Renders (or reuses) a project and runs, against one `fake serve` process per transport (plain
HTTP, then `--tls`) and a throwaway local SQLite Prefect server:

- the pooled httpx client, sequential: the limit the fake sets;
- `requests.post` per message: a new connection (and TLS handshake) each time;
- the `send_email` task, sequential in a flow;
- `send_email.map` with a bounded thread pool (single-message tasks fanned out);
- the recommended fan-out: `send_many.map` over chunks;
- the bulk path: one `send_many` task run.

Each starts once the Prefect server has recorded the task runs of the one before (its CPU
idle), so that each figure is the pattern's own. Prints the median msg/s of each, its ratio to
the pooled loop, and how often Prefect's client
met a 503 ('database is locked') during it; checks that each run sent every message exactly once
(exit status 1 otherwise). Where a goal is missed (bulk >= 0.9x pooled and >= 3x per-call over
TLS, fan-out >= 0.5x pooled and not slower than the sequential task, send_email.map >= 0.95x the
sequential task), it profiles that pattern once more and prints where the time went.

Then, on the first transport and in the same process, with nothing reset from then on:

- the patterns in more than one order (`--orders`: two built-in ones by default, or your own,
  e.g. "bulk,map_single,bulk;threads,bulk"), plus 8 threads sharing one pooled client without
  Prefect (the reference of issue 19: send_many >= 0.9x of it, whatever ran before; each
  send_many step sends its messages in `--pairs` blocks taking turns with blocks of the
  threads, so both meet the same moment), a send_many
  in a retried flow run, and a plain `@task`; for each step its msg/s inside its flow, the ratio
  to the threads, how long its flow waited to start, the 503s and the Prefect server's CPU;
  each order twice (`--settle both`): as is, and waiting before each step until the Prefect
  server has recorded the steps before it (which separates what the process carries from one
  step to the next from the server's backlog on the same cores);
- the task overhead (`--overhead-rounds`): ms per message of the bare pooled call, a plain
  `@task` making it and `send_email`, and the Prefect server's CPU per task run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _project import installed_project, run_driver


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200, help="messages per pattern run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each pattern (median)")
    parser.add_argument("--concurrency", type=int, default=8, help="send_many's max_concurrency")
    parser.add_argument("--transports", default="plain,tls")
    parser.add_argument("--patterns", help="comma-separated subset (default: all)")
    parser.add_argument(
        "--orders",
        default="default",
        help="';'-separated orders of steps, run in one process without reset; 'none' skips",
    )
    parser.add_argument(
        "--pairs",
        type=int,
        default=4,
        help="blocks in which each send_many step takes turns with 8 pooled threads (default 4)",
    )
    parser.add_argument(
        "--settle",
        choices=["both", "no", "yes"],
        default="both",
        help="each order as is and again with the Prefect server idle before each step (both)",
    )
    parser.add_argument("--overhead-rounds", type=int, default=3, help="0 skips the task overhead")
    parser.add_argument(
        "--profile",
        choices=["missed", "always", "never"],
        default="missed",
        help="profile the patterns that missed a goal (default), every Prefect one, or none",
    )
    parser.add_argument("--project", type=Path, help="an installed render to reuse")
    args = parser.parse_args()
    project = installed_project(args.project)
    print(f"project: {project}")
    options = [
        "--messages",
        str(args.messages),
        "--rounds",
        str(args.rounds),
        "--concurrency",
        str(args.concurrency),
        "--transports",
        args.transports,
    ]
    if args.patterns:
        options += ["--patterns", args.patterns]
    options += ["--profile", args.profile, "--orders", args.orders, "--settle", args.settle]
    options += ["--pairs", str(args.pairs)]
    options += ["--overhead-rounds", str(args.overhead_rounds)]
    return run_driver(project, "throughput_driver.py", *options)


if __name__ == "__main__":
    sys.exit(main())
