"""The fake's approval page and operator inbox page, read and used over HTTP like a browser would.

(The template's own test suite also drives these pages in headless Chromium.)
"""

from __future__ import annotations

import re

import httpx
import pytest

from ...namespace import DRAFTED_BY_TAG

HOSTILE = "<script>alert('pwned')</script>"


@pytest.fixture
def mailbox(agent: httpx.Client) -> str:
    mailbox_id: str = agent.post("/v1/mailboxes", json={"address_local": "support"}).json()["id"]
    return mailbox_id


def send(agent: httpx.Client, mailbox_id: str, subject: str, markdown: str = "Hi") -> str:
    body = {"to": ["alice@example.com"], "subject": subject, "markdown": markdown}
    email_id: str = agent.post(f"/v1/mailboxes/{mailbox_id}/send", json=body).json()["id"]
    return email_id


def inbound(control: httpx.Client, subject: str, markdown: str) -> str:
    body = {
        "to": "support@demo.multimail.dev",
        "from": "ada@example.com",
        "subject": subject,
        "markdown": markdown,
    }
    email_id: str = control.post("/_fake/inbound", json=body).json()["email_id"]
    return email_id


def cards(page: str) -> list[str]:
    return re.findall(r"<article class=\"card\".*?</article>", page, re.DOTALL)


def notice(page: str) -> str:
    found = re.search(r'<p class="notice[^"]*" role="(?:status|alert)">(.*?)</p>', page)
    assert found, "the page says nothing about the decision"
    return re.sub(r"<[^>]+>", "", found[1])


def test_an_empty_queue_says_so(control: httpx.Client) -> None:
    page = control.get("/_fake/approvals")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "Nothing waits for a decision." in page.text
    assert cards(page.text) == []


def test_one_card_per_email_oldest_first_with_grammatical_counts(
    control: httpx.Client, agent: httpx.Client, mailbox: str
) -> None:
    send(agent, mailbox, "First")
    assert "1 email waits for a decision" in control.get("/_fake/approvals").text
    send(agent, mailbox, "Second")
    page = control.get("/_fake/approvals").text
    assert "2 emails wait for a decision, oldest first" in page
    first, second = cards(page)
    assert ">First</h2>" in first
    assert ">Second</h2>" in second
    for shown in ("support@demo.multimail.dev", "gated_send", "alice@example.com"):
        assert shown in first


def test_the_body_is_rendered_from_markdown_and_cannot_inject_markup(
    control: httpx.Client, agent: httpx.Client, mailbox: str
) -> None:
    send(agent, mailbox, f"Refund {HOSTILE}", f"We refunded **EUR 41**.\n\n{HOSTILE}")
    (card,) = cards(control.get("/_fake/approvals").text)
    assert "<strong>EUR 41</strong>" in card
    assert "**" not in card
    assert "<script>" not in card
    assert "&lt;script&gt;" in card


def test_a_reply_shows_the_message_it_answers_above_it(
    control: httpx.Client, agent: httpx.Client, mailbox: str
) -> None:
    question = inbound(control, "Order 1042", f"Charged *twice*? {HOSTILE}")
    agent.post(f"/v1/mailboxes/{mailbox}/reply/{question}", json={"markdown": "Refunded."})
    (card,) = cards(control.get("/_fake/approvals").text)
    assert ">Re: Order 1042</h2>" in card
    context = re.search(r"<details.*?</details>", card, re.DOTALL)
    assert context, "the inbound message is not shown"
    assert "<em>twice</em>" in context[0]
    assert "ada@example.com" in context[0]
    assert "&lt;script&gt;" in context[0]
    assert "<script>" not in card
    assert card.index("</details>") < card.index("Refunded.")


def test_a_reply_a_model_drafted_says_which_model_and_one_written_by_hand_does_not(
    control: httpx.Client, agent: httpx.Client, mailbox: str
) -> None:
    by_model, by_hand = (inbound(control, subject, "Where is it?") for subject in ("A", "B"))
    tags = {"tags": {DRAFTED_BY_TAG: f"openai:gpt-5-mini{HOSTILE}"}}
    agent.put(f"/v1/mailboxes/{mailbox}/emails/{by_model}/tags", json=tags).raise_for_status()
    for question in (by_model, by_hand):
        agent.post(f"/v1/mailboxes/{mailbox}/reply/{question}", json={"markdown": "On its way."})
    drafted, written = cards(control.get("/_fake/approvals").text)
    assert "<dt>Drafted by</dt>" in drafted
    assert "an AI model, <code>openai:gpt-5-mini&lt;script&gt;" in drafted
    assert "AI disclosure is on" in drafted
    assert "Drafted by" not in written


def test_every_field_has_a_label_and_the_reason_belongs_to_reject(
    control: httpx.Client, agent: httpx.Client, mailbox: str
) -> None:
    email_id = send(agent, mailbox, "Labels")
    (card,) = cards(control.get("/_fake/approvals").text)
    for field_id in re.findall(r'<input id="([^"]+)"', card):
        assert f'<label for="{field_id}">' in card
    reject = re.search(r'<form class="reject".*?</form>', card, re.DOTALL)
    assert reject
    assert f'action="/_fake/approvals/{email_id}/reject"' in reject[0]
    assert "Reason for rejecting" in reject[0]
    assert ">Reject</button>" in reject[0]
    assert "<script" not in control.get("/_fake/approvals").text  # works without JavaScript


def test_approving_sends_like_the_api_and_the_page_says_so(
    control: httpx.Client, agent: httpx.Client, mailbox: str
) -> None:
    email_id = send(agent, mailbox, "Invoice")
    response = control.post(f"/_fake/approvals/{email_id}/approve", data={"reason": "Checked"})
    assert response.status_code == 303
    read = agent.get(f"/v1/mailboxes/{mailbox}/emails/{email_id}").json()
    assert read["status"] == "sent"
    assert read["approved_by"]
    entry = agent.get("/v1/audit-log").json()["entries"][0]
    assert entry["action"] == "oversight.decide"
    assert entry["metadata"]["approval_status"] == "approved_and_sent"
    assert entry["metadata"]["reason"] == "Checked"
    page = control.get(response.headers["location"]).text
    assert notice(page) == "Approved and sent: Invoice to alice@example.com."
    assert cards(page) == []
    again = control.post(f"/_fake/approvals/{email_id}/approve")
    assert "already decided" in notice(control.get(again.headers["location"]).text)
    assert agent.get("/v1/audit-log").json()["entries"][0]["id"] == entry["id"]


def test_rejecting_records_the_reason_and_the_card_is_gone(
    control: httpx.Client, agent: httpx.Client, mailbox: str
) -> None:
    kept = send(agent, mailbox, "Keep me")
    email_id = send(agent, mailbox, "Too pushy")
    response = control.post(
        f"/_fake/approvals/{email_id}/reject", data={"reason": "Too pushy & long"}
    )
    assert response.status_code == 303
    status = agent.get(f"/v1/mailboxes/{mailbox}/emails/{email_id}").json()["status"]
    assert status == "rejected"
    entry = agent.get("/v1/audit-log").json()["entries"][0]
    assert entry["metadata"]["reason"] == "Too pushy & long"
    page = control.get(response.headers["location"]).text
    assert notice(page) == "Rejected: Too pushy will not be sent."
    (card,) = cards(page)
    assert f"/_fake/approvals/{kept}/approve" in card
    assert "1 email waits" in page


def test_held_inbound_mail_is_approved_for_delivery(
    control: httpx.Client, agent: httpx.Client, mailbox: str
) -> None:
    agent.patch(f"/v1/mailboxes/{mailbox}", json={"oversight_mode": "gated_all"})
    email_id = inbound(control, "Held", "Let me in")
    (card,) = cards(control.get("/_fake/approvals").text)
    assert "gated_all" in card
    assert ">Approve and deliver</button>" in card
    response = control.post(f"/_fake/approvals/{email_id}/approve")
    page = control.get(response.headers["location"]).text
    assert notice(page) == "Approved: Held is delivered to support@demo.multimail.dev."


def test_the_operator_inbox_is_a_page_linked_from_the_approval_page(
    control: httpx.Client, agent: httpx.Client, mailbox: str
) -> None:
    assert 'href="/_fake/operator"' in control.get("/_fake/approvals").text
    assert "No mail yet." in control.get("/_fake/operator").text
    agent.post(f"/v1/mailboxes/{mailbox}/request-upgrade", json={"target_mode": "autonomous"})
    send(agent, mailbox, f"Notice {HOSTILE}")
    page = control.get("/_fake/operator")
    assert page.status_code == 200
    code = control.get("/_fake/operator/inbox").json()["messages"][0]["code"]
    assert f"<code>{code}</code>" in page.text
    assert "2 messages to operator@demo.example" in page.text
    assert "<script>" not in page.text
    first, second = cards(page.text)
    assert "Approval needed: Notice" in first
    assert "Upgrade code" in second


def test_a_scheduled_email_with_an_attachment_says_when_it_goes_out(
    control: httpx.Client, agent: httpx.Client, mailbox: str
) -> None:
    body = {
        "to": ["alice@example.com"],
        "bcc": ["audit@example.com"],
        "subject": "Later",
        "markdown": "See the file.",
        "send_at": "2099-01-01T09:00:00Z",
        "attachments": [
            {"name": "terms.txt", "content_base64": "aGVsbG8=", "content_type": "text/plain"}
        ],
    }
    email_id = agent.post(f"/v1/mailboxes/{mailbox}/send", json=body).json()["id"]
    (card,) = cards(control.get("/_fake/approvals").text)
    assert "terms.txt (text/plain, 5 bytes)" in card
    assert "audit@example.com" in card  # every recipient, Bcc too
    assert "sent at the scheduled time" in card
    assert "01 Jan 2099, 09:00 UTC" in card
    response = control.post(f"/_fake/approvals/{email_id}/approve")
    page = control.get(response.headers["location"]).text
    assert notice(page) == "Approved: Later is sent at 01 Jan 2099, 09:00 UTC."
    status = agent.get(f"/v1/mailboxes/{mailbox}/emails/{email_id}").json()["status"]
    assert status == "scheduled"
