"""The Prefect Cloud path: prefect/cloud-webhook.json turns MultiMail's webhooks into events about
ids, labelled with this project, and the two automations of prefect/cloud-trigger.yaml run the
receive-webhook deployment (flows/receive_webhook.py) for inbound mail and for decisions; that run
starts the answer run exactly as `receiver serve` does, or resumes the runs waiting for the
decision.

Prefect Cloud renders a webhook template as Jinja over the request (`body`, `headers`); these
tests render it the same way against MultiMail deliveries (one captured from the fake, others
shaped like the contract's published example) and validate the result, and the trigger file,
with Prefect's own models. Automations, events and their RunDeployment action exist in Prefect
OSS too: the slow tests install the automations on the local test server as `prefect deploy
--trigger` does, post the events Cloud would make, and run the receive-webhook runs the
automations started, in this process.
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
from uuid import UUID, uuid4

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML comes with Prefect, without stubs
from jinja2.sandbox import ImmutableSandboxedEnvironment
from prefect.cli.deploy._triggers import (
    _create_deployment_triggers,
    _gather_deployment_trigger_definitions,
    _initialize_deployment_triggers,
)
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, State
from prefect.events import DeploymentTriggerTypes, Event
from prefect.events.actions import RunDeployment
from prefect.events.clients import get_events_client
from prefect.events.filters import EventFilter, EventNameFilter
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
from prefect.events.schemas.events import ResourceSpecification
from prefect.flow_engine import run_flow_async
from prefect.states import Suspended
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...fake import FakeMultiMail
from ...fake.background import BackgroundServer
from ...flows.receive_webhook import RETRIES, NotActedOnYet, receive_webhook
from ...inbound.answer_run import find_answer_run
from ...inbound.starter import ANSWER_RUN_NAME, RUN_TAGS, start_answer
from ...mail import connection
from ...multimail.client import MultiMailClient
from ...multimail.provision import MailboxState
from ...namespace import PROJECT, RECEIVE_WEBHOOK
from ...ops.serve import deployment_config, load_flow
from ...oversight.approvals import pause_key, waiter_tag
from ..inbound_support import answer_deployment, runs_answering, runs_for

__all__ = ["answer_deployment"]

PROJECT_DIR = Path(__file__).resolve().parents[4]
WEBHOOK_TEMPLATE = PROJECT_DIR / "prefect" / "cloud-webhook.json"
TRIGGER_FILE = PROJECT_DIR / "prefect" / "cloud-trigger.yaml"
JINJA = ImmutableSandboxedEnvironment()
MAILBOX = "01JMAILBOX0000000000000000"
#: Another project on the same workspace: its webhook labels its events with its own name.
OTHER_PROJECT = f"other-{PROJECT}"[:63]


def delivery(
    email_id: str,
    delivery_id: str,
    event: str = "message.received",
    *,
    mailbox_id: str = MAILBOX,
    direction: str = "inbound",
) -> bytes:
    """A delivery shaped like MultiMail's published example: no body, no tags."""
    return json.dumps(
        {
            "event": event,
            "id": delivery_id,
            "timestamp": "2026-11-25T10:00:00Z",
            "data": {
                "email_id": email_id,
                "mailbox_id": mailbox_id,
                "thread_id": "01JTHREAD00000000000000000",
                "from": "ada@example.com",
                "to": ["support@acme.multimail.dev"],
                "subject": "Where is my order?",
                "direction": direction,
                "has_attachments": False,
            },
        }
    ).encode()


def render(body: bytes, project: str = PROJECT) -> Event:
    """What Prefect Cloud makes of one delivery: the rendered template, as Prefect's Event (the
    webhook of `project`: another project's is the same template with its own name)."""
    text = WEBHOOK_TEMPLATE.read_text().replace(json.dumps(PROJECT), json.dumps(project))
    headers = {"content-type": "application/json", "x-multimail-signature": "sha256=..."}
    rendered = JINJA.from_string(text).render(body=json.loads(body), headers=headers)
    return Event.model_validate(json.loads(rendered))


def trigger_specs() -> list[DeploymentTriggerTypes]:
    """The trigger file as `prefect deploy -n receive-webhook --trigger FILE` reads it."""
    specs = _gather_deployment_trigger_definitions([str(TRIGGER_FILE)], [])
    return _initialize_deployment_triggers(RECEIVE_WEBHOOK, specs)


def triggers() -> tuple[DeploymentEventTrigger, DeploymentEventTrigger]:
    """The inbound-mail trigger and the decisions trigger."""
    inbound, decisions = trigger_specs()
    assert isinstance(inbound, DeploymentEventTrigger)
    assert isinstance(decisions, DeploymentEventTrigger)
    return inbound, decisions


def parameters(spec: DeploymentEventTrigger, event: Event) -> dict[str, Any]:
    """The parameters the automation's RunDeployment action renders from `event`."""
    assert spec.parameters is not None
    return {name: JINJA.from_string(v).render(event=event) for name, v in spec.parameters.items()}


def matches(spec: DeploymentEventTrigger, event: Event) -> bool:
    assert isinstance(spec.match, ResourceSpecification)
    return spec.match.includes([event.resource]) and event.event in spec.expect


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
        "01JPUBLISHED00000000000000": delivery(
            "01JPUBLISHED00000000000000", "01JDELIVERY00000000000000A"
        ),
    }
    for sample_id, body in samples.items():
        event = render(body)
        assert event.event == "multimail.message.received"
        assert event.resource.id == f"multimail.email.{sample_id}"
        assert event.resource["multimail.email.id"] == sample_id
        assert event.resource["multimail.mailbox.id"] == json.loads(body)["data"]["mailbox_id"]
        assert event.resource["multimail.project"] == PROJECT
        assert event.resource["multimail.direction"] == "inbound"
        text = json.dumps(event.model_dump(mode="json"))
        for private in ("@", "Invoice", "Body text", "Where is my order?"):
            assert private not in text


@pytest.mark.parametrize("decision", ["oversight.approved", "oversight.rejected"])
def test_a_decision_becomes_a_decision_event_about_the_email(decision: str) -> None:
    event = render(delivery("01JREPLY000000000000000000", "01JD1", decision, direction="outbound"))
    assert event.event == f"multimail.{decision}"
    assert event.resource.id == "multimail.email.01JREPLY000000000000000000"
    assert event.resource["multimail.project"] == PROJECT
    inbound, decisions = triggers()
    assert matches(decisions, event)
    assert not matches(inbound, event)
    assert parameters(decisions, event) == {
        "event": f"multimail.{decision}",
        "email_id": "01JREPLY000000000000000000",
        "mailbox_id": MAILBOX,
    }


def test_the_triggers_are_prefect_deployment_triggers_for_this_project_only() -> None:
    inbound, decisions = triggers()
    assert inbound.expect == {"multimail.message.received"}
    assert inbound.for_each == {"prefect.resource.id"}
    assert inbound.within == timedelta(hours=24)
    assert (inbound.posture, inbound.threshold) == ("Reactive", 1)
    assert decisions.expect == {"multimail.oversight.approved", "multimail.oversight.rejected"}
    assert (decisions.posture, decisions.threshold) == ("Reactive", 1)

    mail = render(delivery("01JINBOUND0000000000000000", "01JD1"))
    assert matches(inbound, mail)
    assert not matches(decisions, mail)
    outbound = render(delivery("01JOUTBOUND000000000000000", "01JD2", direction="outbound"))
    assert not matches(inbound, outbound)
    for event in ("message.received", "oversight.approved"):
        theirs = render(delivery("01JTHEIRS00000000000000000", "01JD3", event), OTHER_PROJECT)
        assert not matches(inbound, theirs)
        assert not matches(decisions, theirs)

    rendered = parameters(inbound, mail)
    assert rendered == {
        "event": "multimail.message.received",
        "email_id": "01JINBOUND0000000000000000",
        "mailbox_id": MAILBOX,
    }
    assert receive_webhook.validate_parameters(rendered) == rendered
    for spec in (inbound, decisions):
        spec.set_deployment_id(uuid4())
        (action,) = spec.as_automation().actions
        assert isinstance(action, RunDeployment)


def test_prefect_yaml_carries_the_same_triggers_commented_out_under_receive_webhook() -> None:
    """Uncommenting `triggers:` under receive-webhook in prefect.yaml gives these very triggers,
    and that deployment runs this flow."""
    assert load_flow(deployment_config(RECEIVE_WEBHOOK)["entrypoint"]) is receive_webhook
    lines = (PROJECT_DIR / "prefect.yaml").read_text().splitlines()
    entry = lines.index(f"  - name: {RECEIVE_WEBHOOK}")
    start = next(i for i, line in enumerate(lines) if line.strip() == "# triggers:")
    assert entry < start
    assert not any(line.startswith("  - name:") for line in lines[entry + 1 : start])
    block = []
    for line in lines[start:]:
        if not line.lstrip().startswith("#"):
            break
        block.append(re.sub(r"^(\s*)# ?", r"\1", line))
    uncommented = yaml.safe_load(textwrap.dedent("\n".join(block)))
    assert uncommented == yaml.safe_load(TRIGGER_FILE.read_text())


# -- on the local Prefect server ------------------------------------------------------------


@pytest.fixture(scope="session")
def receive_deployment(prefect_server: None) -> UUID:
    """receive-webhook registered on the test server under the name prefect.yaml gives it (no
    work pool: its runs wait Scheduled, and the tests run them in this process)."""

    async def register() -> UUID:
        deployment = await receive_webhook.ato_deployment(name=RECEIVE_WEBHOOK)
        deployment_id: UUID = await deployment.aapply()
        return deployment_id

    return asyncio.run(register())


async def _emit(events: list[Event]) -> None:
    async with get_events_client(checkpoint_every=1) as client:
        for event in events:
            await client.emit(event)


async def _firings() -> list[str]:
    """Email ids of the events an automation fired for (`prefect.automation.triggered`)."""
    async with get_client() as client:
        wanted = EventFilter(event=EventNameFilter(name=["prefect.automation.triggered"]))
        page = await client.read_events(filter=wanted, limit=50)
        events = list(page.events)
        while page.next_page:
            page = await client.read_events_page(str(page.next_page))
            events.extend(page.events)
    triggering = [e.payload.get("triggering_event") or {} for e in events]
    return [t.get("resource", {}).get("multimail.email.id", "") for t in triggering]


def _wait_for_firing(email_id: str, timeout: float = 60.0) -> list[str]:
    """Every firing so far, once one was for `email_id` (or after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        fired = asyncio.run(_firings())
        if email_id in fired or time.monotonic() > deadline:
            return fired
        time.sleep(0.2)


def _wait_for_runs(
    deployment_id: UUID, email_id: str, *, resend: Event | None = None, timeout: float = 60.0
) -> list[FlowRun]:
    """The runs of the deployment about `email_id`, once there is one (or after `timeout`).
    With `resend`, that event is posted again (as a new event) every 2 s meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        if resend is not None:
            asyncio.run(_emit([resend.model_copy(update={"id": uuid4()})]))
        for _ in range(10):
            runs = runs_answering(deployment_id, email_id)
            if runs or time.monotonic() > deadline:
                return runs
            time.sleep(0.2)


@pytest.fixture(scope="module")
def automations(receive_deployment: UUID) -> Iterator[UUID]:
    """The two automations, created as `prefect deploy -n receive-webhook --trigger
    prefect/cloud-trigger.yaml` creates them, once the server's trigger service evaluates them
    (a probe event of each kind is posted until it has started a run)."""

    async def install() -> None:
        async with get_client() as client:
            await _create_deployment_triggers(client, receive_deployment, list(trigger_specs()))

    async def remove() -> None:
        async with get_client() as client:
            owner = f"prefect.deployment.{receive_deployment}"
            await client.delete_resource_owned_automations(owner)

    asyncio.run(install())
    try:
        for event, email_id in [
            ("message.received", "01JPROBEINBOUND00000000000"),
            ("oversight.approved", "01JPROBEDECISION0000000000"),
        ]:
            probe = render(delivery(email_id, "01JDPROBE", event))
            assert _wait_for_runs(receive_deployment, email_id, resend=probe), event
        yield receive_deployment
    finally:
        asyncio.run(remove())


def _run_in_process(run: FlowRun) -> State[Any]:
    """Run the automation's receive-webhook run here, as a worker would run it."""
    running = run_flow_async(
        receive_webhook, flow_run=run, parameters=run.parameters, return_type="state"
    )
    state = asyncio.run(running)
    assert isinstance(state, State)
    return state


def _replies_mailbox(client: MultiMailClient, mail_env: list[MailboxState]) -> tuple[str, str]:
    """(audience, mailbox id) of the replies audience, whose inbound mail is answered."""
    audience = connection.current_settings().replies.audience
    address = next(s.address for s in mail_env if s.audience == audience)
    return audience, client.mailbox_id(address.partition("@")[0])


@pytest.mark.slow
def test_inbound_mail_on_cloud_starts_the_answer_run_the_receiver_would(
    automations: UUID,
    answer_deployment: UUID,
    fake: FakeMultiMail,
    client: MultiMailClient,
    mail_env: list[MailboxState],
) -> None:
    audience, mailbox_id = _replies_mailbox(client, mail_env)
    email_id = fake.deliver_inbound(
        to=next(s.address for s in mail_env if s.audience == audience),
        sender="ada@example.com",
        subject="Where is my order?",
        markdown="It has not arrived.",
    )
    theirs, last = "01JTHEIRS00000000000000000", "01JLAST0000000000000000000"
    asyncio.run(
        _emit(
            [
                render(delivery(theirs, "01JDA", mailbox_id=mailbox_id), OTHER_PROJECT),
                render(delivery(theirs, "01JDB", "oversight.approved"), OTHER_PROJECT),
                render(delivery(email_id, "01JDC", mailbox_id=mailbox_id)),
                render(delivery(email_id, "01JDD", mailbox_id=mailbox_id)),  # delivered twice
                render(delivery(last, "01JDE")),
            ]
        )
    )
    # The automations evaluate events in order: once one fired for the last event, the others
    # have been evaluated (their RunDeployment actions run apart, each in its own time).
    fired = _wait_for_firing(last)
    assert theirs not in fired
    assert fired.count(email_id) == 1
    (run,) = _wait_for_runs(automations, email_id)
    assert run.parameters == {
        "event": "multimail.message.received",
        "email_id": email_id,
        "mailbox_id": mailbox_id,
    }
    assert runs_for(answer_deployment, email_id) == []

    state = _run_in_process(run)
    assert state.is_completed(), state
    (answer,) = runs_for(answer_deployment, email_id)
    assert answer.parameters == {"email_id": email_id, "audience": audience}
    assert answer.name == ANSWER_RUN_NAME.format(email_id=email_id)
    assert set(RUN_TAGS) <= set(answer.tags)
    assert answer.parent_task_run_id is None  # no parent: it may suspend on a decision

    async def as_the_receiver_and_answer_run_see_it() -> tuple[FlowRun, FlowRun | None]:
        async with get_client() as prefect:
            started = await start_answer(prefect, email_id, audience)
            return started, await find_answer_run(prefect, email_id)

    started, found = asyncio.run(as_the_receiver_and_answer_run_see_it())
    assert started.id == answer.id
    assert found is not None
    assert found.id == answer.id


def _waiting_run(
    answer_deployment: UUID, client: MultiMailClient, mailbox_id: str, email_id: str
) -> UUID:
    """A run of answer-inbound on its way to wait for the decision on `email_id`: named in the
    email's tags, as a waiting run tags it before it suspends (`_suspend` suspends it)."""

    async def create() -> UUID:
        async with get_client() as prefect:
            run = await prefect.create_flow_run_from_deployment(
                answer_deployment, parameters={"email_id": "01JSTANDSFORANINBOUNDEMAIL"}
            )
            return run.id

    run_id = asyncio.run(create())
    client.set_tags(mailbox_id, email_id, {waiter_tag(run_id): pause_key(email_id)})
    return run_id


def _suspend(run_id: UUID, email_id: str) -> None:
    async def suspend() -> None:
        async with get_client() as prefect:
            suspended: State[None] = Suspended(timeout_seconds=3600, pause_key=pause_key(email_id))
            await prefect.set_flow_run_state(run_id, suspended, force=True)

    asyncio.run(suspend())


def _state(run_id: UUID) -> State[Any]:
    with get_client(sync_client=True) as prefect:
        state = prefect.read_flow_run(run_id).state
    assert state is not None
    return state


@pytest.mark.slow
@pytest.mark.parametrize("decision", ["oversight.approved", "oversight.rejected"])
def test_a_decision_on_cloud_resumes_the_run_waiting_for_it(
    automations: UUID,
    answer_deployment: UUID,
    fake: FakeMultiMail,
    client: MultiMailClient,
    mail_env: list[MailboxState],
    decision: str,
) -> None:
    audience, mailbox_id = _replies_mailbox(client, mail_env)
    address = next(s.address for s in mail_env if s.audience == audience)
    email_id = fake.deliver_inbound(
        to=address, sender="ada@example.com", subject="Decide me", markdown="Yes or no?"
    )
    waiting = _waiting_run(answer_deployment, client, mailbox_id, email_id)
    _suspend(waiting, email_id)
    assert _state(waiting).is_paused()

    event = render(delivery(email_id, "01JDF", decision, mailbox_id=mailbox_id))
    asyncio.run(_emit([event]))
    (run,) = _wait_for_runs(automations, email_id)
    assert run.parameters == {
        "event": f"multimail.{decision}",
        "email_id": email_id,
        "mailbox_id": mailbox_id,
    }
    state = _run_in_process(run)
    assert state.is_completed(), state
    assert not _state(waiting).is_paused()
    assert asyncio.run(state.aresult()) == {
        "status": "handled",
        "email_id": email_id,
        "flow_runs": {str(waiting): "resumed"},
    }


@pytest.mark.slow
def test_a_run_not_suspended_yet_fails_the_flow_run_for_its_retries_and_forged_ids_do_nothing(
    answer_deployment: UUID,
    fake: FakeMultiMail,
    client: MultiMailClient,
    mail_env: list[MailboxState],
) -> None:
    assert receive_webhook.retries == RETRIES > 0
    once = receive_webhook.with_options(retries=0)
    audience, mailbox_id = _replies_mailbox(client, mail_env)
    address = next(s.address for s in mail_env if s.audience == audience)
    email_id = fake.deliver_inbound(
        to=address, sender="ada@example.com", subject="Too early", markdown="Decide soon."
    )
    waiting = _waiting_run(answer_deployment, client, mailbox_id, email_id)

    with pytest.raises(NotActedOnYet, match="not_suspended_yet"):
        asyncio.run(once("oversight.approved", email_id, mailbox_id))
    _suspend(waiting, email_id)  # the run finished suspending: the retry resumes it
    answer = asyncio.run(once("oversight.approved", email_id, mailbox_id))
    assert answer["flow_runs"] == {str(waiting): "resumed"}

    # Ids that are no email of this account in that mailbox: nothing started, nothing failed.
    forged = "01JFORGED00000000000000000"
    answer = asyncio.run(once("multimail.message.received", forged, mailbox_id))
    assert answer["status"] == "ignored"
    assert runs_for(answer_deployment, forged) == []
    answer = asyncio.run(once("multimail.oversight.approved", forged, mailbox_id))
    assert answer["status"] == "ignored"
