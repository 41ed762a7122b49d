"""The fake follows the MultiMail contract: auth and scopes."""

from __future__ import annotations

import re

import httpx
import pytest

from ....fake import FakeMultiMail
from .support import Connect, send


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
