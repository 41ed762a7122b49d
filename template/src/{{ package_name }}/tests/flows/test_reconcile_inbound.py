"""reconcile-inbound: a message whose webhook never arrived gets its run, and no message gets
two, whether its webhook arrived, it was handled already, or reconcile runs again."""

from __future__ import annotations

import asyncio
import time
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import FlowRun, State
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.states import Pending, Running

from ...fake import FakeMultiMail
from ...flows import reconcile_inbound as reconcile_module
from ...flows.answer_inbound import STATE_TAG
from ...flows.expire_approval_waits import expire_approval_waits
from ...flows.reconcile_inbound import reconcile_inbound
from ...inbound.starter import run_key
from ...mail import connection
from ...multimail.client import MultiMailClient
from ...multimail.provision import MailboxState
from ...settings import OversightMode
from ..inbound_support import (
    DEPLOYMENT,
    Receiver,
    answer_deployment,
    receiver,
    runs_answering,
    wait_until_released,
)

pytestmark = pytest.mark.slow
__all__ = ["answer_deployment", "receiver"]


def _answering(states: list[MailboxState]) -> list[MailboxState]:
    settings = connection.current_settings()
    read_only = OversightMode.READ_ONLY
    return [s for s in states if settings.audience(s.audience).oversight_mode != read_only]


def _reconcile() -> dict[str, str]:
    return asyncio.run(reconcile_inbound(deployment=DEPLOYMENT))


def test_mail_whose_webhook_never_came_is_started_once(
    mail_env: list[MailboxState],
    fake: FakeMultiMail,
    answer_deployment: UUID,
    approving_operator: object,
    operator_client: MultiMailClient,
) -> None:
    # No webhook subscription at all: every delivery is "lost".
    lost = {
        fake.deliver_inbound(
            to=state.address, sender="ada@example.com", subject="Lost?", markdown="Hello"
        ): state.audience
        for state in _answering(mail_env)
    }
    wait_until_released(operator_client)
    first = _reconcile()
    assert set(first) == set(lost)
    for email_id, audience in lost.items():
        (run,) = runs_answering(answer_deployment, email_id)
        assert str(run.id) == first[email_id]
        assert run.parameters == {"email_id": email_id, "audience": audience}
        assert run.idempotency_key == run_key(email_id)
        assert "reconciled" in run.tags
    # Runs not started yet (no worker here): a second pass finds the same runs, starts none.
    assert _reconcile() == first
    for email_id in lost:
        assert len(runs_answering(answer_deployment, email_id)) == 1


def test_mail_whose_webhook_came_keeps_its_one_run(
    mail_env: list[MailboxState],
    fake: FakeMultiMail,
    receiver: Receiver,
    answer_deployment: UUID,
) -> None:
    state = _answering(mail_env)[0]
    email_id = fake.deliver_inbound(
        to=state.address, sender="ada@example.com", subject="Hi", markdown="Hello"
    )
    assert receiver.wait_delivered(1)[0]["response_status"] == 202
    (run,) = runs_answering(answer_deployment, email_id)
    assert _reconcile()[email_id] == str(run.id)
    assert [r.id for r in runs_answering(answer_deployment, email_id)] == [run.id]


def test_handled_or_own_mail_is_left_alone(
    mail_env: list[MailboxState],
    fake: FakeMultiMail,
    client: MultiMailClient,
    answer_deployment: UUID,
) -> None:
    state = _answering(mail_env)[0]
    handled = fake.deliver_inbound(
        to=state.address, sender="ada@example.com", subject="Done", markdown="Answered"
    )
    client.set_tags(state.mailbox_id, handled, {STATE_TAG: "reply-sent"})
    own = fake.deliver_inbound(
        to=state.address, sender=mail_env[-1].address, subject="Loop", markdown="Status"
    )
    started = _reconcile()
    assert handled not in started
    assert own not in started
    assert runs_answering(answer_deployment, handled) == []
    assert runs_answering(answer_deployment, own) == []


def test_an_email_whose_tags_cannot_be_read_waits_and_the_others_are_started(
    mail_env: list[MailboxState],
    fake: FakeMultiMail,
    control: httpx.Client,
    answer_deployment: UUID,
    approving_operator: object,
    operator_client: MultiMailClient,
) -> None:
    """MultiMail failing on one email's tags must not fail the pass for every other email."""
    state = _answering(mail_env)[0]
    flaky, fine = (
        fake.deliver_inbound(
            to=state.address, sender="ada@example.com", subject=subject, markdown="Hello"
        )
        for subject in ("Flaky", "Fine")
    )
    wait_until_released(operator_client)  # a gated_all mailbox holds inbound mail first
    control.post(
        "/_fake/faults",
        json={
            "path_prefix": f"/v1/mailboxes/{state.mailbox_id}/emails/{flaky}/tags",
            "method": "GET",
            "status": 502,
        },
    ).raise_for_status()
    started = _reconcile()
    assert fine in started
    assert flaky not in started
    assert runs_answering(answer_deployment, flaky) == []
    control.delete("/_fake/faults").raise_for_status()
    assert flaky in _reconcile()  # the next pass starts it
    assert len(runs_answering(answer_deployment, flaky)) == 1


def test_a_scheduled_flows_run_whose_process_died_is_marked_crashed(
    mail_env: list[MailboxState], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep's run left Pending by a worker killed while submitting it, and one left Running
    by a process killed with its worker, show as Crashed instead of running forever."""

    async def dead_runs() -> list[UUID]:
        async with get_client() as prefect:
            deployment = await expire_approval_waits.ato_deployment(name="dead-run-test")
            deployment_id = await deployment.aapply()
            runs = []
            dead: list[State[None]] = [Pending(), Running()]
            for state in dead:
                run = await prefect.create_flow_run_from_deployment(deployment_id)
                await prefect.set_flow_run_state(run.id, state, force=True)
                runs.append(run.id)
            return runs

    async def states(run_ids: list[UUID]) -> list[str]:
        async with get_client() as prefect:
            return [str((await prefect.read_flow_run(run_id)).state_name) for run_id in run_ids]

    runs = asyncio.run(dead_runs())
    _reconcile()
    assert asyncio.run(states(runs)) == ["Pending", "Running"]  # within the bound: left alone
    monkeypatch.setenv("MULTIMAIL_STUCK_RUN_SECONDS", "0")
    monkeypatch.setattr(reconcile_module, "MISSED_HEARTBEATS", 0)
    connection.reset()
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}):
        _reconcile()
    assert asyncio.run(states(runs)) == ["Crashed", "Crashed"]


def test_a_run_whose_claiming_worker_is_gone_is_run_again_ahead_of_the_queue(
    gated_audience: str,
    mail_env: list[MailboxState],
    fake: FakeMultiMail,
    answer_deployment: UUID,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker killed while it submits a run leaves the run Pending, holding a slot of the
    answer queue: the next pass sees from the worker's heartbeats that it is gone, without
    waiting for `stuck_run_seconds`, and schedules the run again ahead of the mail that queued
    behind it. A run claimed by a live worker is left to it."""
    monkeypatch.setenv("MULTIMAIL_STUCK_RUN_SECONDS", "3600")  # never reached here
    connection.reset()
    pool = "claims-test-pool"
    claims = {"live": "live-worker", "silent": "silent-worker", "vanished": "vanished-worker"}
    # Its own audience that answers inbound mail (a gated_all one holds it first).
    audience = next(state for state in mail_env if state.audience == gated_audience)
    mail = {
        case: fake.deliver_inbound(
            to=audience.address, sender="ada@example.com", subject=case, markdown="Hello"
        )
        for case in claims
    }
    started = _reconcile()  # nothing serves the deployment: the runs wait in its queue

    async def claim() -> None:
        async with get_client() as prefect:
            await prefect.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            await prefect.send_worker_heartbeat(pool, claims["live"], 30)
            await prefect.send_worker_heartbeat(pool, claims["silent"], 1)
            for case, worker in claims.items():
                run_id = UUID(started[mail[case]])
                await prefect.set_flow_run_state(run_id, Pending(), force=True)
                labels: dict[str, str | int | float | bool] = {
                    reconcile_module.WORKER_LABEL: worker,
                    reconcile_module.POOL_LABEL: pool,
                }
                await prefect.update_flow_run_labels(run_id, labels)

    async def read(run_id: str) -> FlowRun:
        async with get_client() as prefect:
            return await prefect.read_flow_run(UUID(run_id))

    asyncio.run(claim())
    before = {case: asyncio.run(read(started[email])) for case, email in mail.items()}
    time.sleep(1 + reconcile_module.MISSED_HEARTBEATS * 1)  # the silent worker misses its beats
    later = fake.deliver_inbound(
        to=audience.address, sender="ada@example.com", subject="Queued later", markdown="Hi"
    )
    again = _reconcile()
    assert {email: again[email] for email in mail.values()} == {
        email: started[email] for email in mail.values()
    }  # the same runs, no new key
    after = {case: asyncio.run(read(started[email])) for case, email in mail.items()}
    assert after["live"].state_name == "Pending"
    queued_later = asyncio.run(read(again[later]))
    for case in ("silent", "vanished"):
        run = after[case]
        assert run.state_name == "AwaitingRetry", (case, run.state)
        assert run.state is not None
        assert claims[case] in str(run.state.message)
        assert run.next_scheduled_start_time == before[case].expected_start_time
        assert run.next_scheduled_start_time is not None
        assert queued_later.next_scheduled_start_time is not None
        assert run.next_scheduled_start_time < queued_later.next_scheduled_start_time


def test_a_dead_run_of_an_answered_email_is_marked_crashed_and_frees_its_slot(
    gated_audience: str,
    mail_env: list[MailboxState],
    fake: FakeMultiMail,
    client: MultiMailClient,
    answer_deployment: UUID,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rerun killed while its worker submitted it, after an earlier attempt had recorded the
    email's outcome: the sweep no longer looks at the email, yet the dead run must not hold a
    slot of the answer queue for good (seen in the brief chaos soak)."""
    state = next(state for state in mail_env if state.audience == gated_audience)
    email = fake.deliver_inbound(
        to=state.address, sender="ada@example.com", subject="Answered", markdown="Hello"
    )
    run_id = UUID(_reconcile()[email])
    client.set_tags(state.mailbox_id, email, {STATE_TAG: "reply-sent"})

    async def force_pending_and_read() -> str:
        async with get_client() as prefect:
            await prefect.set_flow_run_state(run_id, Pending(), force=True)
            return str((await prefect.read_flow_run(run_id)).state_name)

    assert asyncio.run(force_pending_and_read()) == "Pending"
    monkeypatch.setenv("MULTIMAIL_STUCK_RUN_SECONDS", "0")  # its process is gone
    connection.reset()
    assert _reconcile() == {}  # answered: nothing to start or run again

    async def state_name() -> str:
        async with get_client() as prefect:
            return str((await prefect.read_flow_run(run_id)).state_name)

    assert asyncio.run(state_name()) == "Crashed"
