"""The API keys (MultiMail's, a drafting model's) never land in a log line, a task result or
the Prefect database."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL
from pydantic import SecretStr

from ...fake import FakeMultiMail
from ...fake.operator import Operator
from ...flows.answer_inbound import answer_inbound
from ...flows.status_digest import status_digest
from ...mail import connection
from ...mail.redaction import MASK, mask, register_secret
from ...multimail.provision import MailboxState

pytestmark = pytest.mark.slow


def test_registered_secrets_are_masked_in_text() -> None:
    register_secret("whsec_" + "ab" * 16)
    assert mask("sig whsec_" + "ab" * 16 + " end") == f"sig {MASK} end"
    register_secret("short")  # too short to be a real secret: never masks ordinary words
    assert mask("a short text") == "a short text"


def test_a_secret_in_an_exception_is_masked_in_the_formatted_record(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "whsec_" + "cd" * 16
    register_secret(secret)
    logger = logging.getLogger("some.library")
    try:
        raise RuntimeError(f"signing with {secret} failed")
    except RuntimeError:
        logger.exception("webhook check failed")
    formatted = "\n".join(logging.Formatter().format(r) for r in caplog.records)
    assert "webhook check failed" in formatted
    assert secret not in formatted
    assert f"signing with {MASK} failed" in formatted


def test_the_webhook_secret_is_masked_once_resolved(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "whsec_" + "ef" * 16
    monkeypatch.setenv("MULTIMAIL_WEBHOOK_SECRET", secret)
    connection.reset()
    assert connection.resolve_webhook_secret(connection.current_settings()).get_secret_value()
    logging.getLogger("uvicorn.error").warning("bad delivery signed with %s", secret)
    assert secret not in caplog.text
    assert MASK in caplog.text
    connection.reset()


def test_the_drafting_models_key_is_masked_once_resolved(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    key = "sk-ant-" + "12" * 20
    monkeypatch.setenv("MULTIMAIL_DRAFTING__MODEL", "anthropic:claude-sonnet-4-5")
    monkeypatch.setenv("ANTHROPIC_API_KEY", key)
    connection.reset()
    assert connection.resolve_model_api_key(connection.current_settings()).get_secret_value()
    logging.getLogger("httpx").warning("POST with x-api-key %s refused", key)
    assert key not in caplog.text
    assert MASK in caplog.text
    connection.reset()


def test_no_key_in_logs_results_or_the_prefect_database(
    mail_env: list[MailboxState],
    fake: FakeMultiMail,
    app_key: SecretStr,
    approving_operator: Operator,
) -> None:
    key = app_key.get_secret_value()

    @flow
    def careless() -> str:
        get_run_logger().warning("calling MultiMail with %s", key)  # a log line gone wrong
        return "done"

    careless_run = careless(return_state=True).state_details.flow_run_id
    status_digest()
    audience = connection.current_settings().replies.audience
    address = next(s.address for s in mail_env if s.audience == audience)
    answer_inbound(
        fake.deliver_inbound(to=address, sender="a@example.com", subject="Hi", markdown="?")
    )

    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 15
        messages: list[str] = []
        while time.monotonic() < deadline:
            # This run's own logs: the session's server holds more than one page of others.
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[careless_run])))
            messages = [log.message for log in logs]
            if any("calling MultiMail with" in m for m in messages):
                break
            time.sleep(0.25)
        runs = client.read_flow_runs()
    assert f"calling MultiMail with {MASK}" in messages
    assert not [m for m in messages if key in m]
    assert all(key not in str(run.parameters) for run in runs)

    database = Path(str(PREFECT_SERVER_DATABASE_CONNECTION_URL.value()).split("///", 1)[1])
    stored = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
    assert b"calling MultiMail with" in stored  # the log line really reached the database
    assert key.encode() not in stored
