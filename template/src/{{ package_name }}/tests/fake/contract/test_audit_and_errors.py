"""The fake follows the MultiMail contract: audit, account, errors."""

from __future__ import annotations

import httpx

from ....fake import FakeMultiMail
from .support import ISO_Z_RE, ULID_RE, audit, send


def test_audit_log_records_changes_with_metadata(
    fake: FakeMultiMail, agent: httpx.Client, mailbox: str
) -> None:
    sent = send(agent, mailbox, subject="Audit me").json()["id"]
    inbound = fake.deliver_inbound(to=mailbox, sender="b@example.com", subject="Q", markdown=".")
    agent.post(f"/v1/mailboxes/{mailbox}/reply/{inbound}", json={"markdown": "A"})
    agent.post(f"/v1/mailboxes/{mailbox}/emails/{sent}/cancel")
    agent.put(f"/v1/mailboxes/{mailbox}/emails/{sent}/tags", json={"tags": {"k": "v"}})
    hook = agent.post(
        "/v1/webhooks", json={"url": "https://example.com/h", "events": ["message.sent"]}
    )
    agent.delete(f"/v1/webhooks/{hook.json()['id']}")
    entries = audit(agent)
    actions = [e["action"] for e in entries]
    assert actions[:7] == [
        "webhook.delete",
        "webhook.create",
        "email.tag",
        "email.cancel",
        "email.reply",
        "email.send",
        "mailbox.create",
    ]
    send_entry = entries[5]
    assert send_entry["metadata"] == {
        "from": "agent@demo.multimail.dev",
        "to": ["alice@example.com"],
        "subject": "Audit me",
        "oversight_mode": "gated_send",
        "status": "pending_scan",
    }
    assert send_entry["resource_type"] == "email"
    assert send_entry["resource_id"] == sent
    assert send_entry["actor_key_id"]
    assert ISO_Z_RE.match(send_entry["created_at"])
    assert "whsec_" not in str(entries)
    first = agent.get("/v1/audit-log", params={"limit": 3}).json()
    second = agent.get("/v1/audit-log", params={"limit": 3, "cursor": first["cursor"]}).json()
    assert [e["id"] for e in first["entries"] + second["entries"]] == [e["id"] for e in entries[:6]]


def test_account(agent: httpx.Client) -> None:
    account = agent.get("/v1/account").json()
    assert account["slug"] == "demo"
    assert account["oversight_email"] == "operator@demo.example"
    assert {
        "id",
        "name",
        "plan",
        "monthly_email_quota",
        "emails_sent_this_month",
        "max_mailboxes",
        "is_active",
        "sending_disabled",
    } <= set(account)


def test_errors_are_always_error_objects(agent: httpx.Client, mailbox: str) -> None:
    checks = [
        agent.get("/v1/no-such-route"),
        agent.get("/no-such-route"),
        agent.put("/v1/account"),
        agent.post(
            f"/v1/mailboxes/{mailbox}/send",
            content=b"{not json",
            headers={"Content-Type": "application/json"},
        ),
        agent.post(f"/v1/mailboxes/{mailbox}/send", json=["a list"]),
    ]
    assert [r.status_code for r in checks] == [404, 404, 405, 400, 400]
    assert checks[2].headers["Allow"] == "GET"
    for response in checks:
        assert set(response.json()) == {"error"}, response.text


def test_ids_are_increasing_ulids(agent: httpx.Client, mailbox: str) -> None:
    ids = [send(agent, mailbox, subject=str(i)).json()["id"] for i in range(5)]
    assert all(ULID_RE.match(i) for i in ids)
    assert ids == sorted(ids)
