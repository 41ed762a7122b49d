"""reconcile-inbound: a message whose webhook never arrived gets its run, and no message gets
two, whether its webhook arrived, it was handled already, or reconcile runs again."""

from __future__ import annotations

import asyncio
from uuid import UUID

import pytest

from .. import credentials
from ..client import MultiMailClient
from ..fake import FakeMultiMail
from ..flows import STATE_TAG
from ..inbound import run_key
from ..provision import MailboxState
from ..reconcile import reconcile_inbound
from ..settings import OversightMode
from .inbound_support import (
    DEPLOYMENT,
    Receiver,
    answer_deployment,
    receiver,
    runs_answering,
    wait_until_released,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
__all__ = ["answer_deployment", "receiver"]


def _answering(states: list[MailboxState]) -> list[MailboxState]:
    settings = credentials.current_settings()
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
