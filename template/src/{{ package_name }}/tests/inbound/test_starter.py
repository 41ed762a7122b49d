"""Inbound mail → exactly one answer-inbound run per message, over HTTP end to end: the fake
MultiMail delivers signed webhooks to the project's receiver, which records runs on the
session's Prefect test server."""

from __future__ import annotations

import json
import socket
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import PrefectClient

from ...fake import FakeMultiMail, sign
from ...inbound.answer_run import ANSWER_INBOUND_FLOW
from ...inbound.starter import RUN_TAGS, run_key
from ...mail import connection
from ...multimail.client import MultiMailClient
from ...multimail.provision import MailboxState
from ...settings import OversightMode
from ..inbound_support import Receiver, answer_deployment, receiver, runs_answering, runs_for

pytestmark = pytest.mark.slow
__all__ = ["answer_deployment", "receiver"]


def _answering(states: list[MailboxState]) -> list[MailboxState]:
    """The audiences whose mailboxes answer mail (read-only ones cannot)."""
    settings = connection.current_settings()
    return [
        s for s in states if settings.audience(s.audience).oversight_mode != OversightMode.READ_ONLY
    ]


def _payload(
    email_id: str, mailbox_id: str, delivery_id: str = "01JDELIVERY00000000000000A", **data: Any
) -> bytes:
    body = {
        "event": "message.received",
        "id": delivery_id,
        "timestamp": "2026-11-25T10:00:00Z",
        "data": {
            "email_id": email_id,
            "mailbox_id": mailbox_id,
            "direction": "inbound",
            "from": "ada@example.com",
            **data,
        },
    }
    return json.dumps(body).encode()


def test_each_audience_mailbox_starts_one_run_with_ids_only(
    mail_env: list[MailboxState], fake: FakeMultiMail, receiver: Receiver, answer_deployment: UUID
) -> None:
    sent = {}
    for state in _answering(mail_env):
        sent[state.audience] = fake.deliver_inbound(
            to=state.address, sender="ada@example.com", subject="Hello", markdown="Secret body"
        )
    deliveries = receiver.wait_delivered(len(sent))
    assert [d["status"] for d in deliveries] == ["delivered"] * len(sent)
    assert {d["response_status"] for d in deliveries} == {202}
    key = connection.current_settings().api_key
    assert key is not None
    for audience, email_id in sent.items():
        (run,) = runs_for(answer_deployment, email_id)
        assert run.parameters == {"email_id": email_id, "audience": audience}
        assert run.idempotency_key == run_key(email_id)
        assert set(run.tags) >= set(RUN_TAGS)
        recorded = json.dumps(run.model_dump(mode="json"))
        assert "Secret body" not in recorded
        assert "ada@example.com" not in recorded
        assert key.get_secret_value() not in recorded


def test_a_redelivery_or_a_second_delivery_id_gives_the_same_run(
    mail_env: list[MailboxState], fake: FakeMultiMail, receiver: Receiver, answer_deployment: UUID
) -> None:
    state = _answering(mail_env)[0]
    email_id = fake.deliver_inbound(
        to=state.address, sender="ada@example.com", subject="Order?", markdown="Where is it?"
    )
    receiver.wait_delivered(1)
    (run,) = runs_for(answer_deployment, email_id)

    same = _payload(email_id, state.mailbox_id)
    first = receiver.post(same)
    assert first.status_code == 202
    assert first.json()["flow_run_id"] == str(run.id)
    assert receiver.post(same).json()["status"] == "duplicate"
    receiver.restart()  # a restarted receiver remembers no delivery id
    for delivery_id in ("01JDELIVERY00000000000000A", "01JDELIVERY00000000000000B"):
        again = receiver.post(_payload(email_id, state.mailbox_id, delivery_id))
        assert again.status_code == 202
        assert again.json()["flow_run_id"] == str(run.id)
    assert [r.id for r in runs_answering(answer_deployment, email_id)] == [run.id]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_prefect_down_is_a_503_and_the_retry_starts_the_run(
    mail_env: list[MailboxState], fake: FakeMultiMail, receiver: Receiver, answer_deployment: UUID
) -> None:
    state = _answering(mail_env)[0]
    dead = f"http://127.0.0.1:{_closed_port()}/api"
    receiver.restart(prefect_client=lambda: PrefectClient(api=dead))
    email_id = fake.deliver_inbound(
        to=state.address, sender="bob@example.com", subject="Hi", markdown="Hello there"
    )
    (delivery,) = receiver.wait_delivered(1)
    assert delivery["response_status"] == 503  # every attempt, until MultiMail gave up
    assert delivery["attempts"] > 1
    assert runs_answering(answer_deployment, email_id) == []
    receiver.restart()  # Prefect is back; MultiMail (or reconcile-inbound) tries again
    up = receiver.post(_payload(email_id, state.mailbox_id, "01JDELIVERY00000000000000C"))
    assert up.status_code == 202
    assert len(runs_answering(answer_deployment, email_id)) == 1


def test_a_missing_deployment_is_a_503_that_names_it(
    mail_env: list[MailboxState], receiver: Receiver, answer_deployment: UUID
) -> None:
    state = _answering(mail_env)[0]
    receiver.restart(f"{ANSWER_INBOUND_FLOW}/nowhere")
    answer = receiver.post(_payload("01JNOSUCHEMAIL000000000000", state.mailbox_id))
    assert answer.status_code == 503
    assert f"{ANSWER_INBOUND_FLOW}/nowhere" in answer.json()["error"]


def test_a_forged_signature_is_401_and_starts_nothing(
    mail_env: list[MailboxState], receiver: Receiver, answer_deployment: UUID
) -> None:
    state = _answering(mail_env)[0]
    body = _payload("01JFORGED00000000000000000", state.mailbox_id)
    answer = receiver.post(body, signature=sign("a forged secret", body))
    assert answer.status_code == 401
    assert runs_answering(answer_deployment, "01JFORGED00000000000000000") == []


def test_outbound_own_or_foreign_mailbox_mail_starts_nothing(
    mail_env: list[MailboxState],
    fake: FakeMultiMail,
    client: MultiMailClient,
    receiver: Receiver,
    answer_deployment: UUID,
) -> None:
    states = _answering(mail_env)
    target = states[0]
    # Mail from one of the project's own mailboxes (a loop between audiences).
    own = fake.deliver_inbound(
        to=target.address, sender=mail_env[-1].address, subject="Status", markdown="Loop"
    )
    # Mail to a mailbox of the account that no audience owns.
    stranger = client.create_mailbox("not-an-audience-box")
    foreign = fake.deliver_inbound(
        to=stranger.address, sender="eve@example.com", subject="Hi", markdown="Hello"
    )
    deliveries = receiver.wait_delivered(2)
    assert {d["response_status"] for d in deliveries} == {200}
    # An outbound email announced as message.received (signed, so trusted, but not inbound).
    outbound = receiver.post(
        _payload("01JOUTBOUND000000000000000", target.mailbox_id, direction="outbound")
    )
    assert outbound.json() == {"status": "ignored", "reason": "not_inbound"}
    for email_id in (own, foreign, "01JOUTBOUND000000000000000"):
        assert runs_answering(answer_deployment, email_id) == []
