"""What the contract tests share: the key-holding client type, id formats, and small calls."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx

from ....fake import FakeMultiMail

Connect = Callable[..., httpx.Client]
ULID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
ISO_Z_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def in_one_hour(fake_http: httpx.Client) -> str:
    now = datetime.fromisoformat(fake_http.get("/_fake/clock").json()["now"].replace("Z", "+00:00"))
    return (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


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
