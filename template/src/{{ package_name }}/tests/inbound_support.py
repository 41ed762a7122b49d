"""What the inbound, reconcile and Cloud-trigger tests share: the answer-inbound deployment on
the session's Prefect test server, a receiver subscribed to the fake's webhooks, and a way to
count the runs Prefect recorded for an email.

The deployment has no work pool: a run created for it stays Scheduled, which is all these tests
need (that exactly one run exists, with the right parameters). The full answer is tested by
calling the flow itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterIdempotencyKey,
)
from prefect.client.schemas.objects import FlowRun
from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from ..fake import FakeMultiMail
from ..fake.background import BackgroundServer
from ..flows.answer_inbound import answer_inbound
from ..inbound.receiver import create_receiver
from ..inbound.starter import InboundStarter, MailboxDirectory, run_key
from ..mail import connection
from ..multimail.client import MultiMailClient
from ..namespace import ANSWER_INBOUND, deployment_name

DEPLOYMENT_NAME = ANSWER_INBOUND
DEPLOYMENT = deployment_name(ANSWER_INBOUND)
WEBHOOK_PATH = "/multimail/webhook"


@pytest.fixture(scope="session")
def answer_deployment(prefect_server: None) -> UUID:
    """answer-inbound registered on the test server under the name prefect.yaml gives it."""

    async def register() -> UUID:
        deployment = await answer_inbound.ato_deployment(name=DEPLOYMENT_NAME)
        return await deployment.aapply()

    return asyncio.run(register())


async def _runs(deployment_id: UUID, email_id: str) -> list[FlowRun]:
    async with get_client() as client:
        return await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(
                idempotency_key=FlowRunFilterIdempotencyKey(any_=[run_key(email_id)])
            ),
        )


async def _all_runs(deployment_id: UUID) -> list[FlowRun]:
    """Every run of the deployment, whatever its key (paged: the server answers 200 at most)."""
    runs: list[FlowRun] = []
    async with get_client() as client:
        while True:
            page = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                offset=len(runs),
                limit=200,
            )
            runs.extend(page)
            if len(page) < 200:
                return runs


def runs_for(deployment_id: UUID, email_id: str) -> list[FlowRun]:
    """The runs of the deployment whose idempotency key is the one for `email_id`."""
    return asyncio.run(_runs(deployment_id, email_id))


def runs_answering(deployment_id: UUID, email_id: str) -> list[FlowRun]:
    """Every run of the deployment with `email_id` as parameter, whatever its key."""
    runs = asyncio.run(_all_runs(deployment_id))
    return [run for run in runs if run.parameters.get("email_id") == email_id]


class LateApp:
    """An ASGI app set after the server is bound: the receiver needs the signing secret, which
    MultiMail hands out only when subscribing the receiver's URL."""

    def __init__(self) -> None:
        self.app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.app is not None
        await self.app(scope, receive, send)


class Receiver:
    """The project's receiver on loopback, subscribed to the fake's `message.received`."""

    def __init__(self, fake: FakeMultiMail, client: MultiMailClient, key: SecretStr) -> None:
        self.fake = fake
        self.client = client
        self._key = key
        self._late = LateApp()
        self._server = BackgroundServer(self._late, name="receiver").start()
        self.url = self._server.base_url + WEBHOOK_PATH
        subscription = client.create_webhook(self.url, ["message.received"])
        assert subscription.signing_secret is not None
        self.secret = subscription.signing_secret
        self.directory = MailboxDirectory(connection.current_settings(), client.list_mailboxes)
        self._late.app = self.app()

    def app(self, deployment: str = DEPLOYMENT, **starter: Any) -> ASGIApp:
        """A receiver app as `receiver serve` builds it (a fresh one forgets delivery ids)."""
        starter_ = InboundStarter(self.directory, deployment=deployment, **starter)
        return create_receiver(
            self.secret, read_tags=self.client.get_tags, handlers=starter_.handlers()
        )

    def restart(self, deployment: str = DEPLOYMENT, **starter: Any) -> None:
        """Replace the app, as a restarted receiver would be: no delivery id remembered."""
        self._late.app = self.app(deployment, **starter)

    def stop(self) -> None:
        self._server.stop()

    def post(self, body: bytes, signature: str | None = None) -> httpx.Response:
        from ..fake import sign

        headers = {
            "Content-Type": "application/json",
            "X-MultiMail-Signature": signature or sign(self.secret.get_secret_value(), body),
        }
        return httpx.post(self.url, content=body, headers=headers, timeout=30)

    def wait_delivered(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """The fake's deliveries to this receiver once `count` of them are settled."""
        deadline = time.monotonic() + timeout
        while True:
            page = httpx.get(
                f"{self.fake.base_url}/v1/webhook-deliveries",
                params={"limit": 100},
                headers={"Authorization": f"Bearer {self._key.get_secret_value()}"},
            ).json()
            mine = [d for d in page["deliveries"] if d["url"] == self.url]
            settled = [d for d in mine if d["status"] in ("delivered", "failed")]
            if len(settled) >= count or time.monotonic() > deadline:
                return settled
            time.sleep(0.05)


def wait_until_released(operator_client: MultiMailClient, timeout: float = 30.0) -> None:
    """Wait until no inbound email is held for approval (gated_all mailboxes hold it until the
    `approving_operator` lets it in; only then does MultiMail announce it)."""
    deadline = time.monotonic() + timeout
    while any(item.direction == "inbound" for item in operator_client.list_pending()):
        assert time.monotonic() < deadline, "inbound mail still held for approval"
        time.sleep(0.05)


@pytest.fixture
def receiver(
    mail_env: object,
    fake: FakeMultiMail,
    client: MultiMailClient,
    app_key: SecretStr,
    approving_operator: object,
) -> Iterator[Receiver]:
    """The receiver, with a human approving what a gated_all mailbox holds."""
    running = Receiver(fake, client, app_key)
    yield running
    running.stop()
