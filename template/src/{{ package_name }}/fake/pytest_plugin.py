"""Pytest fixtures: one fake server per session, reset before every test that asks for it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .server import FakeMultiMail


@pytest.fixture(scope="session")
def fake_multimail() -> Iterator[FakeMultiMail]:
    """A running fake for the whole session (short webhook backoff keeps retry tests quick)."""
    with FakeMultiMail(webhook_backoff=0.05, webhook_timeout=2.0) as server:
        yield server


@pytest.fixture
def fake(fake_multimail: FakeMultiMail) -> Iterator[FakeMultiMail]:
    """The session's fake after `reset()`: a clean default account for each test.

    Faults are cleared afterwards too, so that a failing test cannot leave the shared server
    broken for tests that use `fake_multimail` directly.
    """
    fake_multimail.reset()
    yield fake_multimail
    fake_multimail.state.clear_faults()
