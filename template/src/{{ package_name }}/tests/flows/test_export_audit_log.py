"""export-audit-log: N audit entries in MultiMail → N events in Prefect, none missing and none
doubled after a crash mid-export, a rerun, or a lost cursor; no address, body or key in them.
The position is the project's own and the account's own: another project on the same server
does not move it, and a position of another account is refused."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
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
from prefect.settings import PREFECT_API_URL
from prefect.variables import Variable
from pydantic import SecretStr

from ...fake import FakeMultiMail
from ...flows.answer_inbound import answer_inbound
from ...flows.export_audit_log import CursorOfAnotherAccount, export_audit_log
from ...mail import connection
from ...mail.events import reply_decided, reply_queued
from ...multimail.client import MultiMailClient
from ...multimail.models import AuditEntry
from ...multimail.provision import MailboxState
from ...namespace import AUDIT_CURSOR_VARIABLE, PROJECT_VARIABLE
from ...settings import OversightMode
from ..inbound_support import wait_until_released

pytestmark = pytest.mark.slow


@pytest.fixture
def cursor_variable() -> Iterator[str]:
    """A Variable of this test's own (the session's server is shared)."""
    name = f"{AUDIT_CURSOR_VARIABLE}-{uuid.uuid4().hex[:8]}"
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


def test_a_position_of_another_account_is_refused_and_nothing_is_emitted(
    mail_env: list[MailboxState],
    fake: FakeMultiMail,
    client: MultiMailClient,
    cursor_variable: str,
) -> None:
    _make_activity(client, fake, mail_env[0].address, 2)
    entries = _entries(client)
    # Another project's export of another account stood here (the same Variable name: two
    # projects left at the same `project`).
    theirs = {"account": "01JOTHERACCOUNT0000000000", "account_slug": "other-tenant"}
    foreign = {**theirs, "exported_through": "01JZZZZZZZZZZZZZZZZZZZZZZZ"}
    Variable.set(cursor_variable, foreign)
    with pytest.raises(CursorOfAnotherAccount) as refused:
        asyncio.run(export_audit_log(page_size=50, cursor_variable=cursor_variable))
    message = str(refused.value)
    account = client.account()
    for part in (
        "other-tenant (01JOTHERACCOUNT0000000000)",  # the account the position belongs to
        f"{account.slug} ({account.id})",  # this project's account
        f"prefect variable unset {cursor_variable}",  # moved accounts: start over
        "`project` in settings.toml",  # two projects: one namespace each
    ):
        assert part in message, message
    assert Variable.get(cursor_variable) == foreign  # left as it was
    time.sleep(2)  # events are stored in the background: give a wrongly emitted one time
    ids = {e.id for e in entries}
    assert not [e for e in asyncio.run(_audit_events()) if e.payload.get("audit_id") in ids]


def test_the_position_an_older_version_kept_is_taken_over(
    mail_env: list[MailboxState],
    fake: FakeMultiMail,
    client: MultiMailClient,
    cursor_variable: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="prefect.flow_runs")
    _make_activity(client, fake, mail_env[0].address, 2)
    reached = _entries(client)[0].id  # an older version's export reached the newest entry...
    legacy = f"{cursor_variable}_legacy"  # (multimail_audit_export, shared by every project)
    Variable.set(legacy, {"exported_through": reached, "newest": None, "cursor": None})
    _make_activity(client, fake, mail_env[0].address, 3)  # ...then the log grew
    newer = [e for e in _entries(client) if e.id > reached]
    exported = export_audit_log(
        page_size=3, cursor_variable=cursor_variable, legacy_cursor_variable=legacy
    )
    assert asyncio.run(exported) == len(newer)
    _assert_once_each(newer)
    account = client.account()
    position = Variable.get(cursor_variable)
    assert isinstance(position, dict)
    assert position["account"] == account.id
    assert position["exported_through"] == newer[0].id
    said = [r.getMessage() for r in caplog.records if "older version" in r.getMessage()]
    assert len(said) == 1, said
    assert account.id in said[0]
    assert legacy in said[0]
    Variable.unset(legacy)


_OTHER_PROJECT_EXPORT = """
import asyncio, json
from {package}.flows.export_audit_log import export_audit_log
from {package}.namespace import AUDIT_CURSOR_VARIABLE
exported = asyncio.run(export_audit_log())
print(json.dumps({{"exported": exported, "variable": AUDIT_CURSOR_VARIABLE}}))
"""


def _export_as_other_project(project: str, api_url: str, key: str) -> tuple[int, str]:
    """Another project's export, with its own account, on the same Prefect server: the package
    imported under another `project`, as a process of its own."""
    package = __name__.split(".")[0]
    env = {
        **os.environ,
        PROJECT_VARIABLE: project,
        "MULTIMAIL_API_URL": api_url,
        "MULTIMAIL_API_KEY": key,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
    }
    done = subprocess.run(
        [sys.executable, "-c", _OTHER_PROJECT_EXPORT.format(package=package)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    return int(answer["exported"]), str(answer["variable"])


@pytest.fixture
def own_variable() -> Iterator[str]:
    """This project's real Variable, as the deployed flow uses it (removed afterwards)."""
    Variable.unset(AUDIT_CURSOR_VARIABLE)
    yield AUDIT_CURSOR_VARIABLE
    Variable.unset(AUDIT_CURSOR_VARIABLE)


def test_two_projects_on_one_server_keep_their_own_positions(
    mail_env: list[MailboxState],
    fake: FakeMultiMail,
    client: MultiMailClient,
    own_variable: str,
) -> None:
    other_project = f"other-{uuid.uuid4().hex[:8]}"
    with FakeMultiMail() as other_account:
        # The other project's account is busy first: its entries are older than ours.
        other_key = other_account.create_key(["read", "send", "admin"], name="other")
        for i in range(3):
            other_account.create_key(["read"], name=f"other-{i}")
        other_entries = len(other_account.state.list_audit(100, None)["entries"])
        _make_activity(client, fake, mail_env[0].address, 2)
        ours = _entries(client)
        # Each project exports with its defaults: its own Variable, its own account.
        assert asyncio.run(export_audit_log()) == len(ours)
        mine = Variable.get(own_variable)
        exported, their_variable = _export_as_other_project(
            other_project, other_account.base_url, other_key
        )
        try:
            assert exported == other_entries  # none skipped for being older than our newest
            assert their_variable != own_variable
            theirs = Variable.get(their_variable)
            assert isinstance(theirs, dict)
            assert theirs["account"] == other_account.state.get_account()["id"]
            assert Variable.get(own_variable) == mine  # untouched by the other project
            assert isinstance(mine, dict)
            assert mine["account"] == client.account().id
            assert asyncio.run(export_audit_log()) == 0  # and ours goes on from it
        finally:
            Variable.unset(their_variable)


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
    settings = connection.current_settings()
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
