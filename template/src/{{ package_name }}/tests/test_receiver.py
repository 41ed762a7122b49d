"""The webhook receiver, over HTTP on loopback: it trusts nothing unsigned, acts on each delivery
once, and asks MultiMail to retry when the flow run is not ready. The fake's own signer makes
the signatures, so the receiver is checked against an implementation it does not share."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from ..approvals import ResumeOutcome, waiter_tag
from ..fake import sign
from ..receiver import SIGNATURE_HEADER, create_receiver
from ..serving import BackgroundServer

SECRET = "whsec_" + "5e" * 16
RUN_ID = "5b0f1a8e-0000-4000-8000-000000000001"
OTHER_RUN_ID = "5b0f1a8e-0000-4000-8000-000000000002"
#: The tag a run suspended on email em-1 leaves on it.
WAITING = {waiter_tag(RUN_ID): "my-project-decision-em-1"}


class Receiver:
    """A running receiver whose Prefect side records what it was asked to resume."""

    def __init__(self, outcome: ResumeOutcome = "resumed", tags: dict[str, str] | None = None):
        self.resumed: list[str] = []
        self.tag_reads: list[tuple[str, str]] = []
        self._outcome = outcome
        self._tags = tags or {}

        async def resume(email_id: str, tags: dict[str, Any]) -> dict[str, ResumeOutcome]:
            runs = [name.removeprefix("prefect-flow-run-") for name in tags]
            self.resumed.extend(runs)
            return dict.fromkeys(runs, self._outcome)

        def read_tags(mailbox_id: str, email_id: str) -> dict[str, str]:
            self.tag_reads.append((mailbox_id, email_id))
            return self._tags

        self.app = create_receiver(SecretStr(SECRET), read_tags=read_tags, resume=resume)

    def post(self, body: bytes, signature: str | None = None) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        signature = sign(SECRET, body) if signature is None else signature
        if signature:
            headers[SIGNATURE_HEADER] = signature
        with BackgroundServer(self.app, name="receiver") as server:
            return httpx.post(f"{server.base_url}/multimail/webhook", content=body, headers=headers)


def delivery(event: str = "oversight.approved", delivery_id: str = "dlv-1", **data: Any) -> bytes:
    payload = {
        "event": event,
        "id": delivery_id,
        "timestamp": "2026-11-25T10:00:00Z",
        "data": {"email_id": "em-1", "mailbox_id": "mb-1", **data},
    }
    return json.dumps(payload).encode()


@pytest.mark.parametrize(
    "signature",
    ["", "sha256=" + "0" * 64, sign("whsec_other", delivery()).replace("sha256=", "")],
    ids=["missing", "wrong", "no-prefix"],
)
def test_an_unsigned_or_badly_signed_delivery_is_refused_with_the_fix(signature: str) -> None:
    receiver = Receiver()
    answer = receiver.post(delivery(tags=WAITING), signature)
    assert answer.status_code == 401
    assert "signing secret" in answer.json()["error"]
    assert receiver.resumed == []


def test_a_signature_over_other_bytes_is_refused() -> None:
    receiver = Receiver()
    signed = delivery(tags=WAITING)
    tampered = delivery(tags={waiter_tag(OTHER_RUN_ID): "x"})
    assert receiver.post(tampered, sign(SECRET, signed)).status_code == 401
    assert receiver.resumed == []


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"event": "oversight.approved"}',
        b'{"event": "x", "id": "1", "data": 3}',
    ],
)
def test_a_body_that_is_not_a_delivery_is_a_400(body: bytes) -> None:
    answer = Receiver().post(body)
    assert answer.status_code == 400
    assert "event, id, data" in answer.json()["error"]


def test_a_decision_resumes_the_run_named_by_the_email_tag() -> None:
    receiver = Receiver()
    answer = receiver.post(delivery(tags=WAITING))
    assert answer.status_code == 200
    assert answer.json()["flow_runs"] == {RUN_ID: "resumed"}
    assert receiver.resumed == [RUN_ID]
    assert receiver.tag_reads == []  # the delivery carried the tag


def test_every_run_waiting_on_the_email_is_resumed() -> None:
    receiver = Receiver()
    both = {**WAITING, waiter_tag(OTHER_RUN_ID): "my-project-decision-em-1"}
    answer = receiver.post(delivery(tags=both))
    assert answer.json()["flow_runs"] == {RUN_ID: "resumed", OTHER_RUN_ID: "resumed"}


def test_without_tags_in_the_payload_the_receiver_reads_them() -> None:
    receiver = Receiver(tags=WAITING)
    answer = receiver.post(delivery(event="oversight.rejected"))
    assert answer.json()["flow_runs"] == {RUN_ID: "resumed"}
    assert receiver.tag_reads == [("mb-1", "em-1")]
    assert receiver.resumed == [RUN_ID]


def test_a_redelivery_is_answered_but_not_acted_on_twice() -> None:
    receiver = Receiver()
    body = delivery(tags=WAITING)
    assert receiver.post(body).json()["flow_runs"] == {RUN_ID: "resumed"}
    again = receiver.post(body)
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert receiver.resumed == [RUN_ID]


def test_a_run_not_suspended_yet_makes_multimail_retry() -> None:
    receiver = Receiver(outcome="not_suspended_yet")
    body = delivery(tags=WAITING)
    assert receiver.post(body).status_code == 503
    assert receiver.post(body).status_code == 503  # not marked seen: the retry is acted on
    assert receiver.resumed == [RUN_ID, RUN_ID]


@pytest.mark.parametrize(
    ("make", "status"),
    [
        (lambda: delivery(event="message.received"), "ignored"),
        (lambda: delivery(tags={}), "ignored"),  # no flow run waits for this email
    ],
)
def test_what_resumes_nothing_is_acknowledged(make: Callable[[], bytes], status: str) -> None:
    receiver = Receiver()
    answer = receiver.post(make())
    assert answer.status_code == 200
    assert answer.json()["status"] == status
    assert receiver.resumed == []
