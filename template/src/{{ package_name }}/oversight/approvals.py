"""Waiting for a human decision, two ways behind one call.

- **poll**: a task reads the email with backoff until it leaves the approval queue. Simple,
  needs no deployment, but the flow run holds its worker for as long as the human takes.
- **suspend**: the flow run tags the email with its own id and suspends, freeing its worker and
  infrastructure. When the decision arrives, the webhook receiver (`inbound/receiver.py`) or the
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
and in `serve`), which also resumes every run whose email was decided while no webhook reached
the receiver; Prefect itself fails a run suspended an hour past the timeout, as a backstop.

Each waiting run leaves its own tag on the email (`prefect-flow-run-<run id>`, value: the pause
key), so two runs waiting on one email are both resumed; and pause keys start with the
project's name (`project` in settings.toml), so the sweep never touches another project's runs
on a shared Prefect server.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Literal
from uuid import UUID

import httpx
from prefect import get_run_logger
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.context import FlowRunContext
from prefect.exceptions import NotPausedError, ObjectNotFound, Pause
from prefect.flow_runs import resume_flow_run, suspend_flow_run
from prefect.runtime import flow_run
from starlette.concurrency import run_in_threadpool

from ..mail.connection import current_settings, shared_client
from ..mail.tasks import (
    WAITING_STATUSES,
    Delivery,
    cancel_email,
    check_delivery,
    tag_email,
    wait_for_decision,
)
from ..multimail.client import MailboxNotFoundError, MultiMailAPIError, MultiMailError
from ..namespace import PAUSE_KEY_PREFIX
from ..settings import OversightMode

WaitMode = Literal["auto", "poll", "suspend"]
#: What became of one resume request. `not_suspended_yet`: the run is still on its way to
#: suspending; `not_resumed`: it is suspended but Prefect did not resume it. Both are worth
#: asking again later (the receiver answers 503, so MultiMail redelivers the decision).
ResumeOutcome = Literal[
    "resumed", "not_suspended_yet", "not_resumed", "finished", "unknown_run", "wrong_email"
]
RETRY_LATER: frozenset[ResumeOutcome] = frozenset({"not_suspended_yet", "not_resumed"})

#: Tags on an outbound email naming the suspended flow runs that wait for its decision: one
#: tag per run, `prefect-flow-run-<run id>` = the run's pause key.
FLOW_RUN_TAG = "prefect-flow-run"
#: How long after approval_timeout_seconds Prefect fails a suspended run nobody woke.
BACKSTOP = timedelta(hours=1)
#: Paused runs read per request by the expiry sweep.
PAGE_SIZE = 200


def pause_key(email_id: str) -> str:
    """The pause key of a run waiting for the decision on outbound email `email_id`."""
    return f"{PAUSE_KEY_PREFIX}{email_id}"


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
    _suspend(audience, email_id, key)
    # Resumed: the run started again from the top, and `_suspend` returned at once because this
    # pause key was suspended and resumed already.
    delivery = check_delivery(audience, email_id, scan_timeout_seconds=0)
    return _give_up(audience, email_id) if delivery.outcome == "pending" else delivery


def _suspend(audience: str, email_id: str, key: str) -> None:
    """Suspend this flow run on `key`, leaving the process; return at once if this run was
    suspended on `key` and resumed before (the rerun after a resume).

    A decision made after the run's last look at the email but before Prefect recorded the
    suspension finds no suspended run to resume: the receiver answers 503 and MultiMail's few
    redeliveries may all come too early. So the suspension is recorded first, without leaving,
    the email is read once more (a plain API call: a suspended run may not start tasks), and a
    run whose email was decided meanwhile resumes itself before it leaves.
    """
    run_id = UUID(str(flow_run.id))
    timeout = current_settings().approval_timeout_seconds + BACKSTOP.total_seconds()
    suspend_flow_run(flow_run_id=run_id, key=key, timeout=int(timeout))
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
    if state is None or not state.is_paused() or state.state_details.pause_key != key:
        return  # Prefect answered that this key was suspended and resumed already
    if _is_decided(email_id, audience):
        get_run_logger().info("%s was decided while this run suspended: resuming it", email_id)
        with suppress(NotPausedError):  # the receiver resumed it meanwhile
            resume_flow_run(run_id)
    raise Pause(state=state)


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
    The run's history is read before its current state: a suspension recorded between two
    reads then shows as the current state (and is resumed here), never only in the history.
    """
    try:
        run_id = UUID(flow_run_id)
    except ValueError:
        return "unknown_run"
    key = pause_key(email_id)
    async with get_client() as client:
        try:
            was_suspended = await _was_suspended(client, run_id, key)
            state = (await client.read_flow_run(run_id)).state
        except ObjectNotFound:
            return "unknown_run"
        if state is not None and state.is_final():
            return "finished"
        if state is None or not state.is_paused():
            return "resumed" if was_suspended else "not_suspended_yet"
        if state.state_details.pause_key != key:
            return "wrong_email"
        return await _resume(client, run_id, key)


async def _resume(client: PrefectClient, run_id: UUID, key: str) -> ResumeOutcome:
    """Ask Prefect to resume a run suspended on `key`, then read what it did: the answer alone
    does not say (an ABORT, when the run is no longer paused, raises nothing)."""
    await client.resume_flow_run(run_id)
    state = (await client.read_flow_run(run_id)).state
    if state is not None and state.is_final():
        return "finished"  # Prefect's backstop failed it
    if state is not None and state.is_paused() and state.state_details.pause_key == key:
        return "not_resumed"
    return "resumed"


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


def _is_decided(email_id: str, audience: str | None) -> bool:
    """Whether outbound `email_id` has left scanning and the approval queue: looked up in
    `audience`'s mailbox first, then in every other audience's that can send. Plain API calls,
    no task (a suspended run may not start tasks). False when MultiMail cannot say now: the
    run stays suspended until the receiver or the next sweep (`resume_settled_waits`) sees it."""
    settings = current_settings()
    names = [audience] if audience in settings.audiences else []
    names += [
        name
        for name, config in settings.audiences.items()
        if name != audience and config.oversight_mode != OversightMode.READ_ONLY
    ]
    client = shared_client()
    for name in names:
        try:
            mailbox = client.mailbox_id(settings.audience(name).mailbox)
            return client.get_email(mailbox, email_id).status not in WAITING_STATUSES
        except (MailboxNotFoundError, MultiMailAPIError) as error:
            if isinstance(error, MultiMailAPIError) and error.status_code != 404:
                return False  # MultiMail cannot say now: the next sweep asks again
        except (MultiMailError, httpx.HTTPError):
            return False
    return False


async def resume_settled_waits(
    expired_after_seconds: float | None = None, *, page_size: int = PAGE_SIZE
) -> list[str]:
    """Resume every run of this project whose wait for a decision is over. Returns their ids.

    Over means decided (a decision whose webhook never reached the receiver: it was down
    longer than MultiMail's retries), whatever the wait's age; or waiting longer than the
    approval timeout (`expired_after_seconds`, default approval_timeout_seconds), in which case
    the resumed run finds the email still pending, cancels it and reports `timed_out`. Only
    runs whose pause key carries this project's namespace are touched.
    """
    limit = expired_after_seconds
    if limit is None:
        limit = current_settings().approval_timeout_seconds
    cutoff = datetime.now(UTC) - timedelta(seconds=limit)
    prefix = PAUSE_KEY_PREFIX
    resumed = []
    async with get_client() as client:
        for run in await _paused_runs(client, page_size):
            state = run.state
            key = (state.state_details.pause_key if state else None) or ""
            if state is None or not key.startswith(prefix):
                continue
            email_id = key.removeprefix(prefix)
            audience = run.parameters.get("audience")
            settled = state.timestamp <= cutoff or await run_in_threadpool(
                _is_decided, email_id, audience if isinstance(audience, str) else None
            )
            if settled and await resume_waiting_run(str(run.id), email_id) == "resumed":
                resumed.append(str(run.id))
    return resumed
