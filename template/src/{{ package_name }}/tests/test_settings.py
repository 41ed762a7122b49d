"""The rendered settings.toml, and what happens when a value or the key is wrong."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from ..mail import connection
from ..mail.connection import MissingSecretError, resolve_api_key
from ..settings import (
    SETTINGS_FILE,
    DraftingSettings,
    OversightMode,
    Settings,
    SettingsError,
    SettingsFile,
)


def test_rendered_settings_load_and_name_every_audience() -> None:
    settings = Settings()
    assert settings.audiences
    assert settings.digest.audience in settings.audiences
    assert settings.replies.audience in settings.audiences
    assert settings.api_key is None  # the key never comes from settings.toml


def test_environment_overrides_a_mode_without_touching_any_flow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = Settings().replies.audience
    monkeypatch.setenv(f"MULTIMAIL_AUDIENCES__{name.upper()}__OVERSIGHT_MODE", "monitored")
    settings = Settings()
    assert settings.audience(name).oversight_mode is OversightMode.MONITORED
    assert settings.audience(name).mailbox  # the rest of the audience stays as rendered


def test_a_bad_mode_is_refused_with_the_accepted_values(monkeypatch: pytest.MonkeyPatch) -> None:
    name = Settings().replies.audience
    monkeypatch.setenv(f"MULTIMAIL_AUDIENCES__{name.upper()}__OVERSIGHT_MODE", "yolo")
    with pytest.raises(ValidationError, match="autonomous"):
        Settings()


def test_a_secret_in_the_settings_file_is_refused_with_the_variable_to_use(
    tmp_path: Path,
) -> None:
    copy = tmp_path / "settings.toml"
    key = "mm_live_" + "0123456789abcdef" * 2
    copy.write_text(f'api_key = "{key}"\n' + SETTINGS_FILE.read_text())
    with pytest.raises(ValueError, match="MULTIMAIL_API_KEY") as caught:
        SettingsFile(Settings, toml_file=copy)()
    assert key not in str(caught.value)
    assert SettingsFile(Settings, toml_file=SETTINGS_FILE)()["audiences"]  # the real one loads


@pytest.mark.parametrize("url", ["api.multimail.dev", "https://api.multimail.dev/v1", "ftp://x"])
def test_a_bad_api_url_names_the_setting(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("MULTIMAIL_API_URL", url)
    with pytest.raises(ValidationError, match="MULTIMAIL_API_URL"):
        Settings()


def test_an_approval_timeout_beyond_the_idempotency_window_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MULTIMAIL_APPROVAL_TIMEOUT_SECONDS", str(24 * 3600))
    with pytest.raises(ValidationError, match="approval_timeout_seconds"):
        Settings()


@pytest.mark.parametrize(
    ("model", "variable"),
    [
        ("openai:gpt-5-mini", "OPENAI_API_KEY"),
        ("openai-chat:gpt-5-mini", "OPENAI_API_KEY"),
        ("openai-responses:gpt-5-mini", "OPENAI_API_KEY"),
        ("anthropic:claude-sonnet-4-5", "ANTHROPIC_API_KEY"),
        ("google-gla:gemini-2.5-flash", "GOOGLE_API_KEY"),
        ("mistral:mistral-large-latest", "MISTRAL_API_KEY"),
    ],
)
def test_the_drafting_models_key_is_read_from_its_providers_usual_variable(
    model: str, variable: str
) -> None:
    assert DraftingSettings(model=model).key_variable == variable


def test_unknown_audience_lists_the_known_ones() -> None:
    settings = Settings()
    with pytest.raises(KeyError, match=settings.replies.audience):
        settings.audience("nobody")


def test_missing_key_names_both_fixes() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    settings = Settings(_env_file=None)
    # Nothing listens on port 9: the Secret block cannot be loaded either.
    with (
        temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}),
        pytest.raises(MissingSecretError) as caught,
    ):
        resolve_api_key(settings)
    assert "MULTIMAIL_API_KEY" in str(caught.value)
    assert settings.api_key_block in str(caught.value)


def test_a_bad_variable_breaks_no_import_and_is_named_when_the_settings_are_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    package = __name__.split(".")[0]
    imported = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import {package}.flows.answer_inbound, {package}.oversight, {package}.mail",
        ],
        cwd=tmp_path,
        env={**os.environ, "MULTIMAIL_RETRIES": "many"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr  # settings are read when a task runs
    monkeypatch.setenv("MULTIMAIL_RETRIES", "many")
    connection.reset()
    try:
        with pytest.raises(SettingsError, match="MULTIMAIL_RETRIES"):
            connection.current_settings()
    finally:
        connection.reset()


def test_the_owners_dot_env_never_reaches_the_tests(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("MULTIMAIL_API_URL=https://owner.example\n")
    monkeypatch.chdir(tmp_path)
    assert Settings().api_url != "https://owner.example"


@pytest.mark.slow
def test_reading_settings_inside_a_flow_run_asks_prefect_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every mail task reads the settings; knowing whether the run is deployed must come from
    the flow run in context, not from a flow-run read per call (which made each task ~80 ms)."""
    from prefect import flow
    from prefect.runtime import deployment

    reads: list[object] = []
    read_flow_run = vars(deployment)["_get_flow_run"]

    async def counted(run_id: str) -> object:
        reads.append(run_id)
        return await read_flow_run(run_id)

    monkeypatch.setattr(deployment, "_get_flow_run", counted)

    @flow
    def reads_settings_five_times() -> list[bool]:
        return [connection.in_deployed_run() for _ in range(5)]

    assert reads_settings_five_times() == [False] * 5
    assert reads == []
