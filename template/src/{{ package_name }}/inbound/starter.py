"""Inbound mail starts exactly one `answer-inbound` flow run per message.

The webhook receiver hands every verified `message.received` delivery to `InboundStarter`. It
checks the direction and the mailbox (only inbound mail to an audience's mailbox, never mail
one of the project's own mailboxes sent), then asks Prefect for a run of the answer-inbound
deployment with the idempotency key `answer-inbound:<email id>`. Prefect stores that key in its
database, so a redelivery, a second delivery id for the same email, or the `reconcile-inbound`
flow all land on the same run. The receiver answers 2xx only once Prefect recorded the run, and
503 when Prefect cannot be reached, so MultiMail retries the delivery.

Which audience a mailbox belongs to comes from settings.toml (`[audiences.<name>] mailbox`),
matched against the account's mailboxes; never from the delivery or a flow.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from email.utils import parseaddr
from typing import Any, Literal

import anyio
import httpx
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import arun_deployment
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from starlette.concurrency import run_in_threadpool

from ..multimail.models import Mailbox
from ..namespace import ANSWER_INBOUND, PROJECT_TAG, deployment_name
from ..settings import OversightMode, Settings

#: The deployment that answers one inbound email (`<flow name>/<deployment name>`): the one in
#: prefect.yaml. Under `serve` it is `deployment_name(ANSWER_INBOUND, served=True)`.
ANSWER_INBOUND_DEPLOYMENT = deployment_name(ANSWER_INBOUND)
#: Webhook events that announce new inbound mail (`email.received` is MultiMail's alias).
INBOUND_EVENTS = frozenset({"message.received", "email.received"})
#: Tags on every run started for inbound mail.
RUN_TAGS = ("multimail", PROJECT_TAG, "inbound")

Verdict = Literal["answer", "not_inbound", "not_an_audience", "from_own_mailbox"]


#: The name of that run (the flow's `flow_run_name`), given when the run is created, so the UI
#: and `prefect flow-run ls` show which email a run answers before a worker picks it up.
ANSWER_RUN_NAME = "answer-{email_id}"


def run_key(email_id: str) -> str:
    """The idempotency key of the one run that answers `email_id` (webhook and reconcile)."""
    return f"answer-inbound:{email_id}"


class MailboxDirectory:
    """The account's mailboxes, seen through settings.toml: which audience owns which mailbox.

    Read-only audiences are left out: nothing can answer from their mailboxes. The account's
    list is read on first use and again, at most every `refresh_seconds`, when an unknown
    mailbox id or a new address turns up (a mailbox created after the receiver started).
    """

    def __init__(
        self,
        settings: Settings,
        list_mailboxes: Callable[[], list[Mailbox]],
        *,
        refresh_seconds: float = 60.0,
    ) -> None:
        self._by_local_part = {
            audience.mailbox: name
            for name, audience in settings.audiences.items()
            if audience.oversight_mode != OversightMode.READ_ONLY
        }
        self._list = list_mailboxes
        self._refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._read_at: float | None = None
        self._audiences: dict[str, str] = {}
        self._addresses: frozenset[str] = frozenset()

    def _refresh(self, *, force: bool) -> None:
        with self._lock:
            fresh = self._read_at is not None and (
                time.monotonic() - self._read_at < self._refresh_seconds
            )
            if self._read_at is not None and (fresh or not force):
                return
            mailboxes = self._list()
            self._audiences = {
                m.id: self._by_local_part[m.local_part]
                for m in mailboxes
                if m.local_part in self._by_local_part
            }
            self._addresses = frozenset(m.address.lower() for m in mailboxes)
            self._read_at = time.monotonic()

    def audience_of(self, mailbox_id: str) -> str | None:
        """The audience whose mailbox has id `mailbox_id`, or None."""
        self._refresh(force=False)
        if mailbox_id not in self._audiences:
            self._refresh(force=True)
        return self._audiences.get(mailbox_id)

    def is_own_address(self, address: str) -> bool:
        """Whether `address` is one of the account's own mailboxes (mail between them)."""
        self._refresh(force=False)
        return parseaddr(address)[1].lower() in self._addresses

    def verdict(self, *, mailbox_id: str, direction: str, sender: str) -> tuple[Verdict, str]:
        """Whether an email is to be answered (inbound, to an audience, from outside), and by
        which audience."""
        if direction != "inbound":
            return "not_inbound", ""
        audience = self.audience_of(mailbox_id)
        if audience is None:
            return "not_an_audience", ""
        if self.is_own_address(sender):
            return "from_own_mailbox", audience
        return "answer", audience


async def start_answer(
    client: PrefectClient,
    email_id: str,
    audience: str,
    *,
    deployment: str = ANSWER_INBOUND_DEPLOYMENT,
    tags: tuple[str, ...] = RUN_TAGS,
) -> FlowRun:
    """Create (or find) the one run of `deployment` that answers `email_id`; do not wait for it.

    Parameters are ids and names only: the flow re-reads the email with the real key.
    """
    return await arun_deployment(
        deployment,
        client=client,
        parameters={"email_id": email_id, "audience": audience},
        idempotency_key=run_key(email_id),
        flow_run_name=ANSWER_RUN_NAME.format(email_id=email_id),
        tags=list(tags),
        as_subflow=False,
        timeout=0,
    )


#: What the receiver answers MultiMail: an HTTP status and a small JSON body.
Answer = tuple[int, dict[str, Any]]
PrefectClientFactory = Callable[[], PrefectClient]


class InboundStarter:
    """Turns one verified `message.received` delivery into exactly one flow run.

    It is a receiver event handler: `create_receiver(..., handlers=starter.handlers())`.
    """

    def __init__(
        self,
        directory: MailboxDirectory,
        *,
        deployment: str = ANSWER_INBOUND_DEPLOYMENT,
        prefect_client: PrefectClientFactory = get_client,
        prefect_timeout_seconds: float = 10.0,
    ) -> None:
        self.directory = directory
        self.deployment = deployment
        self._prefect_client = prefect_client
        self._timeout = prefect_timeout_seconds

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[Answer]]]:
        """The receiver's handlers for the inbound events, all served by this starter."""
        return dict.fromkeys(INBOUND_EVENTS, self)

    async def __call__(self, data: Mapping[str, Any]) -> Answer:
        email_id = str(data.get("email_id") or "")
        mailbox_id = str(data.get("mailbox_id") or "")
        if not email_id or not mailbox_id:
            return (400, {"error": "message.received without email_id/mailbox_id"})
        try:
            verdict, audience = await run_in_threadpool(
                self.directory.verdict,
                mailbox_id=mailbox_id,
                direction=str(data.get("direction") or ""),
                sender=str(data.get("from") or data.get("from_address") or ""),
            )
        except Exception as error:  # MultiMail unreachable: the mailbox list is needed first
            return (503, {"error": f"cannot read the account's mailboxes: {type(error).__name__}"})
        if verdict != "answer":
            return (200, {"status": "ignored", "reason": verdict})
        return await self._start(email_id, audience)

    async def _start(self, email_id: str, audience: str) -> Answer:
        # A fresh client per delivery: a long-lived one retries refused connections with
        # backoff once it has connected, which would hold the delivery past MultiMail's timeout.
        try:
            with anyio.fail_after(self._timeout):
                async with self._prefect_client() as client:
                    run = await start_answer(client, email_id, audience, deployment=self.deployment)
        except ObjectNotFound:
            return (
                503,
                {
                    "error": f"no deployment {self.deployment!r} on the Prefect server: deploy "
                    "it (`prefect deploy --all`), or start the receiver with --served to use "
                    "`serve`'s"
                },
            )
        except (httpx.HTTPError, PrefectHTTPStatusError, TimeoutError, OSError) as error:
            return (
                503,
                {
                    "error": "the Prefect API could not record the run "
                    f"({type(error).__name__}); check PREFECT_API_URL. MultiMail will retry"
                },
            )
        return (
            202,
            {
                "status": "started",
                "email_id": email_id,
                "audience": audience,
                "flow_run_id": str(run.id),
            },
        )
