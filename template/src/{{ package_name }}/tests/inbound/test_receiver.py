"""The webhook receiver, over HTTP on loopback: it trusts nothing unsigned, acts on each delivery
once, and asks MultiMail to retry when the flow run is not ready. The fake's own signer makes
the signatures, so the receiver is checked against an implementation it does not share."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from ...fake import sign
from ...fake.background import BackgroundServer
from ...inbound.receiver import SIGNATURE_HEADER, TagReader, create_receiver
from ...multimail.client import MultiMailClient
from ...oversight.approvals import ResumeOutcome, waiter_tag

SECRET = "whsec_" + "5e" * 16
RUN_ID = "5b0f1a8e-0000-4000-8000-000000000001"
OTHER_RUN_ID = "5b0f1a8e-0000-4000-8000-000000000002"
#: The tag a run suspended on email em-1 leaves on it.
WAITING = {waiter_tag(RUN_ID): "my-project-decision-em-1"}


class Receiver:
    """A running receiver whose Prefect side records what it was asked to resume.

    `prefect_down` makes that side fail as the Prefect client does when nothing answers at
    PREFECT_API_URL; `read_tags` replaces the email-tag reader (MultiMail's side)."""

    def __init__(
        self,
        outcome: ResumeOutcome = "resumed",
        tags: dict[str, str] | None = None,
        read_tags: TagReader | None = None,
    ):
        self.resumed: list[str] = []
        self.tag_reads: list[tuple[str, str]] = []
        self.prefect_down = False
        self._outcome = outcome
        self._tags = tags or {}

        async def resume(email_id: str, tags: dict[str, Any]) -> dict[str, ResumeOutcome]:
            if self.prefect_down:
                raise httpx.ConnectError("All connection attempts failed")
            runs = [name.removeprefix("prefect-flow-run-") for name in tags]
            self.resumed.extend(runs)
            return dict.fromkeys(runs, self._outcome)

        def recorded_read_tags(mailbox_id: str, email_id: str) -> dict[str, str]:
            self.tag_reads.append((mailbox_id, email_id))
            return self._tags

        self.app = create_receiver(
            SecretStr(SECRET), read_tags=read_tags or recorded_read_tags, resume=resume
        )

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


@pytest.mark.parametrize("outcome", ["not_suspended_yet", "not_resumed"])
def test_a_run_not_resumed_yet_makes_multimail_retry(outcome: ResumeOutcome) -> None:
    receiver = Receiver(outcome=outcome)
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


def _closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_decision_while_prefect_is_unreachable_is_a_503_and_the_retry_is_acted_on() -> None:
    receiver = Receiver()
    receiver.prefect_down = True
    body = delivery(tags=WAITING)
    down = receiver.post(body)
    assert down.status_code == 503
    assert "Prefect" in down.json()["error"]
    assert receiver.resumed == []
    receiver.prefect_down = False  # Prefect is back; MultiMail redelivers the same delivery
    again = receiver.post(body)
    assert again.status_code == 200
    assert again.json()["flow_runs"] == {RUN_ID: "resumed"}
    assert receiver.resumed == [RUN_ID]


def test_a_decision_while_multimail_is_unreachable_is_a_503_not_marked_seen() -> None:
    """The delivery carries no tags, and MultiMail, which holds them, does not answer."""
    dead = f"http://127.0.0.1:{_closed_port()}"
    with MultiMailClient(dead, SecretStr("mm_live_" + "7" * 32), timeout=5) as unreachable:
        receiver = Receiver(read_tags=unreachable.get_tags)
        body = delivery(event="oversight.rejected")
        for _ in range(2):  # each retry is tried again, not answered as a duplicate
            answer = receiver.post(body)
            assert answer.status_code == 503
            assert "MultiMail" in answer.json()["error"]
    assert receiver.resumed == []


def test_a_signing_secret_that_cannot_be_loaded_yet_is_a_503_until_it_can() -> None:
    """`receiver serve` passes a loader (a Prefect Secret block needs the API): a delivery
    is not judged before the secret is known, and the secret is loaded once it can be."""
    loads: list[str] = []

    def load() -> SecretStr:
        loads.append("try")
        if len(loads) == 1:
            raise httpx.ConnectError("All connection attempts failed")
        return SecretStr(SECRET)

    app = create_receiver(load, read_tags=lambda mailbox_id, email_id: {})
    body = delivery(event="message.received")
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(SECRET, body)}
    with BackgroundServer(app, name="receiver") as server:
        url = f"{server.base_url}/multimail/webhook"
        assert httpx.get(f"{server.base_url}/healthz").status_code == 200
        unverified = httpx.post(url, content=body, headers=headers)
        assert unverified.status_code == 503
        assert "signing secret" in unverified.json()["error"]
        assert httpx.post(url, content=body, headers=headers).json()["status"] == "ignored"
        forged = {**headers, SIGNATURE_HEADER: sign("whsec_other", body)}
        assert httpx.post(url, content=body, headers=forged).status_code == 401
    assert loads == ["try", "try"]  # loaded once, then kept


def test_a_handler_that_fails_is_a_503_never_a_500() -> None:
    async def broken(data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        raise RuntimeError("the Prefect client gave up")

    app = create_receiver(
        SecretStr(SECRET),
        read_tags=lambda mailbox_id, email_id: {},
        handlers={"message.received": broken},
    )
    body = delivery(event="message.received")
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(SECRET, body)}
    with BackgroundServer(app, name="receiver") as server:
        answer = httpx.post(f"{server.base_url}/multimail/webhook", content=body, headers=headers)
    assert answer.status_code == 503
    assert "RuntimeError" in answer.json()["error"]
