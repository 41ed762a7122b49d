"""Fixtures of the contract tests: clients holding keys of given scopes, and a mailbox."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from ....fake import FakeMultiMail
from .support import Connect


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
