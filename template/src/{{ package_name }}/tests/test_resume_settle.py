"""A decision that arrives while its flow run is still on its way to suspending (the run tagged
the email and looked once more, but has not suspended yet) resumes the run once it has
suspended: it does not depend on MultiMail redelivering the webhook in time."""

from __future__ import annotations

import asyncio
import threading
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State
from prefect.states import Running, Suspended

from ..approvals import pause_key, resume_waiters, resume_waiting_run, waiter_tag
from .inbound_support import answer_deployment

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
__all__ = ["answer_deployment"]

EMAIL_ID = "01JSETTLE0000000000000000A"


async def _running_run(deployment_id: UUID) -> UUID:
    async with get_client() as client:
        run = await client.create_flow_run_from_deployment(
            deployment_id, parameters={"email_id": EMAIL_ID}
        )
        await client.set_flow_run_state(run.id, Running(), force=True)
        return run.id


def _suspend_later(run_id: UUID, after: float) -> threading.Thread:
    async def suspend() -> None:
        await asyncio.sleep(after)
        async with get_client() as client:
            state: State[None] = Suspended(timeout_seconds=600, pause_key=pause_key(EMAIL_ID))
            await client.set_flow_run_state(run_id, state, force=True)

    thread = threading.Thread(target=asyncio.run, args=(suspend(),))
    thread.start()
    return thread


def _state_name(run_id: UUID) -> str:
    async def read() -> str:
        async with get_client() as client:
            run = await client.read_flow_run(run_id)
            return str(run.state.name) if run.state else "?"

    return asyncio.run(read())


def test_a_decision_waits_for_the_run_to_suspend_then_resumes_it(answer_deployment: UUID) -> None:
    run_id = asyncio.run(_running_run(answer_deployment))
    suspending = _suspend_later(run_id, after=2.0)
    tags = {waiter_tag(run_id): pause_key(EMAIL_ID)}
    outcomes = asyncio.run(resume_waiters(EMAIL_ID, tags, settle_seconds=30))
    suspending.join()
    assert outcomes == {str(run_id): "resumed"}
    assert _state_name(run_id) == "Resuming"  # scheduled again: a worker picks it up


def test_without_settling_the_decision_is_left_to_a_redelivery(answer_deployment: UUID) -> None:
    run_id = asyncio.run(_running_run(answer_deployment))
    outcome = asyncio.run(resume_waiting_run(str(run_id), EMAIL_ID))
    assert outcome == "not_suspended_yet"  # the receiver answers 503: MultiMail retries
    assert _state_name(run_id) == "Running"
