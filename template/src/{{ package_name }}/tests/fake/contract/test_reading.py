"""The fake follows the MultiMail contract: reading, listing, tags, threads."""

from __future__ import annotations

from typing import Any

import httpx

from ....fake import FakeMultiMail
from .support import ISO_Z_RE, email, send


def test_list_filters_and_cursor_pagination(
    fake: FakeMultiMail, agent: httpx.Client, mailbox: str
) -> None:
    sent = [send(agent, mailbox, subject=f"Report {i}").json()["id"] for i in range(3)]
    inbound = [
        fake.deliver_inbound(
            to=mailbox, sender=f"{who}@example.com", subject=f"From {who}", markdown="."
        )
        for who in ("bob", "carol")
    ]
    path = f"/v1/mailboxes/{mailbox}/emails"
    everything = agent.get(path).json()
    assert [e["id"] for e in everything["emails"]] == [*reversed(sent + inbound)]
    assert everything["cursor"] is None

    pages: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = agent.get(path, params=params).json()
        pages.extend(e["id"] for e in page["emails"])
        cursor = page["cursor"]
        if cursor is None:
            break
    assert pages == [*reversed(sent + inbound)]

    def ids(**params: Any) -> list[str]:
        return [e["id"] for e in agent.get(path, params=params).json()["emails"]]

    assert ids(direction="inbound") == inbound[::-1]
    assert ids(status="pending_send_approval") == sent[::-1]
    assert ids(sender="carol") == [inbound[1]]
    assert ids(subject_contains="report 1") == [sent[1]]
    assert ids(since_id=sent[2]) == inbound[::-1]
    assert agent.get(path, params={"limit": 0}).status_code == 400
    assert agent.get(path, params={"status": "bogus"}).status_code == 400
    assert len(ids(limit=1000)) == 5


def test_read_marks_unread_as_read_and_has_aliases(
    fake: FakeMultiMail, agent: httpx.Client, mailbox: str
) -> None:
    email_id = fake.deliver_inbound(
        to="agent@demo.multimail.dev", sender="bob@example.com", subject="Hi", markdown="**Hello**"
    )
    [summary] = agent.get(f"/v1/mailboxes/{mailbox}/emails").json()["emails"]
    assert summary["status"] == "unread"
    read = email(agent, mailbox, email_id)
    assert read["status"] == "read"
    assert email(agent, mailbox, email_id)["status"] == "read"
    assert read["from_address"] == read["from"] == "bob@example.com"
    assert read["to_addresses"] == read["to"] == ["agent@demo.multimail.dev"]
    assert read["text_body"] == read["markdown"] == "**Hello**"
    assert read["created_at"] == read["received_at"]
    assert ISO_Z_RE.match(read["received_at"])
    assert {"cc", "attachments", "approved_at", "approved_by", "tags"} <= set(read)


def test_unknown_email_and_mailbox_are_404(agent: httpx.Client, mailbox: str) -> None:
    assert (
        agent.get(f"/v1/mailboxes/{mailbox}/emails/01ARZ3NDEKTSV4RRFFQ69G5FAV").status_code == 404
    )
    assert agent.get("/v1/mailboxes/nope/emails").status_code == 404
    assert send(agent, "nope").status_code == 404


def test_tags_merge_and_delete(agent: httpx.Client, mailbox: str) -> None:
    email_id = send(agent, mailbox).json()["id"]
    path = f"/v1/mailboxes/{mailbox}/emails/{email_id}/tags"
    assert agent.get(path).json() == {"tags": {}}
    assert agent.put(path, json={"tags": {"a": "1", "b": "2"}}).json() == {
        "tags": {"a": "1", "b": "2"}
    }
    assert agent.put(path, json={"tags": {"b": "3", "c": "4"}}).json() == {
        "tags": {"a": "1", "b": "3", "c": "4"}
    }
    assert agent.delete(f"{path}/a").json() == {"deleted": True}
    assert agent.get(path).json() == {"tags": {"b": "3", "c": "4"}}
    assert agent.delete(f"{path}/a").status_code == 404
    assert email(agent, mailbox, email_id)["tags"] == {"b": "3", "c": "4"}
    assert agent.put(path, json={"tags": {"a": 1}}).status_code == 400


def test_thread_links_send_inbound_answer_and_reply(
    fake: FakeMultiMail, agent: httpx.Client, mailbox: str
) -> None:
    first = send(agent, mailbox, subject="Offer").json()
    other = send(agent, mailbox, subject="Unrelated").json()
    assert first["thread_id"] != other["thread_id"]
    answer = fake.deliver_inbound(
        to=mailbox,
        sender="alice@example.com",
        subject="Re: Offer",
        markdown="Yes",
        in_reply_to=first["id"],
    )
    path = f"/v1/mailboxes/{mailbox}/threads/{first['thread_id']}"
    thread = agent.get(path).json()
    assert [e["id"] for e in thread["emails"]] == [first["id"], answer]
    assert thread["message_count"] == 2
    assert thread["has_unanswered_inbound"] is True
    assert set(thread["participants"]) == {"agent@demo.multimail.dev", "alice@example.com"}
    assert all("markdown" not in e for e in thread["emails"])

    reply = agent.post(f"/v1/mailboxes/{mailbox}/reply/{answer}", json={"markdown": "Great"})
    assert reply.status_code == 202
    assert reply.json()["thread_id"] == first["thread_id"]
    replied = email(agent, mailbox, reply.json()["id"])
    assert (replied["to"], replied["subject"]) == (["alice@example.com"], "Re: Offer")
    thread = agent.get(path).json()
    assert [e["id"] for e in thread["emails"]][-1] == reply.json()["id"]
    assert thread["has_unanswered_inbound"] is False
    assert agent.get(f"/v1/mailboxes/{mailbox}/threads/unknown").status_code == 404


def test_cancel_pending_then_again_then_conflict_once_sent(
    fake: FakeMultiMail, agent: httpx.Client, operator: httpx.Client, mailbox: str
) -> None:
    email_id = send(agent, mailbox).json()["id"]
    path = f"/v1/mailboxes/{mailbox}/emails/{email_id}/cancel"
    assert agent.post(path).json() == {"id": email_id, "status": "cancelled"}
    assert agent.post(path).json() == {"id": email_id, "status": "cancelled"}
    assert email(agent, mailbox, email_id)["status"] == "cancelled"
    assert operator.get("/v1/oversight/pending").json()["emails"] == []

    other = send(agent, mailbox, subject="Second").json()["id"]
    operator.post("/v1/oversight/decide", json={"email_id": other, "action": "approve"})
    response = agent.post(f"/v1/mailboxes/{mailbox}/emails/{other}/cancel")
    assert response.status_code == 409
    assert email(agent, mailbox, other)["status"] == "sent"
