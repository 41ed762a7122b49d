"""`answer-run EMAIL_ID`: the answer-inbound run of an inbound email, found by its idempotency
key from the moment the receiver records it, and (`--wait`) followed to its final state."""

from __future__ import annotations

import asyncio
import threading
import time
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State
from prefect.states import Completed, Failed, Running
from typer.testing import CliRunner, Result

from ...fake import FakeMultiMail
from ...inbound.answer_run import ANSWER_INBOUND_FLOW
from ...multimail.provision import MailboxState
from ...ops.cli import app
from ...settings import OversightMode
from ..inbound_support import Receiver, answer_deployment, receiver, runs_for

pytestmark = pytest.mark.slow
__all__ = ["answer_deployment", "receiver"]


def answer_run(*args: str) -> Result:
    return CliRunner().invoke(app, ["answer-run", *args])


def set_states(run_id: UUID, *states: State, after: float = 0.0) -> threading.Thread:
    """Move the run through `states`, as a worker would, `after` seconds from now."""

    async def move() -> None:
        await asyncio.sleep(after)
        async with get_client() as client:
            for state in states:
                await client.set_flow_run_state(run_id, state=state, force=True)

    thread = threading.Thread(target=asyncio.run, args=(move(),))
    thread.start()
    return thread


def inbound_email(mail_env: list[MailboxState], fake: FakeMultiMail, receiver: Receiver) -> str:
    """An inbound email the receiver turned into a (Scheduled: no work pool here) run."""
    state = next(s for s in mail_env if s.target != OversightMode.READ_ONLY)
    email_id = fake.deliver_inbound(
        to=state.address, sender="ada@example.com", subject="Order?", markdown="Where is it?"
    )
    receiver.wait_delivered(1)
    return email_id


def test_the_run_is_found_and_named_before_a_worker_picks_it_up(
    mail_env: list[MailboxState], fake: FakeMultiMail, receiver: Receiver, answer_deployment: UUID
) -> None:
    email_id = inbound_email(mail_env, fake, receiver)
    (run,) = runs_for(answer_deployment, email_id)
    assert run.name == f"answer-{email_id}"  # as the flow names it, though it has not started

    result = answer_run(email_id, "--timeout", "30")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{run.id}\n"
    assert "Scheduled" in result.stderr
    assert f"/runs/flow-run/{run.id}" in result.stderr


def test_wait_follows_the_run_until_it_finishes(
    mail_env: list[MailboxState], fake: FakeMultiMail, receiver: Receiver, answer_deployment: UUID
) -> None:
    email_id = inbound_email(mail_env, fake, receiver)
    (run,) = runs_for(answer_deployment, email_id)
    worker = set_states(run.id, Running(), Completed(), after=2.0)
    started = time.monotonic()
    result = answer_run(email_id, "--wait", "--timeout", "60")
    worker.join()
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{run.id}\n"
    assert "Completed" in result.stderr
    assert time.monotonic() - started < 30  # it saw the end, rather than waiting it out

    # A run that finished before anyone looked: answered at once, from its state.
    again = answer_run(email_id, "--wait", "--timeout", "60")
    assert again.exit_code == 0, again.output
    assert "Completed" in again.stderr


def test_wait_exits_1_for_a_run_that_did_not_complete(
    mail_env: list[MailboxState], fake: FakeMultiMail, receiver: Receiver, answer_deployment: UUID
) -> None:
    email_id = inbound_email(mail_env, fake, receiver)
    (run,) = runs_for(answer_deployment, email_id)
    set_states(run.id, Running(), Failed(message="MultiMail said no")).join()
    result = answer_run(email_id, "--wait", "--timeout", "60")
    assert result.exit_code == 1
    assert result.stdout == f"{run.id}\n"
    assert "Failed" in result.stderr


def test_no_run_for_the_email_says_what_to_check(answer_deployment: UUID) -> None:
    result = answer_run("01JNOTANEMAIL0000000000000", "--timeout", "1")
    assert result.exit_code == 1
    assert result.stdout == ""
    missing = f"no {ANSWER_INBOUND_FLOW} flow run for email 01JNOTANEMAIL0000000000000"
    assert missing in result.stderr
    assert "receiver" in result.stderr
