"""The fake follows the MultiMail contract: mailboxes."""

from __future__ import annotations

import httpx
import pytest

from ....fake import FakeMultiMail
from .support import ULID_RE, audit, email, send


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
