"""The Prefect Cloud path: prefect/cloud-webhook.json turns MultiMail's webhook into an event
about ids only, and the trigger in prefect/cloud-trigger.yaml starts one answer-inbound run per
email, however often the webhook is delivered.

Prefect Cloud renders a webhook template as Jinja over the request (`body`, `headers`); these
tests render it the same way against MultiMail deliveries (one captured from the fake, one
shaped like the contract's published example), then install the trigger on the local test
server and post the events there.
"""

from __future__ import annotations

import asyncio
import json
import re
import textwrap
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML comes with Prefect, without stubs
from jinja2.sandbox import ImmutableSandboxedEnvironment
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.events import Event
from prefect.events.clients import get_events_client
from prefect.events.filters import EventFilter, EventNameFilter
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
from prefect.events.schemas.events import ResourceSpecification
from pydantic import TypeAdapter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..client import MultiMailClient
from ..fake import FakeMultiMail
from ..provision import MailboxState
from ..serving import BackgroundServer
from .inbound_support import answer_deployment, runs_answering

__all__ = ["answer_deployment"]

PROJECT = Path(__file__).resolve().parents[3]
WEBHOOK_TEMPLATE = PROJECT / "prefect" / "cloud-webhook.json"
TRIGGER_FILE = PROJECT / "prefect" / "cloud-trigger.yaml"
JINJA = ImmutableSandboxedEnvironment()


def published_example(email_id: str, delivery_id: str, direction: str = "inbound") -> bytes:
    """A delivery shaped like MultiMail's published example: no body, no tags."""
    return json.dumps(
        {
            "event": "message.received",
            "id": delivery_id,
            "timestamp": "2026-11-25T10:00:00Z",
            "data": {
                "email_id": email_id,
                "mailbox_id": "01JMAILBOX0000000000000000",
                "thread_id": "01JTHREAD00000000000000000",
                "from": "ada@example.com",
                "to": ["support@acme.multimail.dev"],
                "subject": "Where is my order?",
                "direction": direction,
                "has_attachments": False,
            },
        }
    ).encode()


def render(body: bytes) -> Event:
    """What Prefect Cloud makes of one delivery: the rendered template, as an event."""
    template = JINJA.from_string(WEBHOOK_TEMPLATE.read_text())
    headers = {"content-type": "application/json", "x-multimail-signature": "sha256=..."}
    rendered = template.render(body=json.loads(body), headers=headers)
    return Event.model_validate(json.loads(rendered))


def trigger() -> DeploymentEventTrigger:
    (spec,) = yaml.safe_load(TRIGGER_FILE.read_text())["triggers"]
    return TypeAdapter(DeploymentEventTrigger).validate_python(spec)


@pytest.fixture
def captured(
    fake: FakeMultiMail, client: MultiMailClient, approving_operator: object
) -> Iterator[list[bytes]]:
    """Raw bodies of the fake's `message.received` deliveries to a capturing endpoint."""
    bodies: list[bytes] = []

    async def capture(request: Request) -> Response:
        bodies.append(await request.body())
        return Response(status_code=204)

    app = Starlette(routes=[Route("/hook", capture, methods=["POST"])])
    with BackgroundServer(app, name="capture") as server:
        client.create_webhook(f"{server.base_url}/hook", ["message.received"])
        yield bodies


def test_a_delivery_becomes_an_event_about_ids_only(
    mail_env: list[MailboxState], fake: FakeMultiMail, captured: list[bytes]
) -> None:
    email_id = fake.deliver_inbound(
        to=mail_env[0].address, sender="ada@example.com", subject="Invoice", markdown="Body text"
    )
    deadline = time.monotonic() + 10
    while not captured and time.monotonic() < deadline:
        time.sleep(0.02)
    samples = {
        email_id: captured[0],
        "01JPUBLISHED00000000000000": published_example(
            "01JPUBLISHED00000000000000", "01JDELIVERY00000000000000A"
        ),
    }
    for sample_id, body in samples.items():
        event = render(body)
        assert event.event == "multimail.message.received"
        assert event.resource.id == f"multimail.email.{sample_id}"
        assert event.resource["multimail.email.id"] == sample_id
        assert event.resource["multimail.direction"] == "inbound"
        text = json.dumps(event.model_dump(mode="json"))
        for private in ("@", "Invoice", "Body text", "Where is my order?"):
            assert private not in text


def test_the_trigger_matches_inbound_mail_once_per_email_for_24_hours() -> None:
    spec = trigger()
    assert spec.expect == {"multimail.message.received"}
    assert spec.for_each == {"prefect.resource.id"}
    assert spec.within == timedelta(hours=24)
    assert spec.posture == "Reactive"
    assert spec.threshold == 1
    inbound = render(published_example("01JINBOUND0000000000000000", "01JD1"))
    outbound = render(published_example("01JOUTBOUND000000000000000", "01JD2", "outbound"))
    assert isinstance(spec.match, ResourceSpecification)
    assert spec.match.includes([inbound.resource])
    assert not spec.match.includes([outbound.resource])
    assert spec.parameters is not None
    parameters: dict[str, Any] = {
        name: JINJA.from_string(value).render(event=inbound)
        for name, value in spec.parameters.items()
    }
    assert parameters == {"email_id": "01JINBOUND0000000000000000"}


async def _install(deployment_id: UUID) -> UUID:
    spec = trigger()
    spec.set_deployment_id(deployment_id)
    async with get_client() as client:
        return await client.create_automation(spec.as_automation())


async def _remove(automation_id: UUID) -> None:
    async with get_client() as client:
        await client.delete_automation(automation_id)


async def _emit(events: list[Event]) -> None:
    async with get_events_client(checkpoint_every=1) as client:
        for event in events:
            await client.emit(event)


async def _firings() -> list[str]:
    """Email ids of the events the automation fired for (`prefect.automation.triggered`)."""
    async with get_client() as client:
        wanted = EventFilter(event=EventNameFilter(name=["prefect.automation.triggered"]))
        page = await client.read_events(filter=wanted, limit=50)
        events = list(page.events)
        while page.next_page:
            page = await client.read_events_page(str(page.next_page))
            events.extend(page.events)
    triggering = [e.payload.get("triggering_event") or {} for e in events]
    return [t.get("resource", {}).get("multimail.email.id", "") for t in triggering]


def _wait_for_firings(email_id: str, timeout: float = 60.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        fired = asyncio.run(_firings())
        if email_id in fired or time.monotonic() > deadline:
            return fired
        time.sleep(0.2)


def _wait_for_run(
    deployment_id: UUID, email_id: str, *, resend: bool = False, timeout: float = 60.0
) -> list[FlowRun]:
    deadline = time.monotonic() + timeout
    while True:
        if resend:
            asyncio.run(_emit([render(published_example(email_id, "01JDELIVERY0000000PROBE"))]))
        for _ in range(10):
            runs = runs_answering(deployment_id, email_id)
            if runs or time.monotonic() > deadline:
                return runs
            time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_two_deliveries_of_one_email_start_one_run_on_the_server(
    answer_deployment: UUID,
) -> None:
    twice, once, probe = (
        "01JTWICE000000000000000000",
        "01JONCE0000000000000000000",
        "01JPROBE000000000000000000",
    )
    automation = asyncio.run(_install(answer_deployment))
    try:
        # The server's trigger service picks a new automation up within a few seconds; until
        # the probe's run appears, events are re-sent (each with a new event id).
        _wait_for_run(answer_deployment, probe, resend=True)
        asyncio.run(
            _emit(
                [
                    render(published_example(twice, "01JDELIVERY00000000000000A")),
                    render(published_example(twice, "01JDELIVERY00000000000000B")),
                    render(published_example(once, "01JDELIVERY00000000000000C")),
                ]
            )
        )
        # The trigger evaluates events in order: once it fired for the last one, both
        # deliveries of the first email have been evaluated.
        fired = _wait_for_firings(once)
        assert fired.count(twice) == 1
        (run,) = _wait_for_run(answer_deployment, once)
        assert run.parameters == {"email_id": once}
        (first,) = _wait_for_run(answer_deployment, twice)
        assert first.parameters == {"email_id": twice}
    finally:
        asyncio.run(_remove(automation))


def test_prefect_yaml_carries_the_same_trigger_commented_out() -> None:
    """Uncommenting the trigger under answer-inbound in prefect.yaml gives this very trigger."""
    lines = (PROJECT / "prefect.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "# triggers:")
    block = []
    for line in lines[start:]:
        if not line.lstrip().startswith("#"):
            break
        block.append(re.sub(r"^(\s*)# ?", r"\1", line))
    uncommented = yaml.safe_load(textwrap.dedent("\n".join(block)))
    assert uncommented == yaml.safe_load(TRIGGER_FILE.read_text())
