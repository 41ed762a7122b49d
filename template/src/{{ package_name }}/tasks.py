"""Prefect tasks, one per MultiMail operation a flow needs.

Tasks take an *audience* (a name from settings.toml), never a mailbox id or an oversight mode,
and never credentials: the key is resolved inside the task from the environment or the Prefect
Secret block. Every task shares one retry policy (`mail_task`, classified by `is_transient`):
connection errors, timeouts, 429 and 5xx are retried with exponential backoff and jitter, a 429
after at least its Retry-After; 400, 401, 403, 404 and 422 fail at once with the API's message
and what to fix. Sends and replies carry an idempotency key, so a retry after a lost response
returns the original message instead of sending a second one.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from typing import Literal, ParamSpec, TypeVar

import httpx
from prefect import Task, task
from prefect.client.schemas.objects import State, TaskRun
from prefect.tasks import exponential_backoff
from pydantic import BaseModel, ConfigDict

from .client import MultiMailAPIError, MultiMailClient
from .credentials import current_settings, shared_client
from .models import Email, EmailSummary, SendResult, Thread

P = ParamSpec("P")
R = TypeVar("R")

#: Network trouble worth another attempt: refused or reset connections, timeouts, an answer cut
#: off. Not a malformed URL or a local protocol error, which no retry would fix.
TRANSIENT_TRANSPORT_ERRORS = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)

#: Statuses of an outbound email that is still on its way to a decision.
WAITING_STATUSES = frozenset({"pending_scan", "pending_send_approval"})

#: Where an outbound email ended up. `pending`: a human has yet to decide (only ever returned by
#: `check_delivery`; a flow that waited reports `timed_out` instead).
Outcome = Literal["sent", "scheduled", "rejected", "cancelled", "failed", "timed_out", "pending"]
_OUTCOMES: dict[str, Outcome] = {
    "sent": "sent",
    "scheduled": "scheduled",
    "rejected": "rejected",
    "cancelled": "cancelled",
    "send_failed": "failed",
    "spam_flagged": "failed",
    "spam_quarantined": "failed",
}


def is_transient(task: Task[..., object], task_run: TaskRun, state: State[object]) -> bool:
    """Prefect retry condition: retry only what may succeed later.

    Prefect asks only while retries remain, so this is also where a 429 waits out its
    Retry-After (capped) before Prefect adds its own backoff delay.
    """
    try:
        state.result()
    except MultiMailAPIError as error:
        if error.status_code == 429 and error.retry_after:
            cap = current_settings().retry_after_cap_seconds
            if error.retry_after > cap:
                return False  # e.g. a monthly quota: no retry within reach would succeed
            time.sleep(error.retry_after)
        return error.retryable
    except TRANSIENT_TRANSPORT_ERRORS:
        return True
    except Exception:
        return False
    return False


def mail_task(fn: Callable[P, R]) -> Task[P, R]:
    """Decorate `fn` as a task with the shared MultiMail retry policy (from settings.toml)."""
    settings = current_settings()
    return task(
        retries=settings.retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=settings.retry_backoff_seconds),
        retry_jitter_factor=0.5,
        retry_condition_fn=is_transient,
    )(fn)


def message_key(action: str, *identity: str) -> str:
    """An idempotency key for one logical message, e.g. `message_key("reply", inbound_id)`.

    Build it from what the message *is* (an inbound email id, a flow run id plus a step name),
    never from a task run id or an attempt count, so every retry of the same message, by the
    task, the flow or a redelivered webhook, carries the same key and MultiMail sends it once.
    """
    digest = hashlib.sha256("\x1f".join((action, *identity)).encode()).hexdigest()
    return f"{action}-{digest[:40]}"


class Delivery(BaseModel):
    """Where an outbound email ended up, as far as the flow is concerned."""

    model_config = ConfigDict(frozen=True)

    email_id: str
    outcome: Outcome
    status: str
    approved_by: str | None = None


def _mailbox(client: MultiMailClient, audience: str) -> str:
    return client.mailbox_id(current_settings().audience(audience).mailbox)


def _is_duplicate(error: MultiMailAPIError) -> bool:
    return error.status_code == 409 and "duplicate" in error.message.lower()


def _identical(
    client: MultiMailClient, mailbox: str, candidates: list[EmailSummary], markdown: str
) -> SendResult | None:
    """The candidate whose body is `markdown` too: the message a 409 Duplicate refers to."""
    for summary in candidates:
        if client.get_email(mailbox, summary.id).markdown == markdown:
            return SendResult(
                id=summary.id, status=summary.status, thread_id=summary.thread_id, idempotent=True
            )
    return None


@mail_task
def send_email(
    audience: str, to: list[str], subject: str, markdown: str, idempotency_key: str
) -> SendResult:
    """Send a new email from the audience's mailbox (held for approval if its mode says so).

    A 409 "Duplicate" means MultiMail already has this very message (an earlier attempt went
    through): the result is that message, never a second email.
    """
    client = shared_client()
    mailbox = _mailbox(client, audience)
    try:
        return client.send(
            mailbox, to=to, subject=subject, markdown=markdown, idempotency_key=idempotency_key
        )
    except MultiMailAPIError as error:
        if not _is_duplicate(error):
            raise
        recent = client.list_emails(mailbox, direction="outbound", limit=100).emails
        same = [e for e in recent if e.subject == subject and sorted(e.to) == sorted(to)]
        existing = _identical(client, mailbox, same, markdown)
        if existing is None:
            raise
        return existing


@mail_task
def reply_to_email(audience: str, email_id: str, markdown: str, idempotency_key: str) -> SendResult:
    """Reply in the thread of `email_id`; recipients and subject come from the original.

    Like `send_email`, a 409 "Duplicate" resolves to the reply that already exists.
    """
    client = shared_client()
    mailbox = _mailbox(client, audience)
    try:
        return client.reply(mailbox, email_id, markdown=markdown, idempotency_key=idempotency_key)
    except MultiMailAPIError as error:
        if not _is_duplicate(error):
            raise
        original = client.get_email(mailbox, email_id)
        thread = client.get_thread(mailbox, original.thread_id or "")
        replies = [e for e in thread.emails if e.direction == "outbound" and e.id > email_id]
        existing = _identical(client, mailbox, replies, markdown)
        if existing is None:
            raise
        return existing


@mail_task
def check_inbox(
    audience: str, status: str | None = "unread", limit: int = 100
) -> list[EmailSummary]:
    """Inbound emails of the audience's mailbox, newest first (unread ones by default)."""
    client = shared_client()
    page = client.list_emails(
        _mailbox(client, audience), status=status, direction="inbound", limit=limit
    )
    return page.emails


@mail_task
def count_emails(audience: str, status: str, direction: Literal["inbound", "outbound"]) -> int:
    """How many emails of the audience's mailbox have `status` (all pages)."""
    client = shared_client()
    emails = client.iter_emails(_mailbox(client, audience), status=status, direction=direction)
    return sum(1 for _ in emails)


@mail_task
def list_awaiting_approval(audience: str, limit: int = 100) -> list[EmailSummary]:
    """Outbound emails of the audience's mailbox that wait for a human decision."""
    client = shared_client()
    page = client.list_emails(
        _mailbox(client, audience),
        status="pending_send_approval",
        direction="outbound",
        limit=limit,
    )
    return page.emails


@mail_task
def read_email(audience: str, email_id: str) -> Email:
    """Read one email with its body (MultiMail marks an unread email read)."""
    client = shared_client()
    return client.get_email(_mailbox(client, audience), email_id)


@mail_task
def tag_email(audience: str, email_id: str, tags: Mapping[str, str]) -> dict[str, str]:
    """Merge `tags` into the email's tags; returns all its tags afterwards."""
    client = shared_client()
    return client.set_tags(_mailbox(client, audience), email_id, tags)


@mail_task
def get_thread(audience: str, thread_id: str) -> Thread:
    """The whole conversation, oldest first, without bodies."""
    client = shared_client()
    return client.get_thread(_mailbox(client, audience), thread_id)


@mail_task
def cancel_email(audience: str, email_id: str) -> str:
    """Cancel an email that is not sent yet; returns its status (`cancelled`)."""
    client = shared_client()
    return client.cancel(_mailbox(client, audience), email_id).status


@mail_task
def get_email_status(audience: str, email_id: str) -> str:
    """The current status of one email."""
    client = shared_client()
    return client.get_email(_mailbox(client, audience), email_id).status


def _delivery(email: Email) -> Delivery:
    outcome: Outcome = (
        "pending" if email.status in WAITING_STATUSES else _OUTCOMES.get(email.status, "failed")
    )
    return Delivery(
        email_id=email.id, outcome=outcome, status=email.status, approved_by=email.approved_by
    )


def _poll(
    audience: str,
    email_id: str,
    *,
    waiting: frozenset[str],
    timeout_seconds: float,
    poll_seconds: float,
    max_poll_seconds: float,
) -> Delivery:
    """Read the email until its status leaves `waiting`, backing off up to a ceiling."""
    client = shared_client()
    mailbox = _mailbox(client, audience)
    deadline = time.monotonic() + timeout_seconds
    interval = poll_seconds
    while True:
        email = client.get_email(mailbox, email_id)
        remaining = deadline - time.monotonic()
        if email.status not in waiting:
            return _delivery(email)
        if remaining <= 0:
            return Delivery(email_id=email_id, outcome="timed_out", status=email.status)
        time.sleep(min(interval, remaining))
        interval = min(interval * 1.5, max_poll_seconds)


@mail_task
def wait_for_decision(
    audience: str,
    email_id: str,
    timeout_seconds: float | None = None,
    poll_seconds: float = 0.5,
    max_poll_seconds: float = 30.0,
) -> Delivery:
    """Poll an outbound email until it leaves scanning and the approval queue.

    In an autonomous or monitored mailbox that is right after the scan; in a gated one it is
    when a human approves (`sent`) or rejects (`rejected`), or someone cancels it. A timeout
    is an outcome too (`timed_out`), reported rather than raised, so it is never retried.
    The task holds its worker while it waits: fine for minutes; for hours, suspend the flow
    instead (`approvals.await_delivery(..., wait="suspend")`).
    """
    limit = current_settings().approval_timeout_seconds
    if timeout_seconds is not None:
        limit = timeout_seconds
    return _poll(
        audience,
        email_id,
        waiting=WAITING_STATUSES,
        timeout_seconds=limit,
        poll_seconds=poll_seconds,
        max_poll_seconds=max_poll_seconds,
    )


@mail_task
def check_delivery(audience: str, email_id: str, scan_timeout_seconds: float = 60.0) -> Delivery:
    """Where the email stands once MultiMail's scan is done; `pending` if a human must decide."""
    return _poll(
        audience,
        email_id,
        waiting=frozenset({"pending_scan"}),
        timeout_seconds=scan_timeout_seconds,
        poll_seconds=0.2,
        max_poll_seconds=2.0,
    )
