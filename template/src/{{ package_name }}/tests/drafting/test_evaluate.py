"""`drafts eval` and its checks, offline: scripted models that draft well or badly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pydantic_ai.exceptions import ModelHTTPError
from pydantic_ai.messages import ModelMessage, ModelResponse, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from typer.testing import CliRunner

from ...drafting.agent import drafting_with, sent_conversation
from ...drafting.evaluate import evaluate, load_cases
from ...mail import connection
from ...ops.cli import app

Writer = Callable[[dict[str, str]], dict[str, Any]]


def scripted(write: Writer) -> FunctionModel:
    """A model that drafts with `write(the email it was sent)`."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        email = sent_conversation(messages)["email_to_answer"]
        (output,) = info.output_tools
        return ModelResponse(parts=[ToolCallPart(output.name, write(email))])

    return FunctionModel(respond)


def careful(email: dict[str, str]) -> dict[str, Any]:
    if "GDPR" in email["body"]:
        return {"markdown": "", "escalate": "A request to delete personal data."}
    if "Bestellung" in email["body"]:
        return {"markdown": "Hallo, danke! Wir prüfen die Bestellung 2231 und melden uns."}
    return {"markdown": "Hello, thank you for your message. We will check and get back to you."}


def careless(email: dict[str, str]) -> dict[str, Any]:
    return {"markdown": "Hello, your order 9999 ships today; we wrote to mallory@example.net."}


@pytest.fixture
def model_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MULTIMAIL_DRAFTING__MODEL", "openai:gpt-5-mini")
    connection.reset()


@pytest.mark.usefixtures("model_configured")
def test_a_careful_model_passes_every_case() -> None:
    settings = connection.current_settings()
    with drafting_with(scripted(careful)):
        verdicts = evaluate(settings, settings.replies.audience, load_cases())
    assert [v.failures for v in verdicts] == [[]] * len(verdicts)
    assert {v.case for v in verdicts if v.draft.escalate} == {"data-deletion"}


@pytest.mark.usefixtures("model_configured")
def test_each_check_names_what_a_careless_model_got_wrong() -> None:
    settings = connection.current_settings()
    with drafting_with(scripted(careless)):
        verdicts = {
            v.case: v.failures for v in evaluate(settings, settings.replies.audience, load_cases())
        }
    assert verdicts["data-deletion"][0] == "replied, expected escalation"
    german = " ".join(verdicts["german-question"])
    assert "not written in the email's language (de)" in german
    assert "numbers the email does not contain: 9999" in german
    assert "addresses other than the sender's: mallory@example.net" in german


def test_drafts_eval_says_what_to_set_without_a_model_and_reports_with_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connection.reset()
    result = CliRunner().invoke(app, ["drafts", "eval"])
    assert result.exit_code == 2
    assert "set [drafting] model" in result.output

    monkeypatch.setenv("MULTIMAIL_DRAFTING__MODEL", "openai:gpt-5-mini")
    connection.reset()
    with drafting_with(scripted(careless)):
        result = CliRunner().invoke(app, ["drafts", "eval"])
    assert result.exit_code == 1
    assert "[FAILED] data-deletion: replied" in result.output
    assert "0 of 4 drafts by openai:gpt-5-mini passed." in result.output

    # A rate limit fails its case and the others still run; a refusal stops with what to fix.
    limited = iter([True])

    def rate_limited_once(email: dict[str, str]) -> dict[str, Any]:
        if next(limited, False):
            raise ModelHTTPError(429, "openai:gpt-5-mini", body={"error": "slow down"})
        return careful(email)

    with drafting_with(scripted(rate_limited_once)):
        result = CliRunner().invoke(app, ["drafts", "eval"])
    assert result.exit_code == 1
    assert "the model failed: status_code: 429" in result.output
    assert "3 of 4 drafts by openai:gpt-5-mini passed." in result.output

    def refusing(email: dict[str, str]) -> dict[str, Any]:
        raise ModelHTTPError(401, "openai:gpt-5-mini", body={"error": "invalid api key"})

    with drafting_with(scripted(refusing)):
        result = CliRunner().invoke(app, ["drafts", "eval"])
    assert result.exit_code == 2
    assert "Evaluation stopped: the drafting model openai:gpt-5-mini refused" in result.output
    assert "Traceback" not in result.output
    connection.reset()
