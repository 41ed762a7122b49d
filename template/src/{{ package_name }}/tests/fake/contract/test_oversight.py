"""The fake follows the MultiMail contract: oversight."""

from __future__ import annotations

import httpx
import pytest

from ....fake import FakeMultiMail
from .support import ISO_Z_RE, Connect, audit, email, send


def test_pending_is_listed_under_emails_and_pending(
    fake: FakeMultiMail, agent: httpx.Client, operator: httpx.Client, mailbox: str
) -> None:
    email_id = send(agent, mailbox, subject="Needs OK", markdown="Body").json()["id"]
    listed = operator.get("/v1/oversight/pending").json()
    assert listed["emails"] == listed["pending"]
    [item] = listed["emails"]
    assert item == {
        "id": email_id,
        "mailbox_id": mailbox,
        "direction": "outbound",
        "from": "agent@demo.multimail.dev",
        "to": ["alice@example.com"],
        "subject": "Needs OK",
        "body_markdown": "Body",
        "status": "pending_send_approval",
        "received_at": item["received_at"],
    }
    notice = fake.operator_inbox()[-1]
    assert notice["kind"] == "approval_notice"
    assert "Needs OK" in notice["subject"]


def test_approve_sends_and_records_approver(
    agent: httpx.Client, operator: httpx.Client, connect: Connect, mailbox: str
) -> None:
    email_id = send(agent, mailbox).json()["id"]
    response = operator.post(
        "/v1/oversight/decide", json={"email_id": email_id, "action": "approve", "reason": "fine"}
    )
    assert response.json() == {"status": "approved_and_sent"}
    read = email(agent, mailbox, email_id)
    assert read["status"] == "sent"
    assert ISO_Z_RE.match(read["approved_at"])
    assert read["approved_by"]
    assert operator.get("/v1/oversight/pending").json()["emails"] == []
    again = operator.post("/v1/oversight/decide", json={"email_id": email_id, "action": "reject"})
    assert again.status_code == 409
    entry = next(e for e in audit(agent) if e["action"] == "oversight.decide")
    assert entry["metadata"]["action"] == "approve"
    assert entry["metadata"]["reason"] == "fine"
    assert entry["metadata"]["approval_status"] == "approved_and_sent"
    assert entry["resource_id"] == email_id


def test_reject_keeps_the_reason_in_the_audit_log(
    agent: httpx.Client, operator: httpx.Client, mailbox: str
) -> None:
    email_id = send(agent, mailbox).json()["id"]
    response = operator.post(
        "/v1/oversight/decide",
        json={"email_id": email_id, "action": "reject", "reason": "wrong tone"},
    )
    assert response.json() == {"status": "rejected"}
    assert email(agent, mailbox, email_id)["status"] == "rejected"
    entry = next(e for e in audit(agent) if e["action"] == "oversight.decide")
    assert entry["metadata"]["reason"] == "wrong tone"
    assert entry["metadata"]["approval_status"] == "rejected"


def test_decide_unknown_email_is_404_and_bad_action_400(operator: httpx.Client) -> None:
    response = operator.post("/v1/oversight/decide", json={"email_id": "nope", "action": "approve"})
    assert response.status_code == 404
    response = operator.post("/v1/oversight/decide", json={"email_id": "nope", "action": "maybe"})
    assert response.status_code == 400
    assert "action" in response.json()["error"]


def test_gated_all_holds_inbound_until_approved(
    fake: FakeMultiMail, agent: httpx.Client, operator: httpx.Client, mailbox: str
) -> None:
    agent.patch(f"/v1/mailboxes/{mailbox}", json={"oversight_mode": "gated_all"})
    email_id = fake.deliver_inbound(
        to=mailbox, sender="bob@example.com", subject="In", markdown="?"
    )
    assert email(agent, mailbox, email_id)["status"] == "pending_inbound_approval"
    [item] = operator.get("/v1/oversight/pending").json()["emails"]
    assert (item["id"], item["direction"]) == (email_id, "inbound")
    response = operator.post(
        "/v1/oversight/decide", json={"email_id": email_id, "action": "approve"}
    )
    assert response.json() == {"status": "approved"}
    assert email(agent, mailbox, email_id)["status"] == "read"

    sent = send(agent, mailbox).json()["id"]
    assert email(agent, mailbox, sent)["status"] == "pending_send_approval"


def test_deliver_inbound_to_unknown_mailbox_fails(fake: FakeMultiMail) -> None:
    with pytest.raises(ValueError, match="mailbox"):
        fake.deliver_inbound(
            to="nobody@demo.multimail.dev", sender="a@b.example", subject="", markdown=""
        )
