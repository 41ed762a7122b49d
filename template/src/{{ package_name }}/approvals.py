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

Either way, a wait that outlasts `approval_timeout_seconds` ends as `timed_out`, and the email
is cancelled so that a late approval cannot send it behind the flow's back. Suspended runs are
woken for that by the `expire-approval-waits` flow (scheduled in prefect.yaml and in `serve`);
Prefect itself fails a run suspended an hour longer than that, as a backstop.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal
from uuid import UUID

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.exceptions import FlowPauseTimeout, NotPausedError, ObjectNotFound
from prefect.flow_runs import aresume_flow_run, suspend_flow_run
from prefect.runtime import deployment, flow_run

from .client import MultiMailAPIError
from .credentials import current_settings
from .tasks import Delivery, cancel_email, check_delivery, tag_email, wait_for_decision

WaitMode = Literal["auto", "poll", "suspend"]
ResumeOutcome = Literal["resumed", "not_suspended_yet", "finished", "unknown_run"]

#: Tag on an outbound email that names the suspended flow run waiting for its decision.
FLOW_RUN_TAG = "prefect-flow-run"
#: Pause keys of decision waits start with this, so the expiry sweep touches only them.
PAUSE_KEY_PREFIX = "decision-"
#: How long after approval_timeout_seconds Prefect fails a suspended run nobody woke.
BACKSTOP = timedelta(hours=1)


def resolve_wait(wait: WaitMode) -> Literal["poll", "suspend"]:
    if wait == "auto":
        return "suspend" if deployment.id else "poll"
    return wait


def await_delivery(audience: str, email_id: str, wait: WaitMode = "auto") -> Delivery:
    """Inside a flow: the outcome of an outbound email, waiting for a human if needed."""
    if resolve_wait(wait) == "poll":
        delivery = wait_for_decision(audience, email_id)
        return _give_up(audience, email_id) if delivery.outcome == "timed_out" else delivery
    delivery = check_delivery(audience, email_id)
    if delivery.outcome != "pending":
        return delivery  # no human in the loop, or already decided
    tag_email(audience, email_id, {FLOW_RUN_TAG: str(flow_run.id)})
    # A decision made before the tag landed found no run to resume: look once more.
    delivery = check_delivery(audience, email_id)
    if delivery.outcome != "pending":
        return delivery
    timeout = current_settings().approval_timeout_seconds + BACKSTOP.total_seconds()
    # The process exits here; after a resume the run starts again from the top and this call
    # returns at once, because this pause key was already suspended and resumed.
    suspend_flow_run(key=f"{PAUSE_KEY_PREFIX}{email_id}", timeout=int(timeout))
    delivery = check_delivery(audience, email_id)
    return _give_up(audience, email_id) if delivery.outcome == "pending" else delivery


def _give_up(audience: str, email_id: str) -> Delivery:
    """No decision in time: cancel the email, unless a human decided at the last moment."""
    try:
        cancel_email(audience, email_id)
    except MultiMailAPIError as error:
        if error.status_code != 409:  # 409: approved or sent meanwhile; report that instead
            raise
    delivery = check_delivery(audience, email_id)
    if delivery.outcome in ("pending", "cancelled"):
        return delivery.model_copy(update={"outcome": "timed_out"})
    return delivery


async def _was_suspended(client: PrefectClient, run_id: UUID) -> bool:
    states = await client.read_flow_run_states(run_id)
    return any(
        state.is_paused() and (state.state_details.pause_key or "").startswith(PAUSE_KEY_PREFIX)
        for state in states
    )


async def resume_waiting_run(flow_run_id: str) -> ResumeOutcome:
    """Resume the suspended flow run `flow_run_id`, saying what happened.

    `resumed` also answers a repeated request for a run that was resumed already (say, a
    redelivered webhook); `not_suspended_yet` means the run is still on its way to suspending.
    """
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
        if state is not None and state.is_paused():
            try:
                await aresume_flow_run(run_id)
                return "resumed"
            except NotPausedError:  # someone else resumed it just now
                pass
            except FlowPauseTimeout:  # Prefect's backstop expired; the run is failing
                return "finished"
        return "resumed" if await _was_suspended(client, run_id) else "not_suspended_yet"


async def resume_expired_waits(older_than_seconds: float | None = None) -> list[str]:
    """Resume every run suspended on a decision for longer than the approval timeout.

    Each resumed run finds the email still pending, cancels it and reports `timed_out`.
    Returns the ids of the runs resumed.
    """
    limit = older_than_seconds
    if limit is None:
        limit = current_settings().approval_timeout_seconds
    cutoff = datetime.now(UTC) - timedelta(seconds=limit)
    paused = FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
    )
    resumed = []
    async with get_client() as client:
        for run in await client.read_flow_runs(flow_run_filter=paused):
            state = run.state
            if state is None or state.timestamp > cutoff:
                continue
            if not (state.state_details.pause_key or "").startswith(PAUSE_KEY_PREFIX):
                continue
            if await resume_waiting_run(str(run.id)) == "resumed":
                resumed.append(str(run.id))
    return resumed
