"""Runs inside a generated project's environment (see bench/soak.py): the fault soak itself.

`--path tasks` (the default): one `send_email` task run per message, `--workers` at a time.
`--path bulk`: one `send_many` task run for all of them, `--workers` sends at a time.
"""

from __future__ import annotations

import argparse
import importlib
import os
import time
from collections import Counter
from typing import Any

import httpx
from _on_fake import provisioned_fake, quiet_prefect

FAULTS: list[dict[str, Any]] = [
    {"status": 503, "error_rate": 0.10},
    {"status": 429, "retry_after": 0, "error_rate": 0.06},
    {"drop_response": True, "error_rate": 0.10},  # applied, then the answer is lost
    {"latency": 1.0, "error_rate": 0.06},  # longer than the client's 0.5 s timeout
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--package", required=True)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--path", choices=["tasks", "bulk"], default="tasks")
    args = parser.parse_args()

    # The production retry policy, with short delays and enough retries for a 30% fault rate
    # (the chance that 11 attempts in a row fail is 0.3**11, about 2e-6).
    os.environ.update(
        MULTIMAIL_RETRIES="10",
        MULTIMAIL_RETRY_BACKOFF_SECONDS="0.02",
        MULTIMAIL_TIMEOUT_SECONDS="0.5",
    )
    quiet_prefect("soak-prefect-home-")
    package = args.package

    with provisioned_fake(package) as on_fake:
        fake, settings = on_fake.fake, on_fake.settings
        audience = settings.replies.audience

        from prefect import flow
        from prefect.task_runners import ThreadPoolTaskRunner
        from prefect.testing.utilities import prefect_test_harness

        tasks = importlib.import_module(f"{package}.mail.tasks")
        bulk = importlib.import_module(f"{package}.mail.bulk")

        runner: Any = ThreadPoolTaskRunner(max_workers=args.workers)

        @flow(task_runner=runner)
        def soak(n: int) -> list[str]:
            futures = [
                tasks.send_email.submit(
                    audience,
                    ["soak@example.com"],
                    f"soak #{i}",
                    f"message {i}",
                    idempotency_key=tasks.message_key("soak", str(i)),
                )
                for i in range(n)
            ]
            states = [future.wait() or future.state for future in futures]
            return [str(state.type.value) for state in states]

        @flow
        def soak_bulk(n: int) -> list[str]:
            messages = [
                bulk.OutgoingEmail(
                    audience=audience,
                    to=["soak@example.com"],
                    subject=f"soak #{i}",
                    markdown=f"message {i}",
                    idempotency_key=tasks.message_key("soak", str(i)),
                )
                for i in range(n)
            ]
            outcomes = bulk.send_many(messages, max_concurrency=args.workers)
            return ["COMPLETED" if outcome.sent else "FAILED" for outcome in outcomes]

        for seed, rule in enumerate(FAULTS):
            response = httpx.post(
                f"{fake.base_url}/_fake/faults", json={"path_prefix": "/v1/", "seed": seed, **rule}
            )
            response.raise_for_status()

        with prefect_test_harness(server_startup_timeout=120):
            started = time.monotonic()
            final_states = (soak_bulk if args.path == "bulk" else soak)(args.messages)
            wall = time.monotonic() - started

        fired = sum(r["fired"] for r in httpx.get(f"{fake.base_url}/_fake/faults").json()["faults"])
        httpx.delete(f"{fake.base_url}/_fake/faults").raise_for_status()
        # The tally reads with the client's default timeout: the soak's 0.5 s is for the sends
        # it faults, and a page of a thousand emails on a loaded machine takes longer.
        with on_fake.client_with(os.environ["MULTIMAIL_API_KEY"]) as reader:
            mailbox = reader.mailbox_id(settings.audience(audience).mailbox)
            subjects = Counter(e.subject for e in reader.iter_emails(mailbox, direction="outbound"))

    wanted = {f"soak #{i}" for i in range(args.messages)}
    delivered = len(wanted & set(subjects))
    duplicates = sum(count - 1 for subject, count in subjects.items() if subject in wanted)
    lost = len(wanted - set(subjects))
    failed = sum(1 for state in final_states if state != "COMPLETED")
    how = (
        f"one send_many task run, {args.workers} sends at a time"
        if args.path == "bulk"
        else f"{args.workers} concurrent send_email task runs"
    )
    print(f"messages:        {args.messages} logical sends, {how}")
    # Every faulted request is followed by one more attempt; each message ends in one success.
    share = fired / (fired + args.messages)
    print(f"faults injected: {fired} ({share:.0%} of {fired + args.messages} send requests)")
    print(f"delivered:       {delivered}")
    print(f"duplicates:      {duplicates}")
    print(f"lost:            {lost}")
    print(f"failed {'sends' if args.path == 'bulk' else 'tasks'}:    {failed}")
    print(f"wall time:       {wall:.1f} s ({args.messages / wall:.0f} messages/s)")
    raise SystemExit(0 if (delivered, duplicates, lost) == (args.messages, 0, 0) else 1)


if __name__ == "__main__":
    main()
