"""Exactly once under faults: N logical sends give N emails, whatever fails in between.

The fake injects the faults (`POST /_fake/faults`); the tasks run under Prefect's engine with
their real retry policy (delays shrunk by conftest), so what is proven here is what runs.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.runtime import flow_run

from ...fake import FakeMultiMail
from ...mail import connection
from ...mail.tasks import message_key, reply_to_email, send_email
from ...multimail.client import MultiMailAPIError, MultiMailClient
from ...multimail.models import EmailSummary
from ...multimail.provision import MailboxState

pytestmark = pytest.mark.slow


#: A 409 as MultiMail words it for an identical message sent without a key.
DUPLICATE_409: dict[str, Any] = {
    "status": 409,
    "message": "Duplicate email: an identical message was sent within 60 seconds",
}


def add_fault(fake: FakeMultiMail, **rule: Any) -> None:
    httpx.post(f"{fake.base_url}/_fake/faults", json=rule).raise_for_status()


def times_fired(fake: FakeMultiMail) -> int:
    faults = httpx.get(f"{fake.base_url}/_fake/faults").json()["faults"]
    return sum(int(rule["fired"]) for rule in faults)


def outbound(client: MultiMailClient, audience: str) -> list[EmailSummary]:
    settings = connection.current_settings()
    mailbox = client.mailbox_id(settings.audience(audience).mailbox)
    return list(client.iter_emails(mailbox, direction="outbound"))


@pytest.fixture
def audience(mail_env: list[MailboxState]) -> str:
    return connection.current_settings().replies.audience


def _send(audience: str, key: str = "k-1", subject: str = "Hello") -> str:
    return send_email(audience, ["ada@example.com"], subject, "Hi Ada", idempotency_key=key).id


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_transient_failure_is_retried_and_sends_once(
    fake: FakeMultiMail, client: MultiMailClient, audience: str, status: int
) -> None:
    add_fault(
        fake, path_prefix="/v1/mailboxes/", method="POST", status=status, count=1, retry_after=0
    )
    email_id = _send(audience)
    assert times_fired(fake) == 1
    assert [e.id for e in outbound(client, audience)] == [email_id]


@pytest.mark.parametrize(
    ("status", "fix"),
    [
        (400, "invalid"),
        (401, "MULTIMAIL_API_KEY"),
        (403, "provision"),
        (404, "exist"),
        (422, "invalid"),
    ],
)
def test_permanent_failure_fails_at_once_and_names_the_fix(
    fake: FakeMultiMail, client: MultiMailClient, audience: str, status: int, fix: str
) -> None:
    add_fault(fake, path_prefix="/v1/mailboxes/", method="POST", status=status, count=5)
    with pytest.raises(MultiMailAPIError) as caught:
        _send(audience)
    assert caught.value.status_code == status
    assert fix in str(caught.value)
    assert times_fired(fake) == 1  # never retried
    assert outbound(client, audience) == []


def test_the_retry_count_is_the_setting_of_the_moment_not_of_the_import(
    fake: FakeMultiMail, client: MultiMailClient, audience: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MULTIMAIL_RETRIES", "1")
    connection.reset()
    add_fault(fake, path_prefix="/v1/mailboxes/", method="POST", status=503, count=5)
    with pytest.raises(MultiMailAPIError):
        _send(audience)
    assert times_fired(fake) == 2  # the first attempt and one retry
    assert outbound(client, audience) == []


def test_lost_response_is_retried_into_the_original_message(
    fake: FakeMultiMail, client: MultiMailClient, audience: str
) -> None:
    add_fault(fake, path_prefix="/v1/mailboxes/", method="POST", drop_response=True, count=1)
    email_id = _send(audience)
    assert times_fired(fake) == 1
    assert [e.id for e in outbound(client, audience)] == [email_id]


def test_timeout_is_retried_and_the_late_request_sends_nothing_twice(
    fake: FakeMultiMail, client: MultiMailClient, audience: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MULTIMAIL_TIMEOUT_SECONDS", "0.5")
    connection.reset()
    add_fault(fake, path_prefix="/v1/mailboxes/", method="POST", latency=3.0, count=1)
    started = time.monotonic()
    email_id = _send(audience)
    # The task returned long before the slow answer could have: the client gave up at 0.5 s
    # and the retry got through.
    assert time.monotonic() - started < 3.0
    time.sleep(3.0)  # let the slow first request land too
    assert [e.id for e in outbound(client, audience)] == [email_id]


def test_rate_limit_waits_at_least_retry_after(
    fake: FakeMultiMail, client: MultiMailClient, audience: str
) -> None:
    add_fault(fake, path_prefix="/v1/mailboxes/", method="POST", status=429, retry_after=1, count=1)
    started = time.monotonic()
    email_id = _send(audience)
    assert time.monotonic() - started >= 1.0
    assert [e.id for e in outbound(client, audience)] == [email_id]


def test_a_retry_after_is_waited_out_by_prefect_and_logged_as_the_real_delay(
    fake: FakeMultiMail, client: MultiMailClient, audience: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="prefect.task_runs")
    add_fault(fake, path_prefix="/v1/mailboxes/", method="POST", status=429, retry_after=2, count=1)

    @flow
    def send_once() -> str:
        return _send(audience, key="rate-limited")

    state = send_once(return_state=True)
    assert state.is_completed()
    run_filter = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as prefect:
        (task_run,) = prefect.read_task_runs(flow_run_filter=run_filter)
        states = prefect.read_task_run_states(task_run.id)
        # The task run itself waited in AwaitingRetry for the Retry-After: the retry condition
        # did not sleep it out while the run showed Running.
        (waiting,) = [s for s in states if s.name == "AwaitingRetry"]
        assert waiting.state_details.scheduled_time is not None
        delay = (waiting.state_details.scheduled_time - waiting.timestamp).total_seconds()
        assert delay >= 1.9
    said = [r.getMessage() for r in caplog.records if "Retry 1/" in r.getMessage()]
    (line,) = said
    logged = float(line.split("will start ", 1)[1].split(" ", 1)[0])
    assert logged >= 2.0  # the log states the wait that really happens


def test_a_duplicate_409_fails_at_once_and_claims_no_other_message(
    fake: FakeMultiMail, client: MultiMailClient, audience: str
) -> None:
    # Every send carries its own key, so a 409 "Duplicate" is about a *different* message with
    # the same content (here `other`): adopting it would hijack that message and its tags.
    other = send_email(audience, ["ada@example.com"], "Hello", "Hi Ada", "other-key").id
    mailbox = client.mailbox_id(connection.current_settings().audience(audience).mailbox)
    tags = {"prefect-flow-run-00000000-0000-4000-8000-000000000000": "someone else's wait"}
    client.set_tags(mailbox, other, tags)
    add_fault(fake, path_prefix="/v1/mailboxes/", method="POST", count=1, **DUPLICATE_409)
    with pytest.raises(MultiMailAPIError) as caught:
        _send(audience, key="k-2")
    assert caught.value.status_code == 409
    assert "idempotency key" in str(caught.value)  # says why and what to do
    assert times_fired(fake) == 1  # never retried
    assert [e.id for e in outbound(client, audience)] == [other]
    assert client.get_tags(mailbox, other) == tags


def test_reply_under_a_lost_response_is_sent_once(
    fake: FakeMultiMail, client: MultiMailClient, audience: str, mail_env: list[MailboxState]
) -> None:
    address = next(s.address for s in mail_env if s.audience == audience)
    inbound = fake.deliver_inbound(to=address, sender="ada@example.com", subject="Q", markdown="?")
    add_fault(fake, path_prefix="/v1/mailboxes/", method="POST", drop_response=True, count=1)
    reply = reply_to_email(audience, inbound, "A", idempotency_key=message_key("reply", inbound))
    assert [e.id for e in outbound(client, audience)] == [reply.id]


def test_many_sends_under_mixed_faults_give_one_email_each(
    fake: FakeMultiMail, client: MultiMailClient, audience: str
) -> None:
    rules: list[dict[str, Any]] = [
        {"status": 503},
        {"drop_response": True},
        {"status": 429, "retry_after": 0},
    ]
    for seed, rule in enumerate(rules):
        add_fault(fake, path_prefix="/v1/", error_rate=0.15, seed=seed, **rule)
    ids = {_send(audience, key=f"bulk-{n}", subject=f"Message {n}") for n in range(20)}
    assert times_fired(fake) > 0  # the faults really fired
    httpx.delete(f"{fake.base_url}/_fake/faults").raise_for_status()
    emails = outbound(client, audience)
    assert len(ids) == 20
    assert sorted(e.subject for e in emails) == sorted(f"Message {n}" for n in range(20))
    assert {e.id for e in emails} == ids


def test_a_retried_flow_run_sends_nothing_twice(client: MultiMailClient, audience: str) -> None:
    attempts: list[int] = []

    @flow(retries=1, retry_delay_seconds=0)
    def crashes_after_sending() -> str:
        key = message_key("crash-demo", str(flow_run.id))  # stable across flow retries
        email_id = _send(audience, key=key)
        attempts.append(flow_run.run_count)
        if len(attempts) == 1:
            raise RuntimeError("crashed after the send, before the run finished")
        return email_id

    email_id = crashes_after_sending()
    assert len(attempts) == 2
    assert [e.id for e in outbound(client, audience)] == [email_id]
