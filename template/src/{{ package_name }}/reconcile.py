"""Nothing lost when a webhook is: `reconcile-inbound` starts the runs no webhook started.

MultiMail gives up on a delivery after a few attempts, and a receiver can be down longer than
that. This scheduled flow lists each answering audience's recent inbound mail, keeps what no
run has handled yet (no `state` tag: `answer-inbound` tags every email it touches, answered or
skipped) and passes the same guards as the receiver (`inbound.MailboxDirectory`). For each it
asks for the run of answer-inbound with the same idempotency key as the receiver, so an email
whose webhook did arrive, or whose run is still queued, gets the run it already has: a message
whose webhook never arrived is answered, none twice.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.runtime import deployment as this_deployment

from .credentials import current_settings, shared_client
from .inbound import ANSWER_INBOUND_DEPLOYMENT, RUN_TAGS, MailboxDirectory, start_answer
from .local_deployments import LOCAL_NAME
from .settings import OversightMode
from .tasks import mail_task

#: The tag `answer-inbound` sets on every inbound email it handles (answering, answered,
#: skipped): such an email needs no run from here.
HANDLED_TAG = "state"
#: Statuses of inbound mail a run may answer (not held for approval, quarantined or deleted).
ANSWERABLE_STATUSES = frozenset({"unread", "read"})


def _received(value: str | None) -> datetime | None:
    if not value:
        return None
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@mail_task
def unhandled_inbound(audience: str, since: datetime) -> list[str]:
    """Ids of the audience's inbound emails since `since` that no run has handled, oldest
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
        if HANDLED_TAG not in client.get_tags(mailbox, email.id):
            found.append(email.id)
    return found[::-1]


def answer_deployment() -> str:
    """The answer-inbound deployment beside this run's own: `answer-inbound/local` when served
    by `serve`, else the one prefect.yaml deploys."""
    if this_deployment.name == LOCAL_NAME:
        return f"answer-inbound/{LOCAL_NAME}"
    return ANSWER_INBOUND_DEPLOYMENT


@flow(name="reconcile-inbound")
async def reconcile_inbound(
    deployment: str | None = None, lookback_hours: float = 24.0
) -> dict[str, str]:
    """Start (or find) the answer-inbound run of every recent inbound email no run handled.

    Returns email id → flow run id. Scheduled every 10 minutes in prefect.yaml and by `serve`;
    `lookback_hours` bounds how far back it looks (MultiMail lists newest first).
    `deployment`: FLOW/DEPLOYMENT of answer-inbound (default: `answer_deployment()`).
    """
    deployment = deployment or answer_deployment()
    settings = current_settings()
    since = datetime.now(UTC) - timedelta(hours=lookback_hours)
    log = get_run_logger()
    runs: dict[str, str] = {}
    async with get_client() as client:
        for name, audience in settings.audiences.items():
            if audience.oversight_mode == OversightMode.READ_ONLY:
                continue
            for email_id in unhandled_inbound(name, since):
                run = await start_answer(
                    client, email_id, name, deployment=deployment, tags=(*RUN_TAGS, "reconciled")
                )
                runs[email_id] = str(run.id)
    if runs:
        log.info("%d inbound email(s) had no handled run; their runs: %s", len(runs), runs)
    return runs
