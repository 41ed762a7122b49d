"""Drafts made in another process: `serve`'s flow runs draft with a scripted model served over
HTTP (scripted_server.py), counted across a failed first run, a rerun, a suspension and its
resume. Independent of the answers (it brings its own gated audience): the template's matrix
runs it once.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from pydantic_ai import models

from ...fake import FakeMultiMail
from ...fake.background import BackgroundServer
from ...flows.answer_inbound import answer_inbound
from ...mail import connection
from ...multimail.client import MultiMailClient
from ...multimail.provision import MailboxState
from ..oversight.test_approvals import (
    _deliver,
    _inbound_state,
    _replies,
    _suspended_answer,
    _wait_for_state,
    receiver,
    served_flows,
)
from .scripted_server import SCRIPTED_MODEL, ScriptedServer
from .test_agent import drafted_events, polite

__all__ = ["receiver", "served_flows"]


@pytest.fixture
def served_model(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedServer]:
    """A scripted model on 127.0.0.1 that drafts for runs in other processes (a `serve`d run):
    request it before `served_flows`, which passes the environment on."""
    model = ScriptedServer(polite)
    with BackgroundServer(model.app(), name="scripted-model") as server:
        monkeypatch.setenv("MULTIMAIL_DRAFTING__MODEL", SCRIPTED_MODEL)
        monkeypatch.setenv("OPENAI_BASE_URL", f"{server.base_url}/v1")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-scripted")
        connection.reset()
        yield model


@pytest.mark.slow
def test_a_draft_is_made_once_across_processes_a_failure_a_suspension_and_the_resume(
    gated_audience: str,
    served_model: ScriptedServer,
    mail_env: list[MailboxState],
    fake: FakeMultiMail,
    client: MultiMailClient,
    operator_client: MultiMailClient,
    served_flows: None,
    receiver: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A first run drafts and fails before its reply (here, in the test's process); the email's
    run is started again in `serve`'s process, as reconcile-inbound would: it sends for approval
    with the draft it finds and suspends (its process ends); the decision resumes it in a new
    process, which runs the flow from the top. One model request in all, and the reviewer is
    told which model drafted the reply."""
    monkeypatch.setattr(models, "ALLOW_MODEL_REQUESTS", True)  # the scripted server's only
    monkeypatch.setenv("MULTIMAIL_RETRIES", "0")  # this process only: `serve` is running
    connection.reset()
    inbound = _deliver(fake, mail_env, "Where is my order?")
    fault = {"path_prefix": "/v1/mailboxes/", "method": "POST", "status": 503}
    httpx.post(f"{fake.base_url}/_fake/faults", json=fault).raise_for_status()
    failed = answer_inbound.with_options(retries=0)(inbound, return_state=True)
    assert failed.is_failed()
    httpx.delete(f"{fake.base_url}/_fake/faults").raise_for_status()
    assert len(served_model.requests) == 1
    assert served_model.requests[0]["email_to_answer"]["subject"] == "Where is my order?"
    assert served_model.offered_tools == [["final_result"]]  # only the draft's own form
    assert _replies(client) == []

    _, run_id = _suspended_answer(fake, mail_env, "", inbound=inbound)
    (pending,) = operator_client.list_pending()
    page = httpx.get(f"{fake.base_url}/_fake/approvals").text  # what the reviewer sees
    assert f"an AI model, <code>{SCRIPTED_MODEL}</code>" in page
    operator_client.decide(pending.id, "approve")
    finished = _wait_for_state(run_id, final=True)
    assert finished.state is not None
    assert finished.state.is_completed(), finished.state
    assert _inbound_state(client, inbound) == "reply-sent"
    (reply,) = _replies(client)
    mailbox = client.mailbox_id(connection.current_settings().audience(gated_audience).mailbox)
    assert client.get_email(mailbox, reply.id).markdown.startswith("Hello, we are on it.")
    assert len(served_model.requests) == 1  # neither later process drafted (or billed) again
    (drafted,) = drafted_events(inbound)
    assert (drafted.payload["model"], drafted.payload["requests"]) == (SCRIPTED_MODEL, 1)
