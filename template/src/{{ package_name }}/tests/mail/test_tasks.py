"""Tasks, called through `.fn()` (no Prefect server), against the fake MultiMail."""

from __future__ import annotations

import httpx
import pytest
from prefect.client.schemas.objects import State
from prefect.states import Completed, Failed

from ...fake import FakeMultiMail
from ...mail import connection
from ...mail.connection import MissingSecretError
from ...mail.retry_policy import RetryDecision, classify, retry_delay
from ...mail.tasks import (
    cancel_email,
    check_delivery,
    check_inbox,
    count_emails,
    get_email_status,
    get_thread,
    is_transient,
    list_awaiting_approval,
    message_key,
    read_email,
    reply_to_email,
    send_email,
    tag_email,
    wait_for_decision,
)
from ...multimail.client import MultiMailAPIError
from ...multimail.provision import MailboxState


def _api_error(status: int) -> MultiMailAPIError:
    return MultiMailAPIError(status_code=status, message="x", method="POST", path="/send")


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (_api_error(500), True),
        (_api_error(503), True),
        (_api_error(429), True),
        (_api_error(400), False),
        (_api_error(401), False),
        (_api_error(403), False),
        (_api_error(404), False),
        (httpx.ConnectError("refused"), True),
        (httpx.ReadTimeout("slow"), True),
        (httpx.RemoteProtocolError("cut off"), True),
        (httpx.UnsupportedProtocol("api_url without http://"), False),
        (MissingSecretError("no key"), False),
        (ValueError("bug"), False),
    ],
)
def test_only_transient_failures_are_retried(error: Exception, retried: bool) -> None:
    state: State[object] = Failed(data=error)
    assert is_transient(send_email, None, state) is retried  # type: ignore[arg-type]


def test_a_rate_limit_beyond_the_cap_is_not_retried() -> None:
    quota = MultiMailAPIError(
        status_code=429, message="monthly quota", method="POST", path="/send", retry_after=86400
    )
    state: State[object] = Failed(data=quota)
    assert is_transient(send_email, None, state) is False  # type: ignore[arg-type]


def test_a_rate_limit_waits_its_retry_after_and_the_backoff_grows() -> None:
    limited = MultiMailAPIError(
        status_code=429, message="slow down", method="POST", path="/send", retry_after=7
    )
    decision = classify(limited, retry_after_cap_seconds=60)
    assert decision == RetryDecision(True, 7.0, "HTTP 429")
    assert all(retry_delay(decision, attempt, 0.5) >= 7.0 for attempt in range(4))
    plain = classify(_api_error(503), retry_after_cap_seconds=60)
    assert 1.0 <= retry_delay(plain, 1, 0.5) <= 1.5  # 0.5 * 2**1, plus up to 50 % jitter
    refused = classify(_api_error(409), retry_after_cap_seconds=60)
    assert not refused.retryable
    assert "409" in refused.reason


def test_a_completed_state_is_not_retried() -> None:
    assert is_transient(send_email, None, Completed(data=1)) is False  # type: ignore[arg-type]


def test_message_keys_depend_on_identity_only() -> None:
    assert message_key("reply", "email-1") == message_key("reply", "email-1")
    assert message_key("reply", "email-1") != message_key("reply", "email-2")
    assert message_key("reply", "email-1") != message_key("forward", "email-1")
    assert message_key("a", "b:c") != message_key("a:b", "c")


def test_internal_audience_sends_without_a_human(mail_env: list[MailboxState]) -> None:
    settings = connection.current_settings()
    audience = settings.digest.audience
    sent = send_email.fn(audience, ["team@example.com"], "Status", "all good", "digest-1")
    delivery = wait_for_decision.fn(audience, sent.id, timeout_seconds=5)
    expected = (
        "sent"
        if settings.audience(audience).oversight_mode in ("autonomous", "monitored")
        else "pending"
    )
    assert delivery.outcome == expected


def test_a_wait_that_runs_out_reports_pending_never_timed_out(
    gated_audience: str, mail_env: list[MailboxState]
) -> None:
    sent = send_email.fn(gated_audience, ["ada@example.com"], "Hello", "Hi", "gated-1")
    delivery = wait_for_decision.fn(gated_audience, sent.id, timeout_seconds=0.3, poll_seconds=0.1)
    # Only a cancel MultiMail accepted may turn this into timed_out: it can still be sent.
    assert (delivery.outcome, delivery.status) == ("pending", "pending_send_approval")
    assert get_email_status.fn(gated_audience, sent.id) == "pending_send_approval"


def test_a_scan_slower_than_the_scan_timeout_is_still_pending(
    mail_env: list[MailboxState], fake: FakeMultiMail
) -> None:
    httpx.post(f"{fake.base_url}/_fake/config", json={"scan_delay": 30}).raise_for_status()
    audience = connection.current_settings().digest.audience
    sent = send_email.fn(audience, ["team@example.com"], "Status", "slow scan", "slow-1")
    delivery = check_delivery.fn(audience, sent.id, scan_timeout_seconds=0.3)
    assert (delivery.outcome, delivery.status) == ("pending", "pending_scan")


def test_inbox_read_and_tag(
    gated_audience: str, mail_env: list[MailboxState], fake: FakeMultiMail
) -> None:
    # The test's own gated_send audience: the project's may be gated_all, which holds inbound
    # mail for a human before any inbox shows it.
    audience = gated_audience
    address = next(s.address for s in mail_env if s.audience == audience)
    email_id = fake.deliver_inbound(
        to=address, sender="ada@example.com", subject="Question", markdown="Hello?"
    )
    assert [e.id for e in check_inbox.fn(audience)] == [email_id]
    assert read_email.fn(audience, email_id).markdown == "Hello?"
    assert check_inbox.fn(audience) == []  # read now
    assert tag_email.fn(audience, email_id, {"state": "seen"}) == {"state": "seen"}


def test_awaiting_approval_thread_count_and_cancel(
    gated_audience: str, mail_env: list[MailboxState], fake: FakeMultiMail
) -> None:
    audience = gated_audience
    address = next(s.address for s in mail_env if s.audience == audience)
    inbound = fake.deliver_inbound(to=address, sender="ada@example.com", subject="Q", markdown="?")
    reply = reply_to_email.fn(audience, inbound, "An answer", "reply-key")
    assert get_email_status.fn(audience, reply.id) == "pending_send_approval"
    assert [e.id for e in list_awaiting_approval.fn(audience)] == [reply.id]
    assert count_emails.fn(audience, "pending_send_approval", "outbound") == 1
    thread = get_thread.fn(audience, reply.thread_id or "")
    assert [e.id for e in thread.emails] == [inbound, reply.id]
    assert cancel_email.fn(audience, reply.id) == "cancelled"
    assert list_awaiting_approval.fn(audience) == []
