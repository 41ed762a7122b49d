"""The rendered settings.toml, and what happens when a value or the key is wrong."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ..credentials import MissingSecretError, resolve_api_key
from ..settings import OversightMode, Settings


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
