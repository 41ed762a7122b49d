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
from contextlib import contextmanager
from pathlib import Path
from typing import cast
from uuid import UUID

import httpx
import pytest
from prefect import flow
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, State
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL
from prefect.states import Suspended
from pydantic import SecretStr
from typer.testing import CliRunner

from ...fake import FakeMultiMail
from ...fake.background import BackgroundServer
from ...fake.operator import Operator
from ...inbound.receiver import create_receiver
from ...mail import connection
from ...multimail.client import MultiMailClient
from ...multimail.models import EmailSummary
from ...multimail.provision import MailboxState, subscribe_receiver
from ...namespace import ANSWER_INBOUND, PROJECT, deployment_name
from ...ops.cli import app
from ...oversight.approvals import resume_settled_waits, resume_waiting_run

#: `serve`'s answer-inbound deployment, the one the served runner of these tests runs.
SERVED_ANSWER = deployment_name(ANSWER_INBOUND, served=True)

# Every test here replies through the test's own gated audience (before `mail_env` provisions).
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("gated_audience")]


@contextmanager
def _serve(cwd: Path, env: dict[str, str]) -> Iterator[None]:
    """`<project> serve` in its own process in `cwd`, polling the test server every second.

    Its output (and its flow runs') goes to `serve.log` in `cwd`: a pipe nobody reads would
    block the runner and its runs once full."""
    package = __name__.split(".")[0]
    log = cwd / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", f"{package}", "serve"],
            cwd=cwd,
            env={
                **env,
                "PREFECT_API_URL": str(PREFECT_API_URL.value()),
                "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            },
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_deployment(SERVED_ANSWER, process, log)
        yield
    finally:
        _wait_for_flow_run_processes(process.pid)
        process.terminate()
        process.wait(timeout=20)


def _wait_for_flow_run_processes(pid: int, timeout: float = 15) -> None:
    """Let the flow run processes `serve` started exit first (a run is final in the API a moment
    before its process ends): stopped with one alive, the runner cancels that run and loads its
    flow again for the cancellation hooks, 3-4 s per test. Where /proc lists a process's children
    (Linux); elsewhere `serve` is stopped at once."""
    tasks = Path(f"/proc/{pid}/task")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not "".join(path.read_text() for path in tasks.glob("*/children")).strip():
                return
        except OSError:  # a thread ended while read: look again
            pass
        time.sleep(0.1)


@pytest.fixture
def served_flows(mail_env: list[MailboxState], tmp_path: Path) -> Iterator[None]:
    """The flows served, replying through the test's gated audience (key from the env)."""
    with _serve(tmp_path, dict(os.environ)):
        yield


def _wait_for_deployment(name: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"`serve` exited: {log.read_text(errors='replace')[-4000:]}")
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
            if state is not None and (state.is_final() or (not final and state.is_paused())):
                return run
            time.sleep(0.25)
    pytest.fail(f"flow run {run_id} did not become {'final' if final else 'paused'}: {state}")


def _deliver(fake: FakeMultiMail, mail_env: list[MailboxState], subject: str) -> str:
    audience = connection.current_settings().replies.audience
    address = next(s.address for s in mail_env if s.audience == audience)
    return fake.deliver_inbound(
        to=address, sender="ada@example.com", subject=subject, markdown="Where is it?"
    )


def _suspended_answer(
    fake: FakeMultiMail, mail_env: list[MailboxState], subject: str, inbound: str | None = None
) -> tuple[str, UUID]:
    """Start answer-inbound on an inbound email, waiting by suspension; wait until it is."""
    inbound = inbound or _deliver(fake, mail_env, subject)
    run = cast(
        FlowRun,
        run_deployment(
            SERVED_ANSWER, parameters={"email_id": inbound, "wait": "suspend"}, timeout=0
        ),
    )
    suspended = _wait_for_state(run.id, final=False)
    assert suspended.state is not None
    assert suspended.state.name == "Suspended", suspended.state
    return inbound, run.id


def _replies(client: MultiMailClient) -> list[EmailSummary]:
    settings = connection.current_settings()
    mailbox = client.mailbox_id(settings.audience(settings.replies.audience).mailbox)
    return client.list_emails(mailbox, direction="outbound").emails


def _inbound_tags(client: MultiMailClient, inbound: str) -> dict[str, str]:
    settings = connection.current_settings()
    mailbox = client.mailbox_id(settings.audience(settings.replies.audience).mailbox)
    return client.get_tags(mailbox, inbound)


def _inbound_state(client: MultiMailClient, inbound: str) -> str:
    return _inbound_tags(client, inbound)["state"]


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
    assert asyncio.run(resume_settled_waits(expired_after_seconds=3600)) == []  # not due yet
    time.sleep(1.5)
    assert asyncio.run(resume_settled_waits(expired_after_seconds=1)) == [str(run_id)]
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


@pytest.fixture
def slow_scan(fake: FakeMultiMail, monkeypatch: pytest.MonkeyPatch) -> None:
    """MultiMail's scan takes longer than the flows watch it (request before `served_flows`)."""
    httpx.post(f"{fake.base_url}/_fake/config", json={"scan_delay": 3}).raise_for_status()
    monkeypatch.setenv("MULTIMAIL_SCAN_TIMEOUT_SECONDS", "0.3")


def test_a_scan_slower_than_the_timeout_suspends_and_never_reports_timed_out(
    slow_scan: None,
    fake: FakeMultiMail,
    client: MultiMailClient,
    operator_client: MultiMailClient,
    mail_env: list[MailboxState],
    served_flows: None,
    receiver: str,
) -> None:
    inbound, run_id = _suspended_answer(fake, mail_env, "Slow scan")
    assert _inbound_state(client, inbound) == "awaiting-decision"  # not timed out
    deadline = time.monotonic() + 30
    while not (pending := operator_client.list_pending()) and time.monotonic() < deadline:
        time.sleep(0.2)  # the scan finishes and puts the reply in the approval queue
    (item,) = pending
    operator_client.decide(item.id, "approve")
    finished = _wait_for_state(run_id, final=True)
    assert finished.state is not None
    assert finished.state.is_completed(), finished.state
    assert _inbound_state(client, inbound) == "reply-sent"
    assert [reply.status for reply in _replies(client)] == ["sent"]


def test_a_parent_fanning_out_with_run_deployment_gets_completed_children(
    fake: FakeMultiMail,
    client: MultiMailClient,
    mail_env: list[MailboxState],
    served_flows: None,
    receiver: str,
    approving_operator: Operator,
) -> None:
    """wait="auto": a child with a parent (`as_subflow=True`) polls, since Prefect refuses to
    suspend it; an independent child (`as_subflow=False`) suspends and is resumed by the
    decision webhook. Both complete with the outcome."""
    inbound = {
        as_subflow: _deliver(fake, mail_env, f"Fan-out {as_subflow}")
        for as_subflow in (True, False)
    }

    @flow
    def fan_out() -> list[str]:
        children = [
            cast(
                FlowRun,
                run_deployment(
                    SERVED_ANSWER,
                    parameters={"email_id": email_id},
                    as_subflow=as_subflow,
                    timeout=180,
                    poll_interval=1,
                ),
            )
            for as_subflow, email_id in inbound.items()
        ]
        return [str(child.state.name) if child.state else "?" for child in children]

    assert fan_out() == ["Completed", "Completed"]
    assert [_inbound_state(client, email_id) for email_id in inbound.values()] == ["reply-sent"] * 2
    assert sorted(reply.status for reply in _replies(client)) == ["sent", "sent"]


def test_two_runs_waiting_on_one_email_are_both_resumed_and_only_by_their_email(
    fake: FakeMultiMail,
    client: MultiMailClient,
    operator_client: MultiMailClient,
    mail_env: list[MailboxState],
    served_flows: None,
    receiver: str,
) -> None:
    inbound, first = _suspended_answer(fake, mail_env, "Twice")
    _, second = _suspended_answer(fake, mail_env, "Twice", inbound=inbound)
    reply_id = _inbound_tags(client, inbound)["reply_id"]
    # A resume request naming another email is refused: the run waits for its own reply.
    assert asyncio.run(resume_waiting_run(str(first), "another-email")) == "wrong_email"
    assert _wait_for_state(first, final=False).state is not None

    (pending,) = operator_client.list_pending()
    assert pending.id == reply_id
    operator_client.decide(pending.id, "approve")
    for run_id in (first, second):
        finished = _wait_for_state(run_id, final=True)
        assert finished.state is not None
        assert finished.state.is_completed(), finished.state
    assert [reply.id for reply in _replies(client)] == [reply_id]
    assert _inbound_state(client, inbound) == "reply-sent"


def test_a_deployed_run_takes_the_key_from_the_secret_block_not_a_dot_env(
    fake: FakeMultiMail,
    client: MultiMailClient,
    app_key: SecretStr,
    mail_env: list[MailboxState],
    approving_operator: Operator,
    tmp_path: Path,
) -> None:
    """A developer's personal key in the working directory's .env must not be what a
    deployment run on that machine uses."""
    Secret(value=app_key.get_secret_value()).save(
        connection.current_settings().api_key_block, overwrite=True
    )
    personal = "mm_live_" + "0" * 32  # unknown to MultiMail: a 401 if it were used
    (tmp_path / ".env").write_text(f"MULTIMAIL_API_KEY={personal}\n")
    env = {name: value for name, value in os.environ.items() if name != "MULTIMAIL_API_KEY"}
    inbound = _deliver(fake, mail_env, "Which key?")
    with _serve(tmp_path, env):
        run = cast(
            FlowRun,
            run_deployment(
                SERVED_ANSWER,
                parameters={"email_id": inbound, "wait": "poll"},
                timeout=120,
                poll_interval=1,
            ),
        )
    assert run.state is not None
    assert run.state.is_completed(), run.state
    assert _inbound_state(client, inbound) == "reply-sent"


def test_the_expiry_sweep_pages_through_every_paused_run_and_only_this_projects(
    mail_env: list[MailboxState],
) -> None:
    """Two projects share one Prefect server: each sweep wakes only its own expired waits,
    however many paused runs there are (here more than a page)."""
    own = PROJECT

    @flow
    def waiting() -> None:
        """Stands for a suspended answer-inbound run."""

    async def suspend_runs(namespace: str, count: int) -> list[str]:
        async with get_client() as prefect:
            # Suspended runs belong to a deployment (nothing serves this one: resumed runs just
            # wait as scheduled).
            flow_id = await prefect.create_flow(waiting)
            deployment = await prefect.create_deployment(flow_id=flow_id, name="sweep-test")
            runs = []
            for n in range(count):
                run = await prefect.create_flow_run_from_deployment(deployment)
                key = f"{namespace}-decision-e{n}"
                suspended: State[None] = Suspended(timeout_seconds=3600, pause_key=key)
                await prefect.set_flow_run_state(run.id, suspended, force=True)
                runs.append(str(run.id))
            return runs

    mine = asyncio.run(suspend_runs(own, 3))
    theirs = asyncio.run(suspend_runs(f"other-{own}", 2))
    resumed = asyncio.run(resume_settled_waits(expired_after_seconds=0, page_size=2))
    assert set(mine) <= set(resumed)
    assert not set(theirs) & set(resumed)
    with get_client(sync_client=True) as prefect:
        for run_id in theirs:
            state = prefect.read_flow_run(UUID(run_id)).state
            assert state is not None
            assert state.is_paused()
