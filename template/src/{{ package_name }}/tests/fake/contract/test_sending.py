"""The fake follows the MultiMail contract: sending."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from ....fake import FakeMultiMail
from .support import ISO_Z_RE, ULID_RE, email, in_one_hour, send, upgrade_to


def test_send_is_accepted_then_held_for_approval(agent: httpx.Client, mailbox: str) -> None:
    response = send(agent, mailbox)
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "pending_scan"
    assert ULID_RE.match(body["id"])
    assert ULID_RE.match(body["thread_id"])
    read = email(agent, mailbox, body["id"])
    assert read["status"] == "pending_send_approval"
    assert read["delivered_at"] is None
    assert (read["from"], read["to"], read["direction"]) == (
        "agent@demo.multimail.dev",
        ["alice@example.com"],
        "outbound",
    )


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"to": []}, "to"),
        ({"to": [f"u{i}@example.com" for i in range(51)]}, "to"),
        ({"to": ["alice@example.com", "not-an-address"]}, "to[1]"),
        ({"subject": None}, "subject"),
        ({"subject": "x" * 999}, "subject"),
        ({"markdown": None}, "markdown"),
        ({"cc": ["nope"]}, "cc[0]"),
        ({"send_at": "2030-01-01T10:00:00+02:00"}, "send_at"),
        ({"attachments": [{"name": "a.txt", "content_base64": "%%%"}]}, "content_base64"),
    ],
)
def test_send_validation_names_the_field(
    agent: httpx.Client, mailbox: str, overrides: dict[str, Any], field: str
) -> None:
    body = {k: v for k, v in overrides.items() if v is not None}
    missing = [k for k, v in overrides.items() if v is None]
    payload: dict[str, Any] = {"to": ["a@example.com"], "subject": "S", "markdown": "M"}
    payload.update(body)
    for key in missing:
        del payload[key]
    response = agent.post(f"/v1/mailboxes/{mailbox}/send", json=payload)
    assert response.status_code == 400
    assert set(response.json()) == {"error"}
    assert field in response.json()["error"]
    assert agent.get(f"/v1/mailboxes/{mailbox}/emails").json()["emails"] == []


def test_send_on_read_only_mailbox_is_403_with_upgrade_hint(
    agent: httpx.Client, mailbox: str
) -> None:
    agent.patch(f"/v1/mailboxes/{mailbox}", json={"oversight_mode": "read_only"})
    response = send(agent, mailbox)
    assert response.status_code == 403
    assert "request-upgrade" in response.json()["error"]
    inbound = agent.get(f"/v1/mailboxes/{mailbox}/emails").json()["emails"]
    assert inbound == []


def test_idempotency_key_returns_original_for_24_hours(
    agent: httpx.Client, mailbox: str, fake_http: httpx.Client
) -> None:
    first = send(agent, mailbox, idempotency_key="order-42")
    assert first.status_code == 202
    repeat = send(agent, mailbox, idempotency_key="order-42", subject="changed")
    assert repeat.status_code == 200
    assert repeat.json() == {"id": first.json()["id"], "status": "already_sent", "idempotent": True}
    assert len(agent.get(f"/v1/mailboxes/{mailbox}/emails").json()["emails"]) == 1

    other = agent.post("/v1/mailboxes", json={"address_local": "other"}).json()["id"]
    assert send(agent, other, idempotency_key="order-42").status_code == 202  # per mailbox

    fake_http.post("/_fake/clock/advance", json={"seconds": 24 * 3600 + 1})
    later = send(agent, mailbox, idempotency_key="order-42")
    assert later.status_code == 202
    assert later.json()["id"] != first.json()["id"]


def test_identical_send_without_key_within_60_seconds_is_409(
    agent: httpx.Client, mailbox: str, fake_http: httpx.Client
) -> None:
    assert send(agent, mailbox).status_code == 202
    duplicate = send(agent, mailbox)
    assert duplicate.status_code == 409
    assert duplicate.json()["error"].startswith("Duplicate")
    assert send(agent, mailbox, subject="Other").status_code == 202
    assert send(agent, mailbox, idempotency_key="k1").status_code == 202
    fake_http.post("/_fake/clock/advance", json={"seconds": 61})
    assert send(agent, mailbox).status_code == 202
    assert send(agent, mailbox).status_code == 409  # a new window from the one just accepted


def test_identical_reply_within_60_seconds_is_409(
    fake: FakeMultiMail, agent: httpx.Client, mailbox: str
) -> None:
    inbound = fake.deliver_inbound(
        to=mailbox, sender="bob@example.com", subject="Question", markdown="?"
    )
    path = f"/v1/mailboxes/{mailbox}/reply/{inbound}"
    assert agent.post(path, json={"markdown": "Answer"}).status_code == 202
    response = agent.post(path, json={"markdown": "Answer"})
    assert response.status_code == 409
    assert response.json()["error"].startswith("Duplicate")
    keyed = agent.post(path, json={"markdown": "Answer", "idempotency_key": "r1"})
    assert keyed.status_code == 202
    again = agent.post(path, json={"markdown": "Answer", "idempotency_key": "r1"})
    assert again.json() == {"id": keyed.json()["id"], "status": "already_sent", "idempotent": True}


def test_autonomous_mailbox_sends_at_once(
    fake: FakeMultiMail, agent: httpx.Client, mailbox: str
) -> None:
    upgrade_to(fake, agent, mailbox, "autonomous")
    email_id = send(agent, mailbox).json()["id"]
    read = email(agent, mailbox, email_id)
    assert read["status"] == "sent"
    assert ISO_Z_RE.match(read["delivered_at"])
    assert [m["kind"] for m in fake.operator_inbox()] == ["upgrade_code"]
    assert agent.get("/v1/account").json()["emails_sent_this_month"] == 1


def test_monitored_mailbox_sends_and_copies_the_operator(
    fake: FakeMultiMail, agent: httpx.Client, mailbox: str
) -> None:
    upgrade_to(fake, agent, mailbox, "monitored")
    email_id = send(agent, mailbox, subject="Status report").json()["id"]
    assert email(agent, mailbox, email_id)["status"] == "sent"
    copy = fake.operator_inbox()[-1]
    assert copy["kind"] == "monitored_copy"
    assert copy["mailbox_id"] == mailbox
    assert "Status report" in copy["subject"]


def test_scan_delay_keeps_pending_scan_until_the_clock_moves(
    fake: FakeMultiMail, agent: httpx.Client, mailbox: str, fake_http: httpx.Client
) -> None:
    fake_http.post("/_fake/config", json={"scan_delay": 30})
    email_id = send(agent, mailbox).json()["id"]
    assert email(agent, mailbox, email_id)["status"] == "pending_scan"
    fake_http.post("/_fake/clock/advance", json={"seconds": 31})
    assert email(agent, mailbox, email_id)["status"] == "pending_send_approval"


def test_scheduled_send_goes_out_when_due(
    fake: FakeMultiMail, agent: httpx.Client, mailbox: str, fake_http: httpx.Client
) -> None:
    upgrade_to(fake, agent, mailbox, "autonomous")
    send_at = in_one_hour(fake_http)
    email_id = send(agent, mailbox, send_at=send_at).json()["id"]
    read = email(agent, mailbox, email_id)
    assert read["status"] == "scheduled"
    assert read["send_at"] == send_at.replace("Z", ".000Z")
    fake_http.post("/_fake/clock/advance", json={"seconds": 1800})
    assert email(agent, mailbox, email_id)["status"] == "scheduled"
    fake_http.post("/_fake/clock/advance", json={"seconds": 1801})
    assert email(agent, mailbox, email_id)["status"] == "sent"


def test_gated_scheduled_send_is_approved_first_then_sent_when_due(
    agent: httpx.Client, operator: httpx.Client, mailbox: str, fake_http: httpx.Client
) -> None:
    email_id = send(agent, mailbox, send_at=in_one_hour(fake_http)).json()["id"]
    assert email(agent, mailbox, email_id)["status"] == "pending_send_approval"
    decided = operator.post(
        "/v1/oversight/decide", json={"email_id": email_id, "action": "approve"}
    )
    assert decided.status_code == 200
    assert email(agent, mailbox, email_id)["status"] == "scheduled"
    cancel = agent.post(f"/v1/mailboxes/{mailbox}/emails/{email_id}/cancel")
    assert cancel.status_code == 409  # approved: too late to cancel
    fake_http.post("/_fake/clock/advance", json={"seconds": 3601})
    assert email(agent, mailbox, email_id)["status"] == "sent"


def test_attachments_are_listed_with_size(agent: httpx.Client, mailbox: str) -> None:
    content = base64.b64encode(b"hello world").decode()
    attachment = {"name": "a.txt", "content_base64": content, "content_type": "text/plain"}
    email_id = send(agent, mailbox, attachments=[attachment]).json()["id"]
    read = email(agent, mailbox, email_id)
    assert read["has_attachments"] is True
    assert read["attachments"] == [{"name": "a.txt", "size": 11, "content_type": "text/plain"}]
