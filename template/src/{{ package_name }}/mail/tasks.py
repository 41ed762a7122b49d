"""Prefect tasks, one per MultiMail operation a flow needs.

Tasks take an *audience* (a name from settings.toml), never a mailbox id or an oversight mode,
and never credentials: the key is resolved inside the task from the environment or the Prefect
Secret block. Every task shares one retry policy (`mail_task`, decided by
`retry_policy.classify`): connection errors, timeouts, 429 and 5xx are retried with exponential
backoff and jitter, a 429 after at least its Retry-After; 400, 401, 403, 404, 409 and 422 fail
at once with the API's message and what to fix. Sends and replies carry an idempotency key, so a
retry after a lost response returns the original message instead of sending a second one.

Mail tasks are never cached and never persist their results: a status read before a suspension
must be read again after it (a resumed run keeps its flow run id, which Prefect's default cache
key contains), and results would put customer mail in result storage. Settings (retries, backoff)
are read when a task runs, not when this module is imported.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from datetime import timedelta
from typing import Any, Literal, ParamSpec, SupportsIndex, TypeVar, overload

from prefect import Task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.context import TaskRunContext
from pydantic import BaseModel, ConfigDict

from ..multimail.client import MultiMailClient
from ..multimail.models import Email, EmailSummary, SendResult, Thread
from .connection import current_settings, shared_client
from .retry_policy import RetryDecision, classify, retry_delay

P = ParamSpec("P")
R = TypeVar("R")

#: Statuses of an outbound email that is still on its way to a decision.
WAITING_STATUSES = frozenset({"pending_scan", "pending_send_approval"})

#: Where an outbound email ended up. `pending`: it may still be sent (scanning, or a human has
#: yet to decide). `timed_out`: nobody decided in time and MultiMail accepted the cancel, so it
#: will never go out. `skipped`: the flow chose not to answer, `escalated`: the drafting model
#: handed the email to a human (see `flows/answer_inbound.py`).
Outcome = Literal[
    "sent",
    "scheduled",
    "rejected",
    "cancelled",
    "failed",
    "timed_out",
    "pending",
    "skipped",
    "escalated",
]
_OUTCOMES: dict[str, Outcome] = {
    "sent": "sent",
    "scheduled": "scheduled",
    "rejected": "rejected",
    "cancelled": "cancelled",
    "send_failed": "failed",
    "spam_flagged": "failed",
    "spam_quarantined": "failed",
}

#: The decision `is_transient` made last in this context, read back by `_RetryDelays` when
#: Prefect (right after asking the condition) picks the delay of the retry.
_last_decision: ContextVar[RetryDecision] = ContextVar("multimail_last_decision")


def is_transient(task: Task[..., object], task_run: TaskRun, state: State[object]) -> bool:
    """Prefect retry condition: retry only what may succeed later (`retry_policy.classify`).

    It never sleeps: a 429's Retry-After becomes the delay of the `AwaitingRetry` state Prefect
    sets next (see `_RetryDelays`), so the run shows as waiting and the log states the real wait.
    """
    try:
        state.result()
    except Exception as error:
        decision = classify(
            error, retry_after_cap_seconds=current_settings().retry_after_cap_seconds
        )
        _last_decision.set(decision)
        return decision.retryable
    return False


class _RetryDelays(list[float]):
    """`retry_delay_seconds` of every mail task, computed when Prefect asks for one.

    Prefect reads `task.retry_delay_seconds[attempt]` right after the retry condition said yes,
    so the delay can follow the failure (a 429's Retry-After) and the settings of the moment
    (backoff from settings.toml). The stored values are placeholders that only give the length
    Prefect checks (at most 50 retries).
    """

    def __init__(self) -> None:
        super().__init__([0.0] * 50)

    @overload
    def __getitem__(self, index: SupportsIndex) -> float: ...
    @overload
    def __getitem__(self, index: slice) -> list[float]: ...
    def __getitem__(self, index: SupportsIndex | slice) -> float | list[float]:
        if isinstance(index, slice):
            return list(super().__getitem__(index))
        decision = _last_decision.get(RetryDecision(True))
        return retry_delay(decision, int(index), current_settings().retry_backoff_seconds)


#: A `retries` value that means "as settings.toml says when the task runs".
_FROM_SETTINGS = -1


class MailTask(Task[P, R]):
    """A Prefect task whose retry count is read from the settings when it runs."""

    _retries: int = _FROM_SETTINGS

    @property
    def retries(self) -> int:
        if self._retries == _FROM_SETTINGS:
            return current_settings().retries
        return self._retries

    @retries.setter
    def retries(self, value: int) -> None:
        self._retries = value


def _retry_policy() -> dict[str, Any]:
    """The options every mail task shares: retries, their delays and their condition."""
    return {
        "retries": _FROM_SETTINGS,
        "retry_delay_seconds": _RetryDelays(),
        "retry_condition_fn": is_transient,
    }


def mail_task(fn: Callable[P, R], task_class: type[MailTask[P, R]] = MailTask) -> Task[P, R]:
    """Decorate `fn` as a MultiMail task: shared retry policy, never cached, nothing persisted."""
    return task_class(fn=fn, cache_policy=NO_CACHE, persist_result=False, **_retry_policy())


def cached_mail_task(
    cache_key_fn: Callable[[TaskRunContext, dict[str, Any]], str], expiration: timedelta
) -> Callable[[Callable[P, R]], Task[P, R]]:
    """Decorate a task with the mail tasks' retry policy whose result is kept and reused for
    `expiration` under `cache_key_fn`'s key: for work that must happen once per email whatever
    reruns it (drafting a reply, billed per model request), never for a status read."""

    def decorate(fn: Callable[P, R]) -> Task[P, R]:
        return MailTask(
            fn=fn,
            cache_key_fn=cache_key_fn,
            cache_expiration=expiration,
            persist_result=True,
            **_retry_policy(),
        )

    return decorate


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


@mail_task
def send_email(
    audience: str, to: list[str], subject: str, markdown: str, idempotency_key: str
) -> SendResult:
    """Send a new email from the audience's mailbox (held for approval if its mode says so).

    A repeat of the same `idempotency_key` (a retry after a lost answer) returns the original
    message. A 409 "Duplicate" can then only be about a *different* message with the same
    content; it fails at once with what to do, and nothing else is claimed as this send.
    """
    client = shared_client()
    return client.send(
        _mailbox(client, audience),
        to=to,
        subject=subject,
        markdown=markdown,
        idempotency_key=idempotency_key,
    )


@mail_task
def reply_to_email(audience: str, email_id: str, markdown: str, idempotency_key: str) -> SendResult:
    """Reply in the thread of `email_id`; recipients and subject come from the original.

    Like `send_email`: a repeated key returns the original reply, a 409 fails at once.
    """
    client = shared_client()
    return client.reply(
        _mailbox(client, audience), email_id, markdown=markdown, idempotency_key=idempotency_key
    )


@mail_task
def own_addresses() -> frozenset[str]:
    """The addresses of this project's mailboxes (every audience's), lower case."""
    local_parts = {audience.mailbox for audience in current_settings().audiences.values()}
    return frozenset(
        mailbox.address.lower()
        for mailbox in shared_client().list_mailboxes()
        if mailbox.local_part in local_parts
    )


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
            return _delivery(email)  # still `pending`: it may yet be sent
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
    when a human approves (`sent`) or rejects (`rejected`), or someone cancels it. When the
    time is up it returns `pending` (not an error, so never retried): the email may still be
    sent, and only a cancel MultiMail accepts makes it `timed_out` (`approvals.await_delivery`
    does that). The task holds its worker while it waits: fine for minutes; for hours,
    suspend the flow instead (`approvals.await_delivery(..., wait="suspend")`).
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
def check_delivery(
    audience: str, email_id: str, scan_timeout_seconds: float | None = None
) -> Delivery:
    """Where the email stands once MultiMail's scan is done (waiting at most the scan timeout,
    `scan_timeout_seconds` in settings.toml); `pending` while it may still be sent: a human
    must decide, or the scan is slower than the timeout."""
    limit = current_settings().scan_timeout_seconds
    if scan_timeout_seconds is not None:
        limit = scan_timeout_seconds
    return _poll(
        audience,
        email_id,
        waiting=frozenset({"pending_scan"}),
        timeout_seconds=limit,
        poll_seconds=0.2,
        max_poll_seconds=2.0,
    )
