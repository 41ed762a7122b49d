"""Shared fixtures: the fake MultiMail on loopback, keys, provisioned mailboxes, and one Prefect
test server for the whole session (only for the tests that run flows).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from pydantic import SecretStr

from ..fake import FakeMultiMail, pytest_plugin
from ..fake.operator import Operator, provision_on_fake
from ..mail import connection
from ..multimail.client import MultiMailClient
from ..multimail.provision import MailboxState

APP_SCOPES = ["read", "send", "admin"]

# The fake's fixtures: `fake_multimail` (one server per session), `fake` (reset per test).
fake_multimail = pytest_plugin.fake_multimail
fake = pytest_plugin.fake


#: The audience the approval and suspend tests bring along: gated, whatever the project's own
#: audiences are (they may all be autonomous or read_only). Injected by `gated_audience`.
GATED_AUDIENCE = "pytest_gated"
GATED_MAILBOX = "pytest-gated-approvals"


@pytest.fixture
def app_key(fake: FakeMultiMail) -> SecretStr:
    """A key with the scopes the flows use (read, send) plus admin for provisioning."""
    return SecretStr(fake.create_key(APP_SCOPES, name="flows"))


@pytest.fixture
def client(fake: FakeMultiMail, app_key: SecretStr) -> Iterator[MultiMailClient]:
    with MultiMailClient(fake.base_url, app_key) as mail:
        yield mail


@pytest.fixture
def operator_client(fake: FakeMultiMail) -> Iterator[MultiMailClient]:
    """What the human approver holds: the oversight scope and nothing else."""
    key = SecretStr(fake.create_key(["oversight"], name="operator"))
    with MultiMailClient(fake.base_url, key) as mail:
        yield mail


@pytest.fixture
def gated_audience(monkeypatch: pytest.MonkeyPatch) -> str:
    """A test-only gated_send audience that answers inbound mail (the replies audience).

    Set through MULTIMAIL_* variables, so a `serve` subprocess started by a test sees it too.
    Request it before `mail_env`, which provisions its mailbox.
    """
    prefix = f"MULTIMAIL_AUDIENCES__{GATED_AUDIENCE.upper()}__"
    monkeypatch.setenv(prefix + "MAILBOX", GATED_MAILBOX)
    monkeypatch.setenv(prefix + "OVERSIGHT_MODE", "gated_send")
    monkeypatch.setenv(prefix + "PURPOSE", "Replies a human approves (tests only).")
    monkeypatch.setenv("MULTIMAIL_REPLIES__AUDIENCE", GATED_AUDIENCE)
    connection.reset()
    return GATED_AUDIENCE


@pytest.fixture
def mail_env(
    fake: FakeMultiMail, app_key: SecretStr, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[MailboxState]]:
    """Point the project's settings at the fake and provision every audience's mailbox."""
    monkeypatch.setenv("MULTIMAIL_API_URL", fake.base_url)
    monkeypatch.setenv("MULTIMAIL_API_KEY", app_key.get_secret_value())
    connection.reset()
    states = provision_on_fake(fake, connection.shared_client(), connection.current_settings())
    assert all(state.ready for state in states), states
    yield states
    connection.reset()


@pytest.fixture
def approving_operator(operator_client: MultiMailClient) -> Iterator[Operator]:
    """A human who approves everything that waits (run while a flow waits for a decision)."""
    operator = Operator(operator_client, lambda item: ("approve", None), echo=lambda _: None)
    operator.start()
    yield operator
    operator.stop()


@pytest.fixture
def rejecting_operator(operator_client: MultiMailClient) -> Iterator[Operator]:
    """A human who rejects everything that waits, with the reason "not our tone"."""
    operator = Operator(
        operator_client, lambda item: ("reject", "not our tone"), echo=lambda _: None
    )
    operator.start()
    yield operator
    operator.stop()


@pytest.fixture(autouse=True)
def prefect_only_where_marked(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """The `slow` marker works both ways: a test marked so gets the session's Prefect server,
    and a test not marked fails, naming the marker, the moment it would start one (so
    `-m "not slow"` never waits for a server, even after a marked test started it)."""
    if request.node.get_closest_marker("slow"):
        request.getfixturevalue("prefect_server")
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError(
            f"{request.node.nodeid} starts a Prefect server: mark it `@pytest.mark.slow`, "
            "which gives it the session's server"
        )

    monkeypatch.setattr(SubprocessASGIServer, "start", refuse)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        yield


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One throwaway Prefect API for the session (see prefect_server.py), heartbeats off (they
    add ~1 s per flow)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from .prefect_server import prefect_test_server

    with (
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        prefect_test_server(),
    ):
        yield


@pytest.fixture
def control(fake: FakeMultiMail) -> Iterator[httpx.Client]:
    """An unauthenticated client, as a person's browser is (the fake's control surface and
    pages need no key)."""
    with httpx.Client(base_url=fake.base_url, trust_env=False, timeout=5) as client:
        yield client


@pytest.fixture
def agent(fake: FakeMultiMail, control: httpx.Client) -> Iterator[httpx.Client]:
    """A raw HTTP client with an admin and send key, for tests of the fake's API itself."""
    created = control.post("/_fake/keys", json={"scopes": ["admin", "send"], "name": "agent"})
    assert created.status_code == 201
    headers = {"Authorization": f"Bearer {created.json()['api_key']}"}
    with httpx.Client(base_url=fake.base_url, headers=headers, trust_env=False, timeout=5) as c:
        yield c
