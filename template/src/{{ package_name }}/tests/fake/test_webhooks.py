"""Webhook subscriptions and signed, retried deliveries of the fake MultiMail server."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from ...fake import FakeMultiMail


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def payload(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.body)
        return result


@dataclass
class Receiver:
    """A local HTTP server that records webhook requests and answers with scripted statuses."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)

    def events(self) -> list[str]:
        return [r.payload["event"] for r in self.received]

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.received) >= count, self.events()
        return self.received


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    recorder = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            recorder.received.append(Received(dict(self.headers.items()), body))
            self.send_response(recorder.statuses.pop(0) if recorder.statuses else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    recorder.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    yield recorder
    server.shutdown()
    server.server_close()


@pytest.fixture
def agent(fake: FakeMultiMail) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {fake.create_key(['admin', 'send'])}"}
    with httpx.Client(base_url=fake.base_url, headers=headers, trust_env=False, timeout=5) as c:
        yield c


@pytest.fixture
def operator(fake: FakeMultiMail) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {fake.create_key(['oversight'])}"}
    with httpx.Client(base_url=fake.base_url, headers=headers, trust_env=False, timeout=5) as c:
        yield c


@pytest.fixture
def mailbox(agent: httpx.Client) -> str:
    mailbox_id: str = agent.post("/v1/mailboxes", json={"address_local": "agent"}).json()["id"]
    return mailbox_id


Subscribe = Callable[..., dict[str, Any]]


@pytest.fixture
def subscribe(agent: httpx.Client, receiver: Receiver) -> Subscribe:
    def make(*events: str, **extra: Any) -> dict[str, Any]:
        response = agent.post(
            "/v1/webhooks", json={"url": receiver.url, "events": list(events), **extra}
        )
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    return make


def send(agent: httpx.Client, mailbox_id: str, **extra: Any) -> str:
    body = {"to": ["alice@example.com"], "subject": "Hello", "markdown": "Hi *there*", **extra}
    response = agent.post(f"/v1/mailboxes/{mailbox_id}/send", json=body)
    assert response.status_code == 202
    email_id: str = response.json()["id"]
    return email_id


def test_subscription_crud_hides_secrets_in_lists(
    agent: httpx.Client, subscribe: Subscribe
) -> None:
    created = subscribe("message.received")
    assert created["signing_secret"].startswith("whsec_")
    assert {"id", "url", "events", "mailbox_id", "created_at"} <= set(created)
    listed = agent.get("/v1/webhooks").json()
    assert listed["subscriptions"] == listed["webhooks"]
    assert [s["id"] for s in listed["webhooks"]] == [created["id"]]
    assert "signing_secret" not in listed["webhooks"][0]
    assert created["signing_secret"] not in json.dumps(listed)
    one = agent.get(f"/v1/webhooks/{created['id']}").json()
    assert one["signing_secret"] == created["signing_secret"]
    assert agent.delete(f"/v1/webhooks/{created['id']}").json() == {"status": "deleted"}
    assert agent.get(f"/v1/webhooks/{created['id']}").status_code == 404
    assert agent.get("/v1/webhooks").json()["webhooks"] == []


@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("https://hooks.example.com/x", 201),
        ("http://localhost:9/x", 201),
        ("http://127.0.0.1:9/x", 201),
        ("http://hooks.example.com/x", 400),
        ("http://localhost.evil.example/x", 400),
        ("ftp://example.com/x", 400),
    ],
)
def test_webhook_url_must_be_https_or_local(agent: httpx.Client, url: str, status: int) -> None:
    response = agent.post("/v1/webhooks", json={"url": url, "events": ["message.sent"]})
    assert response.status_code == status
    if status == 400:
        assert "url" in response.json()["error"]


def test_webhook_events_are_validated(agent: httpx.Client) -> None:
    url = "https://hooks.example.com/x"
    response = agent.post("/v1/webhooks", json={"url": url, "events": ["message.exploded"]})
    assert response.status_code == 400
    assert "events" in response.json()["error"]
    assert agent.post("/v1/webhooks", json={"url": url, "events": []}).status_code == 400


def test_webhooks_need_admin(fake: FakeMultiMail) -> None:
    headers = {"Authorization": f"Bearer {fake.create_key(['read', 'send'])}"}
    response = httpx.get(f"{fake.base_url}/v1/webhooks", headers=headers, trust_env=False)
    assert response.status_code == 403
    assert "admin" in response.json()["error"]


def test_message_received_is_signed_and_carries_the_body(
    fake: FakeMultiMail, subscribe: Subscribe, receiver: Receiver, mailbox: str
) -> None:
    secret = subscribe("email.received")["signing_secret"]  # the alias
    email_id = fake.deliver_inbound(
        to=mailbox, sender="bob@example.com", subject="Question", markdown="**Why?**"
    )
    [hit] = receiver.wait_for(1)
    expected = "sha256=" + hmac.new(secret.encode(), hit.body, hashlib.sha256).hexdigest()
    assert hit.headers["X-MultiMail-Signature"] == expected
    payload = hit.payload
    assert payload["event"] == "message.received"
    assert payload["timestamp"].endswith("Z")
    assert len(payload["id"]) == 26
    data = payload["data"]
    assert data["email_id"] == email_id
    assert data["mailbox_id"] == mailbox
    assert (data["from"], data["to"]) == ("bob@example.com", ["agent@demo.multimail.dev"])
    assert (data["subject"], data["markdown"], data["direction"]) == (
        "Question",
        "**Why?**",
        "inbound",
    )
    assert {"thread_id", "has_attachments", "tags"} <= set(data)


def test_approval_flow_emits_pending_approved_sent_delivered(
    agent: httpx.Client,
    operator: httpx.Client,
    subscribe: Subscribe,
    receiver: Receiver,
    mailbox: str,
) -> None:
    subscribe("oversight.pending", "oversight.approved", "message.sent", "message.delivered")
    email_id = send(agent, mailbox)
    receiver.wait_for(1)
    operator.post("/v1/oversight/decide", json={"email_id": email_id, "action": "approve"})
    receiver.wait_for(4)
    assert receiver.events() == [
        "oversight.pending",
        "oversight.approved",
        "message.sent",
        "message.delivered",
    ]
    assert {r.payload["data"]["email_id"] for r in receiver.received} == {email_id}


def test_rejection_and_bounce_events(
    agent: httpx.Client,
    operator: httpx.Client,
    subscribe: Subscribe,
    receiver: Receiver,
    mailbox: str,
) -> None:
    subscribe("oversight.rejected", "message.bounced")
    rejected = send(agent, mailbox)
    operator.post(
        "/v1/oversight/decide", json={"email_id": rejected, "action": "reject", "reason": "no"}
    )
    bounced = send(agent, mailbox, to=["ghost@bounce.example"])
    operator.post("/v1/oversight/decide", json={"email_id": bounced, "action": "approve"})
    receiver.wait_for(2)
    assert receiver.events() == ["oversight.rejected", "message.bounced"]
    assert receiver.received[0].payload["data"]["reason"] == "no"
    assert receiver.received[1].payload["data"]["email_id"] == bounced
    status = agent.get(f"/v1/mailboxes/{mailbox}/emails/{bounced}").json()["status"]
    assert status == "send_failed"


def test_subscription_for_one_mailbox_ignores_others(
    fake: FakeMultiMail, agent: httpx.Client, subscribe: Subscribe, receiver: Receiver, mailbox: str
) -> None:
    other = agent.post("/v1/mailboxes", json={"address_local": "other"}).json()["id"]
    subscribe("message.received", mailbox_id=mailbox)
    fake.deliver_inbound(to=other, sender="b@example.com", subject="other", markdown=".")
    fake.deliver_inbound(to=mailbox, sender="b@example.com", subject="mine", markdown=".")
    receiver.wait_for(1)
    time.sleep(0.1)
    assert [r.payload["data"]["subject"] for r in receiver.received] == ["mine"]


def test_failed_delivery_is_retried_with_the_same_id(
    fake: FakeMultiMail, agent: httpx.Client, subscribe: Subscribe, receiver: Receiver, mailbox: str
) -> None:
    subscribe("message.received")
    receiver.statuses = [500, 503]
    fake.deliver_inbound(to=mailbox, sender="b@example.com", subject="s", markdown=".")
    hits = receiver.wait_for(3)
    assert len({hit.payload["id"] for hit in hits}) == 1
    assert len({hit.headers["X-MultiMail-Signature"] for hit in hits}) == 1
    time.sleep(0.05)
    [delivery] = agent.get("/v1/webhook-deliveries").json()["deliveries"]
    assert delivery["id"] == hits[0].payload["id"]
    assert (delivery["status"], delivery["attempts"], delivery["response_status"]) == (
        "delivered",
        3,
        200,
    )
    assert delivery["event_type"] == "message.received"
    assert delivery["url"] == receiver.url


def test_delivery_gives_up_after_three_retries(
    fake: FakeMultiMail, agent: httpx.Client, subscribe: Subscribe, receiver: Receiver, mailbox: str
) -> None:
    fake.state.configure(webhook_backoff=0.01)  # retries after 0.01, 0.02 and 0.04 s
    subscribe("message.received")
    receiver.statuses = [500] * 10
    fake.deliver_inbound(to=mailbox, sender="b@example.com", subject="s", markdown=".")
    receiver.wait_for(4)
    deadline = time.monotonic() + 5
    while True:
        [delivery] = agent.get("/v1/webhook-deliveries").json()["deliveries"]
        if delivery["status"] != "pending" or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert (delivery["status"], delivery["attempts"], delivery["response_status"]) == (
        "failed",
        4,
        500,
    )
    time.sleep(0.2)  # backoff would have brought a fifth attempt by now
    assert len(receiver.received) == 4


def test_deliveries_log_is_paginated_newest_first(
    fake: FakeMultiMail, agent: httpx.Client, subscribe: Subscribe, receiver: Receiver, mailbox: str
) -> None:
    subscribe("message.received")
    for index in range(3):
        fake.deliver_inbound(to=mailbox, sender="b@example.com", subject=str(index), markdown=".")
    receiver.wait_for(3)
    first = agent.get("/v1/webhook-deliveries", params={"limit": 2}).json()
    second = agent.get(
        "/v1/webhook-deliveries", params={"limit": 2, "cursor": first["cursor"]}
    ).json()
    ids = [d["id"] for d in first["deliveries"] + second["deliveries"]]
    assert ids == sorted(ids, reverse=True)
    assert len(ids) == 3
    assert second["cursor"] is None
