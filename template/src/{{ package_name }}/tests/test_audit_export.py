"""export-audit-log: N audit entries in MultiMail → N events in Prefect, none missing and none
doubled after a crash mid-export, a rerun, or a lost cursor; no address, body or key in them."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventResourceFilter,
)
from prefect.events.schemas.events import ReceivedEvent
from prefect.variables import Variable
from pydantic import SecretStr

from .. import credentials
from ..audit_export import CURSOR_VARIABLE, export_audit_log
from ..client import MultiMailClient
from ..events import reply_decided, reply_queued
from ..fake import FakeMultiMail
from ..flows import answer_inbound
from ..models import AuditEntry
from ..provision import MailboxState
from ..settings import OversightMode
from .inbound_support import wait_until_released

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]


@pytest.fixture
def cursor_variable() -> Iterator[str]:
    """A Variable of this test's own (the session's server is shared)."""
    name = f"{CURSOR_VARIABLE}_{uuid.uuid4().hex[:8]}"
    yield name
    Variable.unset(name)


def _entries(client: MultiMailClient) -> list[AuditEntry]:
    entries, cursor = [], None
    while True:
        page = client.audit_log(limit=100, cursor=cursor)
        entries.extend(page.entries)
        if page.cursor is None:
            return entries
        cursor = page.cursor


async def _audit_events() -> list[ReceivedEvent]:
    async with get_client() as client:
        now = datetime.now(UTC)
        wanted = EventFilter(
            event=EventNameFilter(prefix=["multimail.audit."]),
            occurred=EventOccurredFilter(
                since=now - timedelta(days=1), until=now + timedelta(days=1)
            ),
        )
        page = await client.read_events(filter=wanted, limit=50)
        events = list(page.events)
        while page.next_page:
            page = await client.read_events_page(str(page.next_page))
            events.extend(page.events)
        return events


def _stored(entries: list[AuditEntry], timeout: float = 30.0) -> list[ReceivedEvent]:
    """The stored events about `entries`, once each entry has one (events are persisted by a
    background service, in batches)."""
    ids = {e.id for e in entries}
    deadline = time.monotonic() + timeout
    while True:
        mine = [e for e in asyncio.run(_audit_events()) if e.payload.get("audit_id") in ids]
        if {e.payload["audit_id"] for e in mine} >= ids or time.monotonic() > deadline:
            return mine
        time.sleep(0.2)


def _make_activity(client: MultiMailClient, fake: FakeMultiMail, mailbox: str, n: int) -> str:
    """n audit entries about one inbound email (tagging it), plus the email's id."""
    email_id = fake.deliver_inbound(
        to=mailbox, sender="ada@example.com", subject="Invoice 42", markdown="Private body"
    )
    box = client.mailbox_id(mailbox.partition("@")[0])
    for i in range(n):
        client.set_tags(box, email_id, {"step": str(i)})
    return email_id


def _assert_once_each(entries: list[AuditEntry]) -> list[ReceivedEvent]:
    stored = _stored(entries)
    counts = Counter(e.payload["audit_id"] for e in stored)
    assert set(counts) == {e.id for e in entries}, "an audit entry has no event"
    assert max(counts.values()) == 1, "an audit entry has two events"
    return stored


def test_every_entry_becomes_one_event_about_ids_only(
    mail_env: list[MailboxState],
    fake: FakeMultiMail,
    client: MultiMailClient,
    app_key: SecretStr,
    cursor_variable: str,
) -> None:
    sender = next(s for s in mail_env if s.mode != OversightMode.READ_ONLY)
    email_id = _make_activity(client, fake, sender.address, 3)
    box = sender.mailbox_id
    client.reply(box, email_id, markdown="Private reply", idempotency_key="audit-test-reply")
    entries = _entries(client)
    exported = asyncio.run(export_audit_log(page_size=7, cursor_variable=cursor_variable))
    assert exported == len(entries)
    stored = _assert_once_each(entries)
    by_id = {e.payload["audit_id"]: e for e in stored}
    for entry in entries:
        event = by_id[entry.id]
        assert event.event == f"multimail.audit.{entry.action}"
        assert event.occurred.isoformat().startswith(entry.created_at[:19])
    tagged = [e for e in stored if e.event == "multimail.audit.email.tag"]
    assert {e.resource.id for e in tagged} == {f"multimail.email.{email_id}"}
    text = json.dumps([e.model_dump(mode="json") for e in stored])
    for secret in ("@", "Invoice 42", "Private body", "Private reply", app_key.get_secret_value()):
        assert secret not in text
    # Nothing new: the next run exports nothing and emits nothing.
    assert asyncio.run(export_audit_log(page_size=7, cursor_variable=cursor_variable)) == 0


def test_a_crash_mid_export_then_reruns_miss_nothing_and_double_nothing(
    mail_env: list[MailboxState],
    fake: FakeMultiMail,
    client: MultiMailClient,
    cursor_variable: str,
) -> None:
    _make_activity(client, fake, mail_env[0].address, 12)
    # The first run stops after one page (as if it had crashed after saving that page)...
    assert (
        asyncio.run(export_audit_log(page_size=5, max_pages=1, cursor_variable=cursor_variable))
        == 5
    )
    # ...the next one crashes outright: MultiMail's audit log keeps failing.
    fault = httpx.post(
        f"{fake.base_url}/_fake/faults", json={"path_prefix": "/v1/audit-log", "status": 503}
    )
    assert fault.status_code == 201
    with pytest.raises(Exception, match="503"):
        asyncio.run(export_audit_log(page_size=5, cursor_variable=cursor_variable))
    httpx.delete(f"{fake.base_url}/_fake/faults").raise_for_status()
    _make_activity(client, fake, mail_env[0].address, 2)  # the log grows meanwhile
    asyncio.run(export_audit_log(page_size=5, cursor_variable=cursor_variable))
    entries = _entries(client)
    _assert_once_each(entries)
    # The cursor is lost (say, the Variable was deleted): everything is emitted again, and
    # Prefect still stores one event per entry, because each event id comes from the entry.
    Variable.unset(cursor_variable)
    assert asyncio.run(export_audit_log(page_size=50, cursor_variable=cursor_variable)) == len(
        entries
    )
    _assert_once_each(entries)


async def _events_about(resource_id: str) -> list[ReceivedEvent]:
    async with get_client() as client:
        now = datetime.now(UTC)
        wanted = EventFilter(
            event=EventNameFilter(prefix=["multimail.reply."]),
            resource=EventResourceFilter(id=[resource_id]),
            occurred=EventOccurredFilter(since=now - timedelta(hours=1), until=now),
        )
        return list((await client.read_events(filter=wanted, limit=50)).events)


def test_reply_events_are_stored_once_however_often_a_flow_emits_them() -> None:
    reply, inbound = f"01JREPLY{uuid.uuid4().hex[:18].upper()}", "01JINBOUND0000000000000000"
    deadline = time.monotonic() + 30
    while True:
        # A retried or resumed flow emits the same events again (and emit_event sends in the
        # background, with no acknowledgement: emit until both are in).
        for _ in range(2):
            reply_queued("customers", inbound, reply, "pending_send_approval")
            reply_decided("customers", reply, "sent")
        stored = asyncio.run(_events_about(f"multimail.email.{reply}"))
        if len(stored) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sorted(e.event for e in stored) == ["multimail.reply.decided", "multimail.reply.queued"]
    queued = next(e for e in stored if e.event == "multimail.reply.queued")
    assert queued.payload == {"status": "pending_send_approval"}
    assert f"multimail.email.{inbound}" in [r.id for r in queued.related]


def test_answering_an_email_emits_reply_queued_and_decided(
    mail_env: list[MailboxState],
    fake: FakeMultiMail,
    approving_operator: object,
    operator_client: MultiMailClient,
) -> None:
    settings = credentials.current_settings()
    audience = settings.replies.audience
    address = next(s.address for s in mail_env if s.audience == audience)
    inbound = fake.deliver_inbound(
        to=address, sender="ada@example.com", subject="Order 7", markdown="Where is it?"
    )
    wait_until_released(operator_client)
    report = answer_inbound(inbound, audience=audience, wait="poll")
    assert report.reply_id is not None
    deadline = time.monotonic() + 30
    while len(stored := asyncio.run(_events_about(f"multimail.email.{report.reply_id}"))) < 2:
        assert time.monotonic() < deadline, stored
        time.sleep(0.2)
    by_name = {e.event: e for e in stored}
    assert set(by_name) == {"multimail.reply.queued", "multimail.reply.decided"}
    assert by_name["multimail.reply.decided"].payload == {"outcome": report.outcome}
    assert f"multimail.email.{inbound}" in [r.id for r in by_name["multimail.reply.queued"].related]
    text = json.dumps([e.model_dump(mode="json") for e in stored])
    assert "@" not in text
    assert "Order 7" not in text
