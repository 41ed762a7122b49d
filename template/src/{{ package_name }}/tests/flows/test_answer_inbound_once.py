"""`answer-inbound` answers each inbound email at most once, whatever happens around it: a crash
mid-flow and a whole-flow retry, a second run days later (past MultiMail's 24 h idempotency
memory), its own outbound mail, mail from its own mailboxes, an auto-responder that answers
every reply. Real flows on the Prefect test server against the fake; a human (the operator
thread) approves what the test audience holds for approval.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from ...fake import FakeMultiMail
from ...flows import answer_inbound as answer_module
from ...flows.answer_inbound import answer_inbound
from ...flows.status_digest import status_digest
from ...mail import connection
from ...mail.retry_policy import FLOW_RETRIES, FLOW_RETRY_DELAY_SECONDS
from ...mail.tasks import Delivery, send_email
from ...multimail.client import MultiMailClient
from ...multimail.models import EmailSummary
from ...multimail.provision import MailboxState
from ...oversight.approvals import await_delivery

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("approving_operator"),
]


@pytest.fixture
def audience(gated_audience: str, mail_env: list[MailboxState]) -> str:
    return gated_audience


def _address(states: list[MailboxState], audience: str) -> str:
    return next(state.address for state in states if state.audience == audience)


def _outbound(client: MultiMailClient, audience: str) -> list[EmailSummary]:
    mailbox = client.mailbox_id(connection.current_settings().audience(audience).mailbox)
    return list(client.iter_emails(mailbox, direction="outbound"))


def _inbound(fake: FakeMultiMail, mail_env: list[MailboxState], audience: str, **kw: Any) -> str:
    fields = {"sender": "ada@example.com", "subject": "Order?", "markdown": "Where is it?", **kw}
    return fake.deliver_inbound(to=_address(mail_env, audience), **fields)


def test_the_mail_flows_retry_as_a_whole_for_minutes() -> None:
    for mail_flow in (answer_inbound, status_digest):
        assert mail_flow.retries == FLOW_RETRIES >= 2
        assert mail_flow.retry_delay_seconds == FLOW_RETRY_DELAY_SECONDS
    assert FLOW_RETRIES * FLOW_RETRY_DELAY_SECONDS >= 300  # outlasts an outage of minutes


def test_a_whole_flow_retry_after_a_crash_mid_flow_sends_nothing_twice(
    fake: FakeMultiMail,
    client: MultiMailClient,
    audience: str,
    mail_env: list[MailboxState],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inbound = _inbound(fake, mail_env, audience)
    crashes: list[str] = []
    real_await: Callable[..., Delivery] = await_delivery

    def crash_once(*args: Any, **kwargs: Any) -> Delivery:
        if not crashes:
            crashes.append("crashed after the reply was sent, before its outcome")
            raise RuntimeError(crashes[0])
        return real_await(*args, **kwargs)

    monkeypatch.setattr(answer_module, "await_delivery", crash_once)
    report = answer_inbound.with_options(retry_delay_seconds=0)(inbound, wait="poll")
    assert crashes  # the first attempt really crashed
    assert report.outcome == "sent"
    assert [e.id for e in _outbound(client, audience)] == [report.reply_id]


def test_a_second_answer_past_the_key_window_sends_nothing_and_reports_the_first(
    fake: FakeMultiMail, client: MultiMailClient, audience: str, mail_env: list[MailboxState]
) -> None:
    inbound = _inbound(fake, mail_env, audience)
    first = answer_inbound(inbound, wait="poll")
    assert first.outcome == "sent"
    # A day and an hour later MultiMail has forgotten the reply's idempotency key.
    httpx.post(f"{fake.base_url}/_fake/clock/advance", json={"seconds": 25 * 3600})
    again = answer_inbound(inbound, wait="poll")
    assert (again.outcome, again.reply_id) == ("sent", first.reply_id)
    assert [e.id for e in _outbound(client, audience)] == [first.reply_id]


def test_outbound_mail_and_mail_from_own_mailboxes_are_skipped_not_answered(
    fake: FakeMultiMail, client: MultiMailClient, audience: str, mail_env: list[MailboxState]
) -> None:
    ours = send_email.fn(audience, ["ada@example.com"], "Hello", "Hi Ada", "own-outbound-1").id
    skipped = answer_inbound(ours, wait="poll")
    assert (skipped.outcome, skipped.reply_id) == ("skipped", None)
    assert skipped.reason is not None
    assert "not an inbound email" in skipped.reason

    for state in mail_env:  # every mailbox of the project writing to the replies mailbox
        looped = _inbound(fake, mail_env, audience, sender=state.address, subject="Auto")
        report = answer_inbound(looped, wait="poll")
        assert report.outcome == "skipped"
        assert report.reason is not None
        assert state.address in report.reason
    assert [e.id for e in _outbound(client, audience)] == [ours]  # nothing answered


def test_an_auto_responder_cannot_start_a_loop(
    fake: FakeMultiMail,
    client: MultiMailClient,
    audience: str,
    mail_env: list[MailboxState],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MULTIMAIL_MAX_REPLIES_PER_THREAD_PER_DAY", "2")
    connection.reset()
    email = _inbound(fake, mail_env, audience, sender="robot@example.com", subject="Ticket")
    outcomes = []
    for _ in range(4):  # the customer's auto-responder answers each of our replies
        report = answer_inbound(email, wait="poll")
        outcomes.append(report.outcome)
        if report.reply_id is None:
            break
        email = fake.deliver_inbound(
            to=_address(mail_env, audience),
            sender="robot@example.com",
            subject="Re: Ticket",
            markdown="This is an automatic reply.",
            in_reply_to=report.reply_id,
        )
    assert outcomes == ["sent", "sent", "skipped"]
    assert len(_outbound(client, audience)) == 2
    mailbox = client.mailbox_id(connection.current_settings().audience(audience).mailbox)
    tags = client.get_tags(mailbox, email)
    assert tags["state"] == "reply-skipped"
    assert "max_replies_per_thread_per_day" in tags["skip_reason"]
