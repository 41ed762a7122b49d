"""Every inbound email is answered under a single fault: a decision nobody delivered, a
suspension that races the decision, a run whose process died. Each interleaving is forced
(a hook on Prefect's client lands the other side's step exactly in the window), never left to
timing; the Prefect server and the fake are real.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID

import pytest
from prefect.blocks.system import Secret
from prefect.client.orchestration import PrefectClient, SyncPrefectClient, get_client
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.exceptions import Pause
from prefect.flow_engine import run_flow
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.states import Crashed, Pending, Running, Suspended

from ...fake import FakeMultiMail
from ...flows import reconcile_inbound as reconcile_module
from ...flows.answer_inbound import ReplyReport, answer_inbound
from ...flows.expire_approval_waits import expire_approval_waits
from ...flows.reconcile_inbound import reconcile_inbound
from ...inbound.starter import start_answer
from ...mail import connection
from ...multimail.client import MultiMailClient
from ...multimail.provision import MailboxState
from ...namespace import ANSWER_INBOUND, deployment_name
from ...ops.serve import served_deployments
from ...oversight.approvals import pause_key, resume_settled_waits, resume_waiting_run
from ..inbound_support import DEPLOYMENT, answer_deployment
from ..oversight.test_approvals import (
    _deliver,
    _inbound_state,
    _inbound_tags,
    _replies,
    _suspended_answer,
    _wait_for_state,
    receiver,
    served_flows,
)

#: `serve`'s answer-inbound deployment, which these tests register and serve.
SERVED_ANSWER = deployment_name(ANSWER_INBOUND, served=True)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("gated_audience")]
__all__ = ["answer_deployment", "receiver", "served_flows"]


def _state(run_id: UUID) -> State[Any]:
    with get_client(sync_client=True) as prefect:
        state = prefect.read_flow_run(run_id).state
    assert state is not None
    return state


def _force(run_id: UUID, state: State[Any]) -> None:
    with get_client(sync_client=True) as prefect:
        prefect.set_flow_run_state(run_id, state, force=True)


def _keyed_run(email_id: str, deployment: str = DEPLOYMENT) -> FlowRun:
    """The run the receiver would start for `email_id` (nothing serves `DEPLOYMENT`)."""

    async def start() -> FlowRun:
        async with get_client() as prefect:
            audience = connection.current_settings().replies.audience
            return await start_answer(prefect, email_id, audience, deployment=deployment)

    return asyncio.run(start())


@pytest.fixture
def suspension_between_reads(monkeypatch: pytest.MonkeyPatch) -> Callable[[UUID, str], None]:
    """Arms a hook: the first time anyone reads run `run_id` (its state or its history), the
    run is suspended on `key` right after that read, as a run that suspends at that moment."""

    def arm(run_id: UUID, key: str) -> None:
        fired = False

        def hooked(original: Callable[..., Any]) -> Callable[..., Any]:
            async def read(self: PrefectClient, flow_run_id: UUID) -> Any:
                nonlocal fired
                result = await original(self, flow_run_id)
                if flow_run_id == run_id and not fired:
                    fired = True
                    _force(run_id, Suspended(timeout_seconds=3600, pause_key=key))
                return result

            return read

        for name in ("read_flow_run", "read_flow_run_states"):
            monkeypatch.setattr(PrefectClient, name, hooked(getattr(PrefectClient, name)))

    return arm


def test_a_suspension_between_two_reads_is_resumed_not_just_acknowledged(
    mail_env: list[MailboxState],
    answer_deployment: UUID,
    suspension_between_reads: Callable[[UUID, str], None],
) -> None:
    """The receiver must not answer `resumed` (which stops MultiMail's redeliveries) for a run
    it never resumed: here the run's suspension lands between the receiver's reads."""
    run = _keyed_run("inbound-between-reads")
    _force(run.id, Running())
    key = pause_key("reply-between-reads")
    suspension_between_reads(run.id, key)

    outcome = asyncio.run(resume_waiting_run(str(run.id), "reply-between-reads"))

    state = _state(run.id)
    assert not state.is_paused(), f"answered {outcome!r} but the run is still {state.name}"
    assert outcome == "resumed"
    assert state.name == "Resuming"


@pytest.fixture
def decision_while_suspending(
    monkeypatch: pytest.MonkeyPatch, operator_client: MultiMailClient
) -> Iterator[None]:
    """The operator decides the pending reply in the last moment before Prefect records the
    run's suspension, and no receiver is subscribed: no webhook will ever resume the run."""
    original = SyncPrefectClient.set_flow_run_state

    def set_state(self: SyncPrefectClient, flow_run_id: UUID, state: State[Any], **kw: Any) -> Any:
        if state.is_paused():
            (pending,) = operator_client.list_pending()
            operator_client.decide(pending.id, "approve")
        return original(self, flow_run_id, state, **kw)

    monkeypatch.setattr(SyncPrefectClient, "set_flow_run_state", set_state)
    yield
    monkeypatch.undo()


def test_a_decision_made_while_the_run_suspends_resumes_it(
    fake: FakeMultiMail,
    client: MultiMailClient,
    mail_env: list[MailboxState],
    answer_deployment: UUID,
    decision_while_suspending: None,
) -> None:
    """After its last look at the reply and before its suspension is recorded, the reply is
    approved: the run must see that itself and resume, not wait for the approval timeout."""
    inbound = _deliver(fake, mail_env, "Decided while suspending")
    run = _keyed_run(inbound)
    parameters = {"email_id": inbound, "wait": "suspend"}

    with pytest.raises(Pause):  # the process leaves, as a worker's would
        run_flow(answer_inbound, flow_run=run, parameters=parameters)

    state = _state(run.id)
    assert not state.is_paused(), "the run stayed suspended on a decided reply"
    assert state.type == StateType.SCHEDULED  # resumed: a worker runs it again from the top
    report = run_flow(answer_inbound, flow_run=run, parameters=parameters)
    assert isinstance(report, ReplyReport)
    assert report.outcome == "sent"
    assert _inbound_state(client, inbound) == "reply-sent"
    assert [reply.status for reply in _replies(client)] == ["sent"]


def test_a_decision_no_webhook_delivered_continues_the_run_at_the_next_sweep(
    fake: FakeMultiMail,
    client: MultiMailClient,
    operator_client: MultiMailClient,
    mail_env: list[MailboxState],
    served_flows: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The receiver was down for the whole of MultiMail's retries (here: never subscribed).
    The approval sweep resumes the run whatever its age, long before the approval timeout."""
    inbound, run_id = _suspended_answer(fake, mail_env, "Lost decision")
    other_inbound, waiting = _suspended_answer(fake, mail_env, "Still undecided")
    reply = _inbound_tags(client, inbound)["reply_id"]
    operator_client.decide(reply, "approve")

    # The sweep flow as deployed: the key from its Secret block, not the environment.
    Secret(value=os.environ["MULTIMAIL_API_KEY"]).save(
        connection.current_settings().api_key_block, overwrite=True
    )
    monkeypatch.delenv("MULTIMAIL_API_KEY")
    connection.reset()
    assert asyncio.run(expire_approval_waits()) == [str(run_id)]

    finished = _wait_for_state(run_id, final=True)
    assert finished.state is not None
    assert finished.state.is_completed(), finished.state
    assert _inbound_state(client, inbound) == "reply-sent"
    assert _state(waiting).is_paused()  # undecided and not expired: left waiting
    assert _inbound_state(client, other_inbound) == "awaiting-decision"

    other_reply = _inbound_tags(client, other_inbound)["reply_id"]
    operator_client.decide(other_reply, "reject")
    assert asyncio.run(resume_settled_waits()) == [str(waiting)]
    finished = _wait_for_state(waiting, final=True)
    assert finished.state is not None
    assert finished.state.is_completed(), finished.state
    assert _inbound_state(client, other_inbound) == "reply-rejected"


@pytest.fixture
def unserved_local_deployment() -> None:
    """answer-inbound's `local` twin registered as `serve` registers it, before anything
    serves it."""
    (deployment,) = [d for d in served_deployments() if d.flow_name == answer_inbound.name]
    deployment.apply()


#: How a run dies, and what it leaves on the server.
DEATHS: dict[str, State[None]] = {
    "crashed": Crashed(message="Flow run infrastructure exited with non-zero status"),
    "pending with no process": Pending(),  # its worker died while submitting it
    "running with no heartbeat": Running(),  # its process and its worker died together
}


@pytest.mark.usefixtures("unserved_local_deployment")
def test_reconcile_runs_each_dead_run_again_and_each_email_is_answered_once(
    fake: FakeMultiMail,
    client: MultiMailClient,
    mail_env: list[MailboxState],
    approving_operator: object,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    # Started before anything serves them, and dead before any process ran them to the end.
    dead: dict[str, FlowRun] = {}
    for death, state in DEATHS.items():
        inbound = _deliver(fake, mail_env, f"Dead run, {death}")
        dead[inbound] = _keyed_run(inbound, deployment=SERVED_ANSWER)
        _force(dead[inbound].id, state)
    expected = {inbound: str(run.id) for inbound, run in dead.items()}

    def reconcile_pass() -> dict[str, str]:
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}):
            return asyncio.run(reconcile_inbound(deployment=SERVED_ANSWER))

    # Within its bounds a Pending or Running run may be slow, not dead: left alone.
    monkeypatch.setenv("MULTIMAIL_STUCK_RUN_SECONDS", "3600")
    connection.reset()
    assert reconcile_pass() == expected
    assert [_state(run.id).name for run in dead.values()] == [
        "AwaitingRetry",  # the crashed one: the same run, scheduled again
        "Pending",
        "Running",
    ]
    # Past them (shrunk here from minutes): dead, and scheduled again too.
    monkeypatch.setenv("MULTIMAIL_STUCK_RUN_SECONDS", "0")
    monkeypatch.setattr(reconcile_module, "MISSED_HEARTBEATS", 0)
    connection.reset()
    assert reconcile_pass() == expected
    assert [_state(run.id).name for run in dead.values()] == ["AwaitingRetry"] * 3

    request.getfixturevalue("served_flows")  # a worker comes back
    request.getfixturevalue("receiver")  # and the decisions resume the reruns that suspend
    for inbound, run in dead.items():
        finished = _wait_for_state(run.id, final=True, timeout=120)
        assert finished.state is not None
        assert finished.state.is_completed(), finished.state
        assert _inbound_state(client, inbound) == "reply-sent"
    assert [reply.status for reply in _replies(client)] == ["sent"] * 3
    # Answered: the next pass has nothing to do.
    assert reconcile_pass() == {}
