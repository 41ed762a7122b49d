"""Finding the answer-inbound flow run of one inbound email.

The receiver and `reconcile-inbound` start that run with the idempotency key
`answer-inbound:<email id>` (`starter.run_key`), so the key finds it from the moment Prefect
records it, before a worker picks it up and names it `answer-<email id>`.
"""

from __future__ import annotations

import anyio
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterIdempotencyKey,
)
from prefect.client.schemas.objects import FlowRun

from ..namespace import ANSWER_INBOUND, flow_name
from .starter import run_key

ANSWER_INBOUND_FLOW = flow_name(ANSWER_INBOUND)


class AnswerRunNotFound(LookupError):
    """No answer-inbound run was recorded for the email in time."""


async def find_answer_run(client: PrefectClient, email_id: str) -> FlowRun | None:
    """The answer-inbound run of inbound email `email_id`, if Prefect recorded one.

    Idempotency keys are unique per flow, so there is at most one, whichever deployment
    (prefect.yaml's, or `serve`'s `local`) it was started from.
    """
    runs = await client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[ANSWER_INBOUND_FLOW])),
        flow_run_filter=FlowRunFilter(
            idempotency_key=FlowRunFilterIdempotencyKey(any_=[run_key(email_id)])
        ),
        limit=1,
    )
    return runs[0] if runs else None


async def await_answer_run(email_id: str, *, timeout: float, poll: float = 1.0) -> FlowRun:
    """The run once it exists: the receiver starts it within seconds of the delivery,
    `reconcile-inbound` within its schedule (10 minutes) if a delivery was lost."""
    with anyio.move_on_after(timeout):
        async with get_client() as client:
            while (run := await find_answer_run(client, email_id)) is None:
                await anyio.sleep(poll)
            return run
    raise AnswerRunNotFound(
        f"no {ANSWER_INBOUND_FLOW} flow run for email {email_id} after {timeout:g} s: is the "
        "receiver running, and subscribed (provision --webhook-url)? Is the email inbound mail "
        "to an audience's mailbox?"
    )
