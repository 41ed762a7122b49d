"""`answer-inbound` under a Prefect test server, against the fake MultiMail, with a human (the
operator thread) deciding what waits for approval.
"""

from __future__ import annotations

import pytest
from prefect import flow
from prefect.settings import PREFECT_RESULTS_PERSIST_BY_DEFAULT, temporary_settings
from pydantic import SecretStr

from ...drafting import Draft
from ...fake import FakeMultiMail
from ...fake.operator import Operator
from ...flows import answer_inbound as answer_module
from ...flows.answer_inbound import answer_inbound, draft
from ...mail import connection
from ...mail.tasks import check_delivery, read_email, send_email
from ...multimail.client import MultiMailClient
from ...multimail.models import Email
from ...multimail.provision import MailboxState

pytestmark = pytest.mark.slow


def _replies_address(states: list[MailboxState]) -> str:
    audience = connection.current_settings().replies.audience
    return next(state.address for state in states if state.audience == audience)


def test_approved_reply_is_sent_and_reported(
    gated_audience: str,
    mail_env: list[MailboxState],
    fake: FakeMultiMail,
    approving_operator: Operator,
    client: MultiMailClient,
) -> None:
    inbound = fake.deliver_inbound(
        to=_replies_address(mail_env),
        sender="ada@example.com",
        subject="Order?",
        markdown="Where is my order?",
    )
    report = answer_inbound(inbound)
    assert report.outcome == "sent"
    settings = connection.current_settings()
    mailbox = client.mailbox_id(settings.audience(settings.replies.audience).mailbox)
    assert report.reply_id is not None
    reply = client.get_email(mailbox, report.reply_id)
    assert (reply.status, reply.to) == ("sent", ["ada@example.com"])
    assert client.get_tags(mailbox, inbound)["state"] == "reply-sent"


def test_rejected_reply_is_reported_not_retried(
    gated_audience: str,
    mail_env: list[MailboxState],
    fake: FakeMultiMail,
    rejecting_operator: Operator,
    client: MultiMailClient,
) -> None:
    inbound = fake.deliver_inbound(
        to=_replies_address(mail_env),
        sender="bob@example.com",
        subject="Refund",
        markdown="I want a refund.",
    )
    report = answer_inbound(inbound)
    assert report.outcome == "rejected"
    assert report.approved_by is None
    # Exactly one reply exists: a rejection is an outcome, not an error to retry.
    settings = connection.current_settings()
    mailbox = client.mailbox_id(settings.audience(settings.replies.audience).mailbox)
    outbound = client.list_emails(mailbox, direction="outbound").emails
    assert [e.id for e in outbound] == [report.reply_id]


def test_an_unanswered_reply_times_out_and_is_cancelled(
    gated_audience: str,
    mail_env: list[MailboxState],
    fake: FakeMultiMail,
    client: MultiMailClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MULTIMAIL_APPROVAL_TIMEOUT_SECONDS", "1")
    connection.reset()
    inbound = fake.deliver_inbound(
        to=_replies_address(mail_env),
        sender="dee@example.com",
        subject="Anyone?",
        markdown="Hello?",
    )
    report = answer_inbound(inbound, wait="poll")  # no operator: nobody decides
    assert report.outcome == "timed_out"
    settings = connection.current_settings()
    mailbox = client.mailbox_id(settings.audience(settings.replies.audience).mailbox)
    # Cancelled, so that a late approval cannot send it behind the flow's back.
    assert report.reply_id is not None
    assert client.get_email(mailbox, report.reply_id).status == "cancelled"
    connection.reset()


def test_a_mode_change_in_settings_changes_the_flow_without_editing_it(
    fake: FakeMultiMail, app_key: SecretStr, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = connection.current_settings().replies.audience
    monkeypatch.setenv(f"MULTIMAIL_AUDIENCES__{name.upper()}__OVERSIGHT_MODE", "autonomous")
    monkeypatch.setenv("MULTIMAIL_API_URL", fake.base_url)
    monkeypatch.setenv("MULTIMAIL_API_KEY", app_key.get_secret_value())
    connection.reset()
    from ...fake.operator import provision_on_fake

    states = provision_on_fake(fake, connection.shared_client(), connection.current_settings())
    inbound = fake.deliver_inbound(
        to=_replies_address(states), sender="cy@example.com", subject="Hi", markdown="Hello"
    )
    report = answer_inbound(inbound)  # no operator running: nobody could approve
    assert report.outcome == "sent"
    assert report.approved_by is None
    connection.reset()


@pytest.mark.parametrize("persist", [False, True], ids=["default", "results-persisted"])
def test_a_status_read_again_is_never_a_cached_answer(
    gated_audience: str,
    mail_env: list[MailboxState],
    operator_client: MultiMailClient,
    persist: bool,
) -> None:
    """With result persistence on, Prefect's default cache key (inputs, task source, flow run
    id) would answer the second read from the first: an approved email reported pending."""

    @flow
    def read_before_and_after_a_decision() -> tuple[str, str]:
        sent = send_email(gated_audience, ["ada@example.com"], "Hello", "Hi", "persist-1")
        before = check_delivery(gated_audience, sent.id)
        (pending,) = operator_client.list_pending()
        operator_client.decide(pending.id, "approve")
        after = check_delivery(gated_audience, sent.id)
        return before.outcome, after.outcome

    with temporary_settings(updates={PREFECT_RESULTS_PERSIST_BY_DEFAULT: persist}):
        assert read_before_and_after_a_decision() == ("pending", "sent")


def test_a_reply_is_drafted_once_per_inbound_email(
    mail_env: list[MailboxState], fake: FakeMultiMail, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rerun (after a resume, a retry, a redelivered webhook) reuses the draft: a model is
    asked, and billed, once per inbound email."""
    drafted: list[str] = []

    def counting_draft(audience: str, email: Email) -> Draft:
        drafted.append(email.id)
        return Draft(markdown=f"Answer to {email.subject}", model="scripted:model")

    monkeypatch.setattr(answer_module, "draft_reply", counting_draft)
    audience = connection.current_settings().replies.audience
    inbound = fake.deliver_inbound(
        to=_replies_address(mail_env), sender="ada@example.com", subject="Q1", markdown="?"
    )

    @flow
    def draft_it() -> str:
        return draft(audience, read_email(audience, inbound)).markdown

    assert draft_it() == draft_it() == "Answer to Q1"  # two flow runs
    assert drafted == [inbound]
