"""`send_many`: many messages in one task run, sent concurrently over the one pooled client.

Why a task of its own: a task run costs a few milliseconds of Prefect bookkeeping, more than a
send to MultiMail takes, and mapping `send_email` over a list adds contention on a local SQLite
Prefect server. One task run for the whole list leaves MultiMail as the limit.

Why threads: measured against the fake, a few threads sharing the sync pooled client send as
fast as asyncio with an `httpx.AsyncClient` (the server is the limit either way), and need no
second client. Each message is retried on its own by `retry_policy.classify`, the rule of every
mail task; its idempotency key makes any repeat (a retry here, a retry of the task, a rerun of
the flow) return the original message instead of sending a second one.

Why the messages are passed `opaque`: before a task runs, Prefect walks every parameter, into
each field of each model, looking for futures to wait for (and again to record the run's
inputs): about 0.2 ms a message, 10-15% of a bulk send's time. A list of messages holds none,
so `send_many` hands Prefect the list as one value (its `.submit` and `.map` each chunk).

Its pace does not depend on what ran before it in the process (it reuses the same client, pool
and settings; bench/throughput.py runs it after each other pattern). What a `.map` of single
sends leaves behind is work for the Prefect server: it records each task run after it ends (on
a local SQLite server, about 25 ms of its CPU per task run, measured on 2 cores), and until it
is done it may refuse the *next* flow run with "database is locked", which Prefect's client
retries after 2, 4 and 8 s. One `send_many` for the whole list leaves one task run to record.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

import httpx
from prefect import Task
from prefect.utilities.annotations import BaseAnnotation, opaque
from pydantic import BaseModel, ConfigDict, Field

from ..multimail.client import MultiMailClient, MultiMailError
from ..multimail.models import SendResult
from ..settings import Settings
from .connection import current_settings, shared_client
from .retry_policy import classify, retry_delay
from .tasks import MailTask, mail_task

P = ParamSpec("P")
R = TypeVar("R")

#: Messages in flight at once. The fake and MultiMail answer one send in a few milliseconds;
#: a handful of connections keeps the server busy, more only queue behind it.
DEFAULT_CONCURRENCY = 8

#: Failures named one by one in the task's log; the rest are counted.
_LOGGED_FAILURES = 10


class OutgoingEmail(BaseModel):
    """One message for `send_many`: the audience that sends it, to whom, what, and its key.

    Build the key with `tasks.message_key` from what the message *is* (a customer id plus a
    campaign, say), so that sending the same list again sends nothing twice.
    """

    model_config = ConfigDict(frozen=True)

    audience: str
    to: list[str] = Field(min_length=1)
    subject: str
    markdown: str
    idempotency_key: str = Field(min_length=1)
    cc: list[str] | None = None
    bcc: list[str] | None = None


class SendOutcome(BaseModel):
    """What became of one message: the email MultiMail accepted, or why it was not sent."""

    model_config = ConfigDict(frozen=True)

    idempotency_key: str
    #: The accepted email (`idempotent` when MultiMail had it already from an earlier call).
    result: SendResult | None = None
    #: Why it was not sent; the message says what to fix where a person must act.
    error: str | None = None
    #: The error was transient and the retries ran out: sending again later (same key) may work.
    retryable: bool = False
    attempts: int

    @property
    def sent(self) -> bool:
        return self.result is not None


def _check(messages: Sequence[OutgoingEmail], settings: Settings) -> None:
    """Refuse, before anything is sent, a list no retry could make right."""
    repeated = sorted(
        key for key, n in Counter(m.idempotency_key for m in messages).items() if n > 1
    )
    if repeated:
        raise ValueError(
            f"idempotency keys must differ between messages (MultiMail would answer the second "
            f"with the first); repeated: {', '.join(repeated[:5])}"
        )
    for audience in {m.audience for m in messages}:
        settings.audience(audience)  # raises KeyError naming the audiences that exist


def _describe(error: Exception) -> str:
    if isinstance(error, MultiMailError):
        return str(error)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _send_one(client: MultiMailClient, settings: Settings, message: OutgoingEmail) -> SendOutcome:
    """Send one message, retrying what may succeed later; never raises for MultiMail's answer."""
    retry = 0
    while True:
        try:
            mailbox = client.mailbox_id(settings.audience(message.audience).mailbox)
            result = client.send(
                mailbox,
                to=message.to,
                subject=message.subject,
                markdown=message.markdown,
                idempotency_key=message.idempotency_key,
                cc=message.cc,
                bcc=message.bcc,
            )
            return SendOutcome(
                idempotency_key=message.idempotency_key, result=result, attempts=retry + 1
            )
        except (MultiMailError, httpx.HTTPError) as error:
            decision = classify(error, retry_after_cap_seconds=settings.retry_after_cap_seconds)
            if not decision.retryable or retry >= settings.retries:
                return SendOutcome(
                    idempotency_key=message.idempotency_key,
                    error=_describe(error),
                    retryable=decision.retryable,
                    attempts=retry + 1,
                )
            time.sleep(retry_delay(decision, retry, settings.retry_backoff_seconds))
            retry += 1


def _log(outcomes: list[SendOutcome]) -> None:
    """One summary line in the task run's log, plus the first failures (outside a run: none)."""
    from prefect import get_run_logger
    from prefect.context import TaskRunContext

    if TaskRunContext.get() is None:
        return
    logger = get_run_logger()
    failed = [o for o in outcomes if not o.sent]
    logger.info("Sent %d of %d message(s)", len(outcomes) - len(failed), len(outcomes))
    for outcome in failed[:_LOGGED_FAILURES]:
        kind = "transient, retries ran out" if outcome.retryable else "permanent"
        logger.warning("Not sent %s (%s): %s", outcome.idempotency_key, kind, outcome.error)
    if len(failed) > _LOGGED_FAILURES:
        logger.warning("... and %d more not sent", len(failed) - _LOGGED_FAILURES)


def _as_one_value(value: Any) -> Any:
    """`value` for Prefect to resolve as a whole, without walking into it (kept if annotated)."""
    return value if isinstance(value, BaseAnnotation) else opaque(value)


def _each_as_one_value(chunks: Any) -> Any:
    """For `.map`: each chunk as one value (an `unmapped(...)` list is kept as it is)."""
    if isinstance(chunks, BaseAnnotation):
        return chunks
    return [_as_one_value(chunk) for chunk in chunks]


def _with_messages(
    args: tuple[Any, ...], kwargs: dict[str, Any], wrap: Callable[[Any], Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The call's arguments with `messages` (the first, or by name) passed through `wrap`."""
    if args:
        return (wrap(args[0]), *args[1:]), kwargs
    if "messages" in kwargs:
        return args, {**kwargs, "messages": wrap(kwargs["messages"])}
    return args, kwargs


class MessagesTask(MailTask[P, R]):
    """A mail task whose first parameter, `messages`, is a list of plain data, never futures."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = _with_messages(args, kwargs, _as_one_value)
        return super().__call__(*args, **kwargs)

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = _with_messages(args, kwargs, _as_one_value)
        return super().submit(*args, **kwargs)

    def map(self, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = _with_messages(args, kwargs, _each_as_one_value)
        return super().map(*args, **kwargs)


def _messages_task(fn: Callable[P, R]) -> Task[P, R]:
    return mail_task(fn, task_class=MessagesTask)


@_messages_task
def send_many(
    messages: Sequence[OutgoingEmail], max_concurrency: int = DEFAULT_CONCURRENCY
) -> list[SendOutcome]:
    """Send every message, at most `max_concurrency` at a time; one outcome each, in order.

    Each message is retried on its own (connection errors, timeouts, 429 after its Retry-After,
    5xx; `retries` and backoff from settings.toml) and one message's failure never stops or
    repeats another. Nothing is raised for a message MultiMail refused: look at the outcomes
    (`sent`, `error`, `retryable`). Calling it again with the same messages is safe: what was
    sent comes back as `idempotent` results, and only the rest is sent.
    """
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency must be at least 1 (got {max_concurrency})")
    settings = current_settings()
    _check(messages, settings)
    if not messages:
        return []
    client = shared_client()
    workers = min(max_concurrency, len(messages))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="send-many") as pool:
        outcomes = list(pool.map(lambda m: _send_one(client, settings, m), messages))
    _log(outcomes)
    return outcomes
