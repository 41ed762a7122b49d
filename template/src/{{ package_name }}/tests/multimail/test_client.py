"""The client over real HTTP against the fake MultiMail: what each call returns or raises."""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr

from ...fake import FakeMultiMail
from ...multimail.client import (
    MailboxNotFoundError,
    MultiMailAPIError,
    MultiMailClient,
    MultiMailResponseError,
)


def test_send_is_accepted_then_held_for_approval_in_a_new_mailbox(client: MultiMailClient) -> None:
    mailbox = client.create_mailbox("support")
    sent = client.send(
        mailbox.id,
        to=["ada@example.com"],
        subject="Hello",
        markdown="Hi Ada",
        idempotency_key="k-1",
    )
    assert sent.status == "pending_scan"
    email = client.get_email(mailbox.id, sent.id)
    assert email.status == "pending_send_approval"  # new mailboxes start in gated_send
    assert email.to == ["ada@example.com"]
    assert email.markdown == "Hi Ada"


def test_same_idempotency_key_returns_the_original_and_sends_nothing_new(
    client: MultiMailClient,
) -> None:
    mailbox = client.create_mailbox("support")
    kwargs = {"to": ["ada@example.com"], "subject": "Once", "markdown": "only once"}
    first = client.send(mailbox.id, idempotency_key="same", **kwargs)  # type: ignore[arg-type]
    again = client.send(mailbox.id, idempotency_key="same", **kwargs)  # type: ignore[arg-type]
    assert again.id == first.id
    assert (again.idempotent, again.status) == (True, "already_sent")
    outbound = client.list_emails(mailbox.id, direction="outbound").emails
    assert [e.id for e in outbound] == [first.id]


def test_reply_shares_the_thread_and_tags_merge(
    client: MultiMailClient, fake: FakeMultiMail
) -> None:
    mailbox = client.create_mailbox("support")
    inbound_id = fake.deliver_inbound(
        to=mailbox.address, sender="ada@example.com", subject="Order", markdown="Where is it?"
    )
    inbound = client.get_email(mailbox.id, inbound_id)
    assert inbound.sender == "ada@example.com"
    assert client.get_email(mailbox.id, inbound_id).status == "read"  # reading marks it read
    reply = client.reply(mailbox.id, inbound_id, markdown="On its way", idempotency_key="r-1")
    thread = client.get_thread(mailbox.id, reply.thread_id or "")
    assert [e.id for e in thread.emails] == [inbound_id, reply.id]
    client.set_tags(mailbox.id, inbound_id, {"state": "answering", "owner": "bot"})
    assert client.set_tags(mailbox.id, inbound_id, {"state": "done"}) == {
        "state": "done",
        "owner": "bot",
    }


def test_cancel_then_pending_and_decide_conflict(
    client: MultiMailClient, operator_client: MultiMailClient
) -> None:
    mailbox = client.create_mailbox("support")
    sent = client.send(
        mailbox.id, to=["a@example.com"], subject="Oops", markdown="x", idempotency_key="c-1"
    )
    client.get_email(mailbox.id, sent.id)  # let the scan finish
    assert [p.id for p in operator_client.list_pending()] == [sent.id]
    assert client.cancel(mailbox.id, sent.id).status == "cancelled"
    assert operator_client.list_pending() == []
    with pytest.raises(MultiMailAPIError) as caught:
        operator_client.decide(sent.id, "approve")
    assert caught.value.status_code == 409


def test_unknown_key_is_refused_with_the_fix_named(fake: FakeMultiMail) -> None:
    bad = SecretStr("mm_live_" + "0" * 32)
    with MultiMailClient(fake.base_url, bad) as client, pytest.raises(MultiMailAPIError) as e:
        client.list_mailboxes()
    assert e.value.status_code == 401
    assert "MULTIMAIL_API_KEY" in str(e.value)
    assert bad.get_secret_value() not in str(e.value)
    assert not e.value.retryable


def test_missing_scope_is_a_403_that_names_the_scope(fake: FakeMultiMail) -> None:
    read_only = SecretStr(fake.create_key(["read"]))
    with MultiMailClient(fake.base_url, read_only) as client, pytest.raises(MultiMailAPIError) as e:
        client.create_mailbox("support")
    assert e.value.status_code == 403
    assert "admin" in e.value.message


def test_unknown_audience_mailbox_names_the_fix(client: MultiMailClient) -> None:
    with pytest.raises(MailboxNotFoundError, match="provision"):
        client.mailbox_id("nobody")


def test_a_body_that_is_not_the_api_is_reported_as_such() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, text="<html>login</html>"))
    client = MultiMailClient("https://proxy.invalid", SecretStr("k"), transport=transport)
    with pytest.raises(MultiMailResponseError, match="api_url"):
        client.list_mailboxes()


def test_a_body_missing_required_fields_is_reported() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(202, json={"status": "x"}))
    client = MultiMailClient("https://proxy.invalid", SecretStr("k"), transport=transport)
    with pytest.raises(MultiMailResponseError, match="unexpected body"):
        client.send("mb", to=["a@example.com"], subject="s", markdown="m", idempotency_key="k")


def test_rate_limit_carries_retry_after() -> None:
    def limited(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, json={"error": "slow down"}, headers={"Retry-After": "7"})

    client = MultiMailClient(
        "https://x.invalid", SecretStr("k"), transport=httpx.MockTransport(limited)
    )
    with pytest.raises(MultiMailAPIError) as caught:
        client.list_mailboxes()
    assert caught.value.retryable
    assert caught.value.retry_after == 7.0
