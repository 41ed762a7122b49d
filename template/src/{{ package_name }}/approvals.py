"""Waiting for a human decision, two ways behind one call.

- **poll**: a task reads the email with backoff until it leaves the approval queue. Simple,
  needs no deployment, but the flow run holds its worker for as long as the human takes.
- **suspend**: the flow run tags the email with its own id and suspends, freeing its worker and
  infrastructure. When the decision arrives, the webhook receiver (`receiver.py`) or the
  `resume` command resumes the run, which starts again from the top. Every step before the
  suspension is idempotent (reading, tagging, and sending with a key derived from what the
  message is), so the rerun sends nothing twice and continues from the recorded decision.

`wait="auto"` suspends inside a deployment (where a worker or `serve` can pick the resumed run
up again) and polls everywhere else (a plain Python call, tests, the demo).
"""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.flow_runs import aresume_flow_run, suspend_flow_run
from prefect.runtime import deployment, flow_run

from .tasks import Delivery, check_delivery, tag_email, wait_for_decision

WaitMode = Literal["auto", "poll", "suspend"]
ResumeOutcome = Literal["resumed", "not_suspended_yet", "finished", "unknown_run"]

#: Tag on an outbound email that names the suspended flow run waiting for its decision.
FLOW_RUN_TAG = "prefect-flow-run"


def resolve_wait(wait: WaitMode) -> Literal["poll", "suspend"]:
    if wait == "auto":
        return "suspend" if deployment.id else "poll"
    return wait


def await_delivery(audience: str, email_id: str, wait: WaitMode = "auto") -> Delivery:
    """Inside a flow: the outcome of an outbound email, waiting for a human if needed."""
    if resolve_wait(wait) == "poll":
        return wait_for_decision(audience, email_id)
    delivery = check_delivery(audience, email_id)
    if delivery.outcome != "pending":
        return delivery  # no human in the loop, or already decided
    tag_email(audience, email_id, {FLOW_RUN_TAG: str(flow_run.id)})
    # The process exits here; after `resume` the run starts again from the top and this call
    # returns at once, because this pause key was already suspended and resumed.
    suspend_flow_run(key=f"decision-{email_id}")
    delivery = check_delivery(audience, email_id)
    if delivery.outcome == "pending":  # resumed without a decision: the wait was given up
        return delivery.model_copy(update={"outcome": "timed_out"})
    return delivery


async def resume_waiting_run(flow_run_id: str) -> ResumeOutcome:
    """Resume the suspended flow run `flow_run_id`, saying what happened."""
    try:
        run_id = UUID(flow_run_id)
    except ValueError:
        return "unknown_run"
    async with get_client() as client:
        try:
            run = await client.read_flow_run(run_id)
        except ObjectNotFound:
            return "unknown_run"
    state = run.state
    if state is not None and state.is_final():
        return "finished"
    if state is None or not state.is_paused():
        return "not_suspended_yet"  # still on its way to suspending: ask again later
    await aresume_flow_run(run_id)
    return "resumed"
