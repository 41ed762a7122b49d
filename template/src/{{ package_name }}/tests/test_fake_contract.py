"""The fake MultiMail server follows the API contract (real HTTP against a running fake)."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from ..fake import FakeMultiMail

Connect = Callable[..., httpx.Client]
ULID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
ISO_Z_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


@pytest.fixture
def connect(fake: FakeMultiMail) -> Iterator[Connect]:
    """Make an httpx client authenticated with a new key holding the given scopes."""
    opened: list[httpx.Client] = []

    def make(*scopes: str, key: str | None = None) -> httpx.Client:
        raw = key if key is not None else fake.create_key(list(scopes))
        client = httpx.Client(
            base_url=fake.base_url,
            headers={"Authorization": f"Bearer {raw}"},
            trust_env=False,
            timeout=5,
        )
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()


@pytest.fixture
def fake_http(fake: FakeMultiMail) -> Iterator[httpx.Client]:
    """An unauthenticated client for the fake's `/_fake/` control surface."""
    with httpx.Client(base_url=fake.base_url, trust_env=False, timeout=5) as client:
        yield client


def in_one_hour(fake_http: httpx.Client) -> str:
    now = datetime.fromisoformat(fake_http.get("/_fake/clock").json()["now"].replace("Z", "+00:00"))
    return (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def agent(connect: Connect) -> httpx.Client:
    return connect("admin", "send")


@pytest.fixture
def operator(connect: Connect) -> httpx.Client:
    return connect("oversight")


@pytest.fixture
def mailbox(agent: httpx.Client) -> str:
    response = agent.post("/v1/mailboxes", json={"address_local": "agent"})
    assert response.status_code == 201
    mailbox_id: str = response.json()["id"]
    return mailbox_id


def upgrade_to(fake: FakeMultiMail, agent: httpx.Client, mailbox_id: str, mode: str) -> None:
    """Loosen a mailbox the only legal way: request-upgrade, operator's code, upgrade."""
    response = agent.post(f"/v1/mailboxes/{mailbox_id}/request-upgrade", json={"target_mode": mode})
    assert response.status_code == 200
    code = [m for m in fake.operator_inbox() if m["kind"] == "upgrade_code"][-1]["code"]
    response = agent.post(f"/v1/mailboxes/{mailbox_id}/upgrade", json={"code": code})
    assert response.json() == {"status": "upgraded", "oversight_mode": mode}


def send(agent: httpx.Client, mailbox_id: str, **overrides: Any) -> httpx.Response:
    body: dict[str, Any] = {"to": ["alice@example.com"], "subject": "Hello", "markdown": "Hi!"}
    body.update(overrides)
    return agent.post(f"/v1/mailboxes/{mailbox_id}/send", json=body)


def email(agent: httpx.Client, mailbox_id: str, email_id: str) -> dict[str, Any]:
    response = agent.get(f"/v1/mailboxes/{mailbox_id}/emails/{email_id}")
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


def audit(agent: httpx.Client) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = agent.get("/v1/audit-log").json()["entries"]
    return entries


# ---------------------------------------------------------------- auth and scopes


def test_missing_unknown_and_revoked_keys_get_401(
    fake: FakeMultiMail, connect: Connect, agent: httpx.Client
) -> None:
    with httpx.Client(base_url=fake.base_url, trust_env=False) as anonymous:
        response = anonymous.get("/v1/mailboxes")
    assert response.status_code == 401
    assert set(response.json()) == {"error"}
    assert connect(key="mm_live_" + "0" * 32).get("/v1/mailboxes").status_code == 401

    created = agent.post("/v1/api-keys", json={"name": "temp", "scopes": ["read"]}).json()
    temp = connect(key=created["api_key"])
    assert temp.get("/v1/mailboxes").status_code == 200
    assert agent.delete(f"/v1/api-keys/{created['id']}").json() == {"status": "revoked"}
    assert temp.get("/v1/mailboxes").status_code == 401


def test_missing_scope_is_403_naming_the_scope(connect: Connect) -> None:
    sender = connect("send")
    response = sender.get("/v1/mailboxes")
    assert response.status_code == 403
    assert "read" in response.json()["error"]
    reader = connect("read")
    response = reader.post("/v1/mailboxes", json={"address_local": "x"})
    assert response.status_code == 403
    assert "admin" in response.json()["error"]
    assert reader.get("/v1/oversight/pending").status_code == 403


def test_admin_includes_read_but_not_send(connect: Connect) -> None:
    admin = connect("admin")
    mailbox_id = admin.post("/v1/mailboxes", json={"address_local": "adm"}).json()["id"]
    assert admin.get("/v1/mailboxes").status_code == 200
    assert admin.get("/v1/account").status_code == 200
    response = send(admin, mailbox_id)
    assert response.status_code == 403
    assert "send" in response.json()["error"]


def test_oversight_read_lists_pending_but_cannot_decide(connect: Connect) -> None:
    watcher = connect("oversight_read")
    assert watcher.get("/v1/oversight/pending").status_code == 200
    response = watcher.post("/v1/oversight/decide", json={"email_id": "x", "action": "approve"})
    assert response.status_code == 403
    assert "oversight" in response.json()["error"]


def test_key_with_send_and_oversight_is_refused(
    fake: FakeMultiMail, agent: httpx.Client, fake_http: httpx.Client
) -> None:
    response = agent.post("/v1/api-keys", json={"name": "x", "scopes": ["send", "oversight"]})
    assert response.status_code == 400
    assert "oversight" in response.json()["error"]
    assert fake_http.post("/_fake/keys", json={"scopes": ["send", "oversight"]}).status_code == 400
    with pytest.raises(ValueError, match="oversight"):
        fake.create_key(["send", "oversight"])


def test_api_keys_are_shown_once_and_listed_without_secret(agent: httpx.Client) -> None:
    response = agent.post("/v1/api-keys", json={"name": "reporting", "scopes": ["read"]})
    assert response.status_code == 201
    created = response.json()
    assert re.fullmatch(r"mm_live_[0-9a-f]{32}", created["api_key"])
    assert created["prefix"] == created["api_key"][:12]
    assert created["scopes"] == ["read"]
    listed = agent.get("/v1/api-keys").json()["api_keys"]
    assert created["id"] in [k["id"] for k in listed]
    assert all("api_key" not in k for k in listed)
    assert created["api_key"] not in str(listed)


# ---------------------------------------------------------------- mailboxes


def test_new_mailbox_always_starts_gated_send(agent: httpx.Client) -> None:
    response = agent.post(
        "/v1/mailboxes",
        json={
            "address_local": "Sales",
            "display_name": "Sales bot",
            "oversight_mode": "autonomous",
        },
    )
    assert response.status_code == 201
    box = response.json()
    assert box["address"] == "sales@demo.multimail.dev"
    assert box["oversight_mode"] == "gated_send"
    assert box["ai_disclosure"] is True
    assert isinstance(box["created_at"], int)
    assert box["created_at"] > 1_600_000_000_000
    assert ULID_RE.match(box["id"])
    assert agent.get(f"/v1/mailboxes/{box['id']}").json() == box
    assert agent.get("/v1/mailboxes").json() == {"mailboxes": [box]}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("address", "legacy"),
        ("address_local_part", "legacy"),
        ("address", "legacy@demo.multimail.dev"),
    ],
)
def test_mailbox_accepts_older_address_field_names(
    agent: httpx.Client, field: str, value: str
) -> None:
    response = agent.post("/v1/mailboxes", json={field: value})
    assert response.status_code == 201
    assert response.json()["address"] == "legacy@demo.multimail.dev"


def test_mailbox_address_validation(agent: httpx.Client) -> None:
    assert agent.post("/v1/mailboxes", json={}).status_code == 400
    response = agent.post("/v1/mailboxes", json={"address_local": "bad local!"})
    assert response.status_code == 400
    assert "address_local" in response.json()["error"]
    response = agent.post("/v1/mailboxes", json={"address": "x@elsewhere.example"})
    assert response.status_code == 400


def test_duplicate_address_409_and_never_reusable(agent: httpx.Client, mailbox: str) -> None:
    assert agent.post("/v1/mailboxes", json={"address_local": "agent"}).status_code == 409
    assert agent.delete(f"/v1/mailboxes/{mailbox}").json() == {"status": "deleted"}
    assert agent.get(f"/v1/mailboxes/{mailbox}").status_code == 404
    assert agent.get("/v1/mailboxes").json() == {"mailboxes": []}
    assert agent.post("/v1/mailboxes", json={"address_local": "agent"}).status_code == 409


def test_ai_disclosure_cannot_be_disabled(agent: httpx.Client, mailbox: str) -> None:
    response = agent.post("/v1/mailboxes", json={"address_local": "x", "ai_disclosure": False})
    assert response.status_code == 400
    assert "ai_disclosure" in response.json()["error"]
    response = agent.patch(f"/v1/mailboxes/{mailbox}", json={"ai_disclosure": False})
    assert response.status_code == 400


def test_patch_may_tighten_but_not_loosen(agent: httpx.Client, mailbox: str) -> None:
    response = agent.patch(
        f"/v1/mailboxes/{mailbox}", json={"oversight_mode": "gated_all", "display_name": "Ops"}
    )
    assert response.json() == {"status": "updated"}
    box = agent.get(f"/v1/mailboxes/{mailbox}").json()
    assert (box["oversight_mode"], box["display_name"]) == ("gated_all", "Ops")
    response = agent.patch(f"/v1/mailboxes/{mailbox}", json={"oversight_mode": "gated_send"})
    assert response.status_code == 403
    assert "request-upgrade" in response.json()["error"]
    assert agent.get(f"/v1/mailboxes/{mailbox}").json()["oversight_mode"] == "gated_all"
    update = next(e for e in audit(agent) if e["action"] == "mailbox.update")
    assert update["metadata"]["old"]["oversight_mode"] == "gated_send"
    assert update["metadata"]["new"]["oversight_mode"] == "gated_all"


def test_patch_null_clears_optional_fields_but_never_the_mode(
    agent: httpx.Client, mailbox: str
) -> None:
    agent.patch(f"/v1/mailboxes/{mailbox}", json={"auto_cc": "log@example.com"})
    response = agent.patch(
        f"/v1/mailboxes/{mailbox}", json={"oversight_mode": None, "auto_cc": None}
    )
    assert response.status_code == 200
    box = agent.get(f"/v1/mailboxes/{mailbox}").json()
    assert (box["oversight_mode"], box["auto_cc"]) == ("gated_send", None)
    response = agent.patch(f"/v1/mailboxes/{mailbox}", json={"auto_cc": "not an address"})
    assert response.status_code == 400
    assert "auto_cc" in response.json()["error"]


def test_auto_cc_is_added_to_outbound_mail(agent: httpx.Client, mailbox: str) -> None:
    agent.patch(f"/v1/mailboxes/{mailbox}", json={"auto_cc": "log@example.com"})
    email_id = send(agent, mailbox).json()["id"]
    assert email(agent, mailbox, email_id)["cc"] == ["log@example.com"]


def test_upgrade_with_operator_code(fake: FakeMultiMail, agent: httpx.Client, mailbox: str) -> None:
    assert agent.post(f"/v1/mailboxes/{mailbox}/upgrade", json={"code": "1"}).status_code == 404
    response = agent.post(
        f"/v1/mailboxes/{mailbox}/request-upgrade", json={"target_mode": "autonomous"}
    )
    assert response.json() == {"status": "upgrade_requested"}
    [message] = fake.operator_inbox()
    assert message["kind"] == "upgrade_code"
    assert message["mailbox_id"] == mailbox
    assert message["code"] in message["body"]
    wrong = agent.post(f"/v1/mailboxes/{mailbox}/upgrade", json={"code": "nope"})
    assert wrong.status_code == 403
    right = agent.post(f"/v1/mailboxes/{mailbox}/upgrade", json={"code": message["code"]})
    assert right.json() == {"status": "upgraded", "oversight_mode": "autonomous"}
    assert agent.get(f"/v1/mailboxes/{mailbox}").json()["oversight_mode"] == "autonomous"
    again = agent.post(f"/v1/mailboxes/{mailbox}/upgrade", json={"code": message["code"]})
    assert again.status_code == 404  # single use
    actions = [e["action"] for e in audit(agent)]
    assert actions[:2] == ["mailbox.upgraded", "mailbox.upgrade_requested"]


def test_upgrade_code_expires_after_24_hours(
    fake: FakeMultiMail, agent: httpx.Client, mailbox: str, fake_http: httpx.Client
) -> None:
    agent.post(f"/v1/mailboxes/{mailbox}/request-upgrade", json={"target_mode": "monitored"})
    code = fake.operator_inbox()[0]["code"]
    fake_http.post("/_fake/clock/advance", json={"seconds": 24 * 3600 + 1})
    response = agent.post(f"/v1/mailboxes/{mailbox}/upgrade", json={"code": code})
    assert response.status_code == 403
    assert agent.get(f"/v1/mailboxes/{mailbox}").json()["oversight_mode"] == "gated_send"


def test_at_most_three_upgrade_requests_an_hour(
    agent: httpx.Client, mailbox: str, fake_http: httpx.Client
) -> None:
    path = f"/v1/mailboxes/{mailbox}/request-upgrade"
    for _ in range(3):
        assert agent.post(path, json={"target_mode": "monitored"}).status_code == 200
    response = agent.post(path, json={"target_mode": "monitored"})
    assert response.status_code == 429
    assert 0 < int(response.headers["Retry-After"]) <= 3600
    fake_http.post("/_fake/clock/advance", json={"seconds": 3601})
    assert agent.post(path, json={"target_mode": "monitored"}).status_code == 200


def test_request_upgrade_must_loosen(agent: httpx.Client, mailbox: str) -> None:
    path = f"/v1/mailboxes/{mailbox}/request-upgrade"
    assert agent.post(path, json={"target_mode": "gated_all"}).status_code == 400
    assert agent.post(path, json={"target_mode": "gated_send"}).status_code == 400
    assert agent.post(path, json={"target_mode": "superuser"}).status_code == 400


# ---------------------------------------------------------------- sending


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


# ---------------------------------------------------------------- reading, listing, tags, threads


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


# ---------------------------------------------------------------- oversight


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


# ---------------------------------------------------------------- audit, account, errors


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
