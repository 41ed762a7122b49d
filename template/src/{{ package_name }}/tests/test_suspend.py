"""Suspend instead of poll: the flow run frees its worker while a human decides, and the signed
oversight webhook resumes it. Runs the real thing: a Prefect server, the flows served as a
deployment in their own process, the receiver on loopback, the fake sending webhooks.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import cast
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL
from pydantic import SecretStr
from typer.testing import CliRunner

from .. import credentials
from ..approvals import resume_expired_waits
from ..cli import app
from ..client import MultiMailClient
from ..fake import FakeMultiMail
from ..models import EmailSummary
from ..provision import MailboxState, subscribe_receiver
from ..receiver import create_receiver
from ..serving import BackgroundServer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]


@pytest.fixture
def served_flows(mail_env: list[MailboxState], app_key: SecretStr) -> Iterator[None]:
    """`<project> serve` in its own process, polling the test server every second."""
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "MULTIMAIL_API_KEY": app_key.get_secret_value(),
    }
    package = __name__.rsplit(".", 2)[0]
    process = subprocess.Popen(
        [sys.executable, "-m", f"{package}.cli", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for_deployment("answer-inbound/local", process)
        yield
    finally:
        process.terminate()
        process.wait(timeout=20)


def _wait_for_deployment(name: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                errors = process.stderr.read().decode() if process.stderr else ""
                pytest.fail(f"`serve` exited: {errors}")
            try:
                client.read_deployment_by_name(name)
                return
            except Exception:
                time.sleep(0.5)
    pytest.fail(f"deployment {name} never appeared")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def receiver(fake: FakeMultiMail, client: MultiMailClient) -> Iterator[str]:
    """The webhook receiver on loopback, subscribed to the fake's oversight decisions."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/multimail/webhook"
    subscription = subscribe_receiver(client, url)
    assert subscription.signing_secret is not None
    app = create_receiver(subscription.signing_secret, read_tags=client.get_tags)
    with BackgroundServer(app, port=port, name="receiver"):
        yield url


def _wait_for_state(run_id: UUID, *, final: bool, timeout: float = 60) -> FlowRun:
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(run_id)
            state = run.state
            if state is not None and (state.is_final() if final else state.is_paused()):
                return run
            time.sleep(0.25)
    pytest.fail(f"flow run {run_id} did not become {'final' if final else 'paused'}: {state}")


def _suspended_answer(
    fake: FakeMultiMail, mail_env: list[MailboxState], subject: str
) -> tuple[str, UUID]:
    """Start answer-inbound on a new inbound email, waiting by suspension; wait until it is."""
    audience = credentials.current_settings().replies.audience
    address = next(s.address for s in mail_env if s.audience == audience)
    inbound = fake.deliver_inbound(
        to=address, sender="ada@example.com", subject=subject, markdown="Where is it?"
    )
    run = cast(
        FlowRun,
        run_deployment(
            "answer-inbound/local", parameters={"email_id": inbound, "wait": "suspend"}, timeout=0
        ),
    )
    suspended = _wait_for_state(run.id, final=False)
    assert suspended.state is not None
    assert suspended.state.name == "Suspended"
    return inbound, run.id


def _replies(client: MultiMailClient) -> list[EmailSummary]:
    settings = credentials.current_settings()
    mailbox = client.mailbox_id(settings.audience(settings.replies.audience).mailbox)
    return client.list_emails(mailbox, direction="outbound").emails


def _inbound_state(client: MultiMailClient, inbound: str) -> str:
    settings = credentials.current_settings()
    mailbox = client.mailbox_id(settings.audience(settings.replies.audience).mailbox)
    return client.get_tags(mailbox, inbound)["state"]


def test_the_resume_command_continues_a_decided_run(
    fake: FakeMultiMail,
    client: MultiMailClient,
    operator_client: MultiMailClient,
    mail_env: list[MailboxState],
    served_flows: None,
) -> None:
    inbound, run_id = _suspended_answer(fake, mail_env, "Resume by hand")
    (pending,) = operator_client.list_pending()
    operator_client.decide(pending.id, "approve")  # no receiver subscribed: nothing resumes

    result = CliRunner().invoke(app, ["resume", pending.id])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("resumed")
    finished = _wait_for_state(run_id, final=True)
    assert finished.state is not None
    assert finished.state.is_completed()
    assert _inbound_state(client, inbound) == "reply-sent"


def test_an_expired_wait_is_woken_cancelled_and_reported_timed_out(
    fake: FakeMultiMail,
    client: MultiMailClient,
    mail_env: list[MailboxState],
    served_flows: None,
) -> None:
    inbound, run_id = _suspended_answer(fake, mail_env, "Nobody answers")
    assert asyncio.run(resume_expired_waits(older_than_seconds=3600)) == []  # not due yet
    time.sleep(1.5)
    assert asyncio.run(resume_expired_waits(older_than_seconds=1)) == [str(run_id)]
    finished = _wait_for_state(run_id, final=True)
    assert finished.state is not None
    assert finished.state.is_completed()
    assert _inbound_state(client, inbound) == "reply-timed_out"
    assert [reply.status for reply in _replies(client)] == ["cancelled"]


@pytest.mark.parametrize(("action", "outcome"), [("approve", "sent"), ("reject", "rejected")])
def test_a_suspended_flow_is_resumed_by_the_decision_webhook(
    fake: FakeMultiMail,
    client: MultiMailClient,
    operator_client: MultiMailClient,
    mail_env: list[MailboxState],
    served_flows: None,
    receiver: str,
    action: str,
    outcome: str,
) -> None:
    inbound, run_id = _suspended_answer(fake, mail_env, "Invoice?")
    pending = operator_client.list_pending()
    assert [p.subject for p in pending] == ["Re: Invoice?"]
    operator_client.decide(pending[0].id, action)  # type: ignore[arg-type]

    finished = _wait_for_state(run_id, final=True)
    assert finished.state is not None
    assert finished.state.is_completed(), finished.state
    assert _inbound_state(client, inbound) == f"reply-{outcome}"
    replies = _replies(client)
    assert len(replies) == 1  # the rerun from the top sent nothing twice
    assert replies[0].status == outcome
