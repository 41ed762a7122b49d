"""Drafting overhead: answer-inbound per email with the fixed draft and with a scripted model.

Runs inside a generated project's environment (bench/drafting.py starts it). An autonomous
audience answers, so no human is waited for; both ways answer the same number of emails,
taking turns in rounds, against one fake and one throwaway Prefect server. What the scripted
model adds is the orchestration cost of a model draft (pydantic-ai's agent run, the thread
read, the `drafted_by` tag, the artifact and the event), not a provider's latency.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from _on_fake import provisioned_fake, quiet_prefect

AUDIENCE = "bench_drafts"


def scripted_model() -> Any:
    from pydantic_ai.messages import ModelMessage, ModelResponse, ToolCallPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        (output,) = info.output_tools
        return ModelResponse(parts=[ToolCallPart(output.name, {"markdown": "Hello, on it."})])

    return FunctionModel(respond)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--package", required=True)
    parser.add_argument("--emails", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    quiet_prefect("bench-drafting-")
    prefix = f"MULTIMAIL_AUDIENCES__{AUDIENCE.upper()}__"
    os.environ.update(
        {
            prefix + "MAILBOX": "bench-drafts",
            prefix + "OVERSIGHT_MODE": "autonomous",
            prefix + "PURPOSE": "Answers questions (benchmark).",
            "MULTIMAIL_REPLIES__AUDIENCE": AUDIENCE,
        }
    )
    from prefect.testing.utilities import prefect_test_harness

    with provisioned_fake(args.package) as on, prefect_test_harness(server_startup_timeout=120):
        connection = on.module("mail.connection")
        answer_inbound = on.module("flows.answer_inbound").answer_inbound
        agent = on.module("drafting.agent")
        address = next(s.address for s in on.states if s.audience == AUDIENCE)
        answer_inbound(
            on.fake.deliver_inbound(
                to=address, sender="w@example.com", subject="warm", markdown="?"
            )
        )
        seconds: dict[str, list[float]] = {"fixed draft": [], "scripted model": []}
        for round_ in range(args.rounds):
            for way in seconds:
                if way == "scripted model":
                    os.environ["MULTIMAIL_DRAFTING__MODEL"] = "bench:scripted"
                else:
                    os.environ.pop("MULTIMAIL_DRAFTING__MODEL", None)
                connection.reset()
                ids = [
                    on.fake.deliver_inbound(
                        to=address,
                        sender=f"c{i}@example.com",
                        subject=f"{way} {round_} {i}",
                        markdown="Where is my order?",
                    )
                    for i in range(args.emails)
                ]
                with agent.drafting_with(scripted_model()):
                    for email_id in ids:
                        started = time.perf_counter()
                        report = answer_inbound(email_id)
                        seconds[way].append(time.perf_counter() - started)
                        assert report.outcome == "sent", report
                client = connection.shared_client()
                mailbox = client.mailbox_id("bench-drafts")
                drafted_by = client.get_email(mailbox, ids[-1]).tags.get("drafted_by")
                assert drafted_by == os.environ.get("MULTIMAIL_DRAFTING__MODEL"), drafted_by
        fixed = statistics.median(seconds["fixed draft"])
        print(
            f"\n{args.emails} emails x {args.rounds} rounds per way, "
            "answer-inbound called in-process"
        )
        print(f"{'way':<16}{'median s/email':>16}{'p95':>8}")
        for way, values in seconds.items():
            p95 = sorted(values)[int(0.95 * (len(values) - 1))]
            print(f"{way:<16}{statistics.median(values):>16.3f}{p95:>8.3f}")
        model = statistics.median(seconds["scripted model"])
        print(f"drafting overhead per email: {model - fixed:+.3f} s ({model / fixed:.2f}x)")


if __name__ == "__main__":
    main()
