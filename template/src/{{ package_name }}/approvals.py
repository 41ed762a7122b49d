"""Waiting for a human decision, two ways behind one call.

- **poll**: a task reads the email with backoff until it leaves the approval queue. Simple,
  needs no deployment, but the flow run holds its worker for as long as the human takes.
- **suspend**: the flow run tags the email with its own id and suspends, freeing its worker and
  infrastructure. When the decision arrives, the webhook receiver (`receiver.py`) or the
  `resume` command resumes the run, which starts again from the top. Every step before the
  suspension is idempotent (reading, tagging, and sending with a key derived from what the
  message is), so the rerun sends nothing twice and continues from the recorded decision.

`wait="auto"` suspends only a run that Prefect lets suspend: a run of its own deployment (a
worker or `serve` picks the resumed run up again) with no parent run. Everything else polls: a
plain Python call, tests, the demo, a nested subflow, and a child started by `run_deployment`
from a parent flow with the default `as_subflow=True` (Prefect refuses to suspend a run that has
a parent). So a parent that fans out with `run_deployment` gets completed children either way.

Either way, a wait that outlasts `approval_timeout_seconds` ends as `timed_out` only once
MultiMail accepted the cancel, so a late approval cannot send it behind the flow's back; an
email still being scanned or still awaiting a decision is `pending`, never `timed_out`.
Suspended runs are woken for that by the `expire-approval-waits` flow (scheduled in prefect.yaml
and in `serve`); Prefect itself fails a run suspended an hour longer than that, as a backstop.

Each waiting run leaves its own tag on the email (`prefect-flow-run-<run id>`, value: the pause
key), so two runs waiting on one email are both resumed; and pause keys start with the
project's name (`project` in settings.toml), so the sweep never touches another project's runs
on a shared Prefect server.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Literal
from uuid import UUID

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout, NotPausedError, ObjectNotFound
from prefect.flow_runs import aresume_flow_run, suspend_flow_run
from prefect.runtime import flow_run

from .client import MultiMailAPIError
from .credentials import current_settings
from .tasks import Delivery, cancel_email, check_delivery, tag_email, wait_for_decision

WaitMode = Literal["auto", "poll", "suspend"]
ResumeOutcome = Literal["resumed", "not_suspended_yet", "finished", "unknown_run", "wrong_email"]

#: Tags on an outbound email naming the suspended flow runs that wait for its decision: one
#: tag per run, `prefect-flow-run-<run id>` = the run's pause key.
FLOW_RUN_TAG = "prefect-flow-run"
#: How long after approval_timeout_seconds Prefect fails a suspended run nobody woke.
BACKSTOP = timedelta(hours=1)
#: Paused runs read per request by the expiry sweep.
PAGE_SIZE = 200


def pause_key_prefix() -> str:
    """What every pause key of this project starts with (namespaced by `project`)."""
    return f"{current_settings().project}-decision-"


def pause_key(email_id: str) -> str:
    """The pause key of a run waiting for the decision on outbound email `email_id`."""
    return f"{pause_key_prefix()}{email_id}"


def waiter_tag(run_id: UUID | str) -> str:
    """The email tag that names one waiting flow run."""
    return f"{FLOW_RUN_TAG}-{run_id}"


def waiting_runs(tags: Mapping[str, object]) -> dict[str, str]:
    """`{flow run id: pause key}` of the runs an email's tags say are waiting for it."""
    prefix = f"{FLOW_RUN_TAG}-"
    return {
        name.removeprefix(prefix): str(value)
        for name, value in tags.items()
        if name.startswith(prefix)
    }


def may_suspend() -> bool:
    """Whether Prefect lets the current flow run suspend: a deployment's own run, no parent.

    Not `prefect.runtime.deployment.id`: a nested subflow inherits its parent's deployment id,
    and a child of `run_deployment(..., as_subflow=True)` has a parent; both fail to suspend.
    """
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return False
    run = context.flow_run
    return run.deployment_id is not None and run.parent_task_run_id is None


def resolve_wait(wait: WaitMode) -> Literal["poll", "suspend"]:
    if wait == "auto":
        return "suspend" if may_suspend() else "poll"
    return wait


def await_delivery(audience: str, email_id: str, wait: WaitMode = "auto") -> Delivery:
    """Inside a flow: the outcome of an outbound email, waiting for a human if needed."""
    if resolve_wait(wait) == "poll":
        delivery = wait_for_decision(audience, email_id)
        return _give_up(audience, email_id) if delivery.outcome == "pending" else delivery
    delivery = check_delivery(audience, email_id)
    if delivery.outcome != "pending":
        return delivery  # no human in the loop, or already decided
    # Still scanning or waiting for a human: either way it may still be sent, so wait for it.
    key = pause_key(email_id)
    tag_email(audience, email_id, {waiter_tag(str(flow_run.id)): key})
    # A decision made before the tag landed found no run to resume: look once more.
    delivery = check_delivery(audience, email_id, scan_timeout_seconds=0)
    if delivery.outcome != "pending":
        return delivery
    timeout = current_settings().approval_timeout_seconds + BACKSTOP.total_seconds()
    # The process exits here; after a resume the run starts again from the top and this call
    # returns at once, because this pause key was already suspended and resumed.
    suspend_flow_run(key=key, timeout=int(timeout))
    delivery = check_delivery(audience, email_id, scan_timeout_seconds=0)
    return _give_up(audience, email_id) if delivery.outcome == "pending" else delivery


def _give_up(audience: str, email_id: str) -> Delivery:
    """No decision in time: cancel the email. `timed_out` only once MultiMail accepted that;
    a 409 means it was approved or sent meanwhile, and that outcome is reported instead."""
    try:
        cancel_email(audience, email_id)
    except MultiMailAPIError as error:
        if error.status_code != 409:
            raise
        return check_delivery(audience, email_id, scan_timeout_seconds=0)
    return Delivery(email_id=email_id, outcome="timed_out", status="cancelled")


async def _was_suspended(client: PrefectClient, run_id: UUID, key: str) -> bool:
    states = await client.read_flow_run_states(run_id)
    return any(state.is_paused() and state.state_details.pause_key == key for state in states)


async def resume_waiting_run(flow_run_id: str, email_id: str) -> ResumeOutcome:
    """Resume the flow run `flow_run_id` if it is suspended on the decision about `email_id`.

    `resumed` also answers a repeated request for a run that was resumed already (say, a
    redelivered webhook); `not_suspended_yet` means the run is still on its way to suspending;
    `wrong_email` that the run waits for something else (a stale or forged tag): not touched.
    """
    try:
        run_id = UUID(flow_run_id)
    except ValueError:
        return "unknown_run"
    key = pause_key(email_id)
    async with get_client() as client:
        try:
            run = await client.read_flow_run(run_id)
        except ObjectNotFound:
            return "unknown_run"
        state = run.state
        if state is not None and state.is_final():
            return "finished"
        if state is not None and state.is_paused():
            if state.state_details.pause_key != key:
                return "wrong_email"
            try:
                await aresume_flow_run(run_id)
                return "resumed"
            except NotPausedError:  # someone else resumed it just now
                pass
            except FlowPauseTimeout:  # Prefect's backstop expired; the run is failing
                return "finished"
        return "resumed" if await _was_suspended(client, run_id, key) else "not_suspended_yet"


async def resume_waiters(email_id: str, tags: Mapping[str, object]) -> dict[str, ResumeOutcome]:
    """Resume every run the email's tags name as waiting for `email_id`: `{run id: outcome}`."""
    return {run_id: await resume_waiting_run(run_id, email_id) for run_id in waiting_runs(tags)}


async def _paused_runs(client: PrefectClient, page_size: int) -> list[FlowRun]:
    """Every paused flow run on the server, page by page (read before any is resumed)."""
    paused = FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
    )
    runs: list[FlowRun] = []
    while True:
        page = await client.read_flow_runs(
            flow_run_filter=paused, sort=FlowRunSort.ID_DESC, limit=page_size, offset=len(runs)
        )
        runs.extend(page)
        if len(page) < page_size:
            return runs


async def resume_expired_waits(
    older_than_seconds: float | None = None, *, page_size: int = PAGE_SIZE
) -> list[str]:
    """Resume every run of this project suspended on a decision longer than the approval timeout.

    Each resumed run finds the email still pending, cancels it and reports `timed_out`. Only
    runs whose pause key carries this project's namespace are touched. Returns their ids.
    """
    limit = older_than_seconds
    if limit is None:
        limit = current_settings().approval_timeout_seconds
    cutoff = datetime.now(UTC) - timedelta(seconds=limit)
    prefix = pause_key_prefix()
    resumed = []
    async with get_client() as client:
        for run in await _paused_runs(client, page_size):
            state = run.state
            if state is None or state.timestamp > cutoff:
                continue
            key = state.state_details.pause_key or ""
            if not key.startswith(prefix):
                continue
            outcome = await resume_waiting_run(str(run.id), key.removeprefix(prefix))
            if outcome == "resumed":
                resumed.append(str(run.id))
    return resumed
