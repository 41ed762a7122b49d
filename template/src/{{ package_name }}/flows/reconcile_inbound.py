"""Every inbound email gets its answer: `reconcile-inbound` starts or re-runs what nothing will.

MultiMail gives up on a delivery after a few attempts, a receiver can be down longer than that,
and a run can die with its process (a killed worker, a lost machine): Prefect re-runs a Failed
run through the flow's retries, never a Crashed one, and a run left Pending or Running with no
process stays so. This scheduled flow lists each answering audience's recent inbound mail and
keeps what has no final outcome recorded (`state` = `reply-<outcome>`: answer-inbound records
one on every email it handles) and passes the same guards as the receiver
(`inbound.MailboxDirectory`). For each, it looks at the run keyed `answer-inbound:<email id>`:

- no run: it asks for one, with the same idempotency key as the receiver, so a webhook that
  arrives meanwhile lands on the same run;
- a run that ended without an outcome (Crashed, Failed after its retries), or one whose process
  is gone (Pending while the worker that claimed it sends no heartbeat, or Pending, or Running
  with no heartbeat, for longer than `stuck_run_seconds` in settings.toml): it marks it Crashed
  and schedules *that* run again at its first scheduled time, as the UI's Retry does, so that it
  goes before the runs that queued behind it;
- anything else (scheduled, running, suspended on a decision, cancelled by someone): left alone.

Runs of the project's other flows whose process is gone are marked Crashed, so that nothing
shows them as still running; their schedules start the next ones. So are answer-inbound runs
whose process is gone after their email got its outcome (a rerun killed while its worker
submitted it): the sweep above no longer looks at that email, and a Pending run would hold a
slot of the answer queue for good. An email whose tags or run cannot be read this pass
(MultiMail or Prefect answering errors) waits for the next pass.

Re-running is safe: the reply's idempotency key comes from the inbound email, and the flow reads
what an earlier attempt recorded on the email's tags before it does anything.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

import httpx
from prefect import flow, get_run_logger
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, State, StateType, Worker
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventResourceFilter,
)
from prefect.exceptions import PrefectHTTPStatusError
from prefect.runtime import deployment as this_deployment
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY
from prefect.states import Crashed, Scheduled

from ..inbound.answer_run import find_answer_run
from ..inbound.starter import RUN_TAGS, MailboxDirectory, start_answer
from ..mail.connection import current_settings, shared_client
from ..mail.tasks import mail_task
from ..multimail.client import MultiMailError
from ..namespace import (
    ANSWER_INBOUND,
    RECONCILE_INBOUND,
    SERVED_DEPLOYMENT_NAME,
    deployment_name,
    flow_name,
)
from ..settings import OversightMode
from .answer_inbound import FINAL_OUTCOMES, STATE_TAG
from .expire_approval_waits import expire_approval_waits
from .export_audit_log import export_audit_log
from .receive_webhook import receive_webhook
from .status_digest import status_digest

#: Statuses of inbound mail a run may answer (not held for approval, quarantined or deleted).
ANSWERABLE_STATUSES = frozenset({"unread", "read"})
#: A Running run is alive while Prefect saw a heartbeat from it within this many periods
#: (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, 30 s in prefect.yaml's job variables and `serve`), at
#: the least (`stuck_run_seconds` in settings.toml may allow longer); so is a worker, by its
#: own heartbeats.
MISSED_HEARTBEATS = 3
#: Labels a worker gives each run it claims (Prefect's `BaseWorker`), naming itself and its pool.
WORKER_LABEL = "prefect.worker.name"
POOL_LABEL = "prefect.work-pool.name"
#: Runs (each retry counts) after which a run is not scheduled again: an email whose run keeps
#: failing waits for a person, who sees the Failed run and its logs.
MAX_RUN_COUNT = 20

Action = Literal["started", "rescheduled", "waiting"]


def _received(value: str | None) -> datetime | None:
    if not value:
        return None
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def has_outcome(tags: dict[str, str]) -> bool:
    """Whether answer-inbound recorded a final outcome on an inbound email's tags."""
    state = tags.get(STATE_TAG, "")
    return state.startswith("reply-") and state.removeprefix("reply-") in FINAL_OUTCOMES


@mail_task
def unanswered_inbound(audience: str, since: datetime) -> list[str]:
    """Ids of the audience's inbound emails since `since` with no outcome recorded, oldest
    first. Reads tags, never the emails themselves (reading one marks it read)."""
    client = shared_client()
    settings = current_settings()
    mailbox = client.mailbox_id(settings.audience(audience).mailbox)
    directory = MailboxDirectory(settings, client.list_mailboxes)
    found = []
    for email in client.iter_emails(mailbox, direction="inbound"):
        received = _received(email.received_at)
        if received is not None and received < since:
            break  # newest first: everything after this is older still
        if email.status not in ANSWERABLE_STATUSES:
            continue
        verdict, _ = directory.verdict(mailbox_id=mailbox, direction="inbound", sender=email.sender)
        if verdict != "answer":
            continue
        try:
            tags = client.get_tags(mailbox, email.id)
        except (MultiMailError, httpx.HTTPError) as error:  # one email waits for the next pass
            get_run_logger().warning("Skipping %s this pass: %s", email.id, error)
            continue
        if not has_outcome(tags):
            found.append(email.id)
    return found[::-1]


async def _heartbeat_since(client: PrefectClient, run: FlowRun, since: datetime) -> bool:
    page = await client.read_events(
        filter=EventFilter(
            occurred=EventOccurredFilter(since=since),
            event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
            resource=EventResourceFilter(id=[f"prefect.flow-run.{run.id}"]),
        ),
        limit=1,
    )
    return bool(page.events)


async def _claiming_worker(client: PrefectClient, run: FlowRun) -> tuple[str, Worker | None]:
    """The name of the worker that claimed `run` and what its pool knows of it (None: gone),
    or ("", None) when no worker labelled the run (served by `serve`, or not labelled yet)."""
    name, pool = run.labels.get(WORKER_LABEL), run.labels.get(POOL_LABEL)
    if not isinstance(name, str) or not isinstance(pool, str):
        return "", None
    workers = await client.read_workers_for_work_pool(pool, limit=200)
    return name, next((worker for worker in workers if worker.name == name), None)


async def _lost_claim(client: PrefectClient, run: FlowRun, now: datetime) -> str | None:
    """Why the worker that claimed Pending `run` will never start its process, or None.

    A worker killed while it submits a run leaves it Pending, and in its work queue's slot, for
    good. Workers beat every 30 s (PREFECT_WORKER_HEARTBEAT_SECONDS); one silent for
    MISSED_HEARTBEATS beats is gone, as the Prefect server judges it too (a server restart costs
    a worker one or two beats). A worker restarted under the same name, or a run no worker
    labelled, waits for `stuck_run_seconds`.
    """
    name, worker = await _claiming_worker(client, run)
    if not name:
        return None
    if worker is None:
        return f"the worker {name} that claimed it is gone"
    silence = timedelta(seconds=MISSED_HEARTBEATS * (worker.heartbeat_interval_seconds or 30))
    if worker.last_heartbeat_time is None or worker.last_heartbeat_time < now - silence:
        quiet = f"{silence.total_seconds():.0f} s"
        return f"the worker {name} that claimed it sent no heartbeat for {quiet}"
    return None


async def why_dead(client: PrefectClient, run: FlowRun, now: datetime) -> str | None:
    """Why `run` will never finish by itself (so it must run again), or None."""
    state = run.state
    if state is None:
        return None
    age = now - state.timestamp
    stuck = timedelta(seconds=current_settings().stuck_run_seconds)
    if state.type in (StateType.CRASHED, StateType.FAILED, StateType.COMPLETED):
        return f"it ended {state.name} without recording an outcome"
    if state.type == StateType.PENDING:
        if age > stuck:
            return f"it has been Pending for {age.total_seconds():.0f} s with no process"
        return await _lost_claim(client, run, now)
    frequency = PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value()
    if state.type == StateType.RUNNING and frequency is not None:
        silence = max(stuck, timedelta(seconds=MISSED_HEARTBEATS * frequency))
        if age > silence and not await _heartbeat_since(client, run, now - silence):
            return f"no heartbeat for {silence.total_seconds():.0f} s"
    return None


async def run_again(client: PrefectClient, run: FlowRun, reason: str) -> None:
    """Record that `run` is dead (Crashed, unless it ended already) and schedule it again.

    At the time it was first scheduled: workers take a queue's runs in that order, so the run
    goes before everything that queued while it held its slot. Forced: Prefect's rules refuse
    to move a final run back, and only this sweep knows that its process is gone. A live
    process of the same run, if one were only slow, is harmless: the reply's key and the
    email's tags keep the answer single.
    """
    if run.state is not None and not run.state.is_final():
        await mark_crashed(client, run, reason)
    again: State[None] = Scheduled(
        name="AwaitingRetry",
        message=f"reconcile-inbound: {reason}",
        scheduled_time=run.expected_start_time,
    )
    await client.set_flow_run_state(run.id, again, force=True)


async def mark_crashed(client: PrefectClient, run: FlowRun, reason: str) -> None:
    """Record that `run`'s process is gone (forced: Prefect cannot know it by itself)."""
    message = f"reconcile-inbound: {reason}"
    await client.set_flow_run_state(run.id, Crashed(message=message), force=True)


async def reconcile_email(
    client: PrefectClient, email_id: str, audience: str, deployment: str, now: datetime
) -> tuple[Action, FlowRun]:
    """Start, re-run or leave the answer-inbound run of one unanswered email."""
    run = await find_answer_run(client, email_id)
    if run is None:
        tags = (*RUN_TAGS, "reconciled")
        return "started", await start_answer(
            client, email_id, audience, deployment=deployment, tags=tags
        )
    reason = await why_dead(client, run, now)
    if reason is None or run.run_count >= MAX_RUN_COUNT:
        if reason is not None:
            get_run_logger().warning(
                "Not running %s again (%d runs so far): %s", run.name, run.run_count, reason
            )
        return "waiting", run
    await run_again(client, run, reason)
    return "rescheduled", run


def answer_deployment() -> str:
    """The answer-inbound deployment beside this run's own: `serve`'s (`.../local`) when this
    run was served, else the one prefect.yaml deploys."""
    return deployment_name(ANSWER_INBOUND, served=this_deployment.name == SERVED_DEPLOYMENT_NAME)


#: This project's flows whose dead runs are only marked Crashed (their schedules, or
#: receive-webhook's automations and the sweeps, do their work again), and answer-inbound, whose
#: runs still Pending or Running here belong to emails with an outcome (the rest were run again
#: by `reconcile_email` first).
SWEPT_FLOWS = (
    flow_name(ANSWER_INBOUND),
    receive_webhook.name,
    status_digest.name,
    expire_approval_waits.name,
    export_audit_log.name,
    flow_name(RECONCILE_INBOUND),
)


async def crash_dead_runs(client: PrefectClient, now: datetime) -> list[FlowRun]:
    """Mark Crashed the Pending or Running runs of `SWEPT_FLOWS` whose process is gone."""
    live = FlowRunFilter(
        state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING])
        )
    )
    runs = await client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=list(SWEPT_FLOWS))),
        flow_run_filter=live,
        limit=200,
    )
    crashed = []
    for run in runs:
        reason = await why_dead(client, run, now)
        if reason is not None:
            await mark_crashed(client, run, reason)
            crashed.append(run)
    return crashed


@flow(name=flow_name(RECONCILE_INBOUND))
async def reconcile_inbound(
    deployment: str | None = None, lookback_hours: float = 24.0
) -> dict[str, str]:
    """Make sure every recent inbound email no run answered yet has a live answer-inbound run.

    Returns email id → flow run id for each such email. Scheduled every 2 minutes in
    prefect.yaml and by `serve`; `lookback_hours` bounds how far back it looks (MultiMail lists
    newest first). `deployment`: FLOW/DEPLOYMENT of answer-inbound (default:
    `answer_deployment()`), for the runs it starts.
    """
    deployment = deployment or answer_deployment()
    settings = current_settings()
    now = datetime.now(UTC)
    since = now - timedelta(hours=lookback_hours)
    log = get_run_logger()
    runs: dict[str, str] = {}
    async with get_client() as client:
        for name, audience in settings.audiences.items():
            if audience.oversight_mode == OversightMode.READ_ONLY:
                continue
            for email_id in unanswered_inbound(name, since):
                try:
                    action, run = await reconcile_email(client, email_id, name, deployment, now)
                except (httpx.HTTPError, PrefectHTTPStatusError) as error:
                    log.warning("Skipping %s this pass: Prefect answered %s", email_id, error)
                    continue
                runs[email_id] = str(run.id)
                if action != "waiting":
                    log.info("%s: %s run %s", email_id, action, run.id)
        for run in await crash_dead_runs(client, now):
            log.info("Marked %s (%s) Crashed: its process is gone", run.name, run.id)
    return runs
