"""Project settings: `settings.toml` beside this module, overridden by MULTIMAIL_* variables.

The TOML file holds what Copier rendered (audiences, API URL, Secret block name); environment
variables and a local `.env` file win over it. The API key is only ever read from the
environment (or the Prefect Secret block, see `mail/connection.py`), never from the TOML file.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

SETTINGS_FILE = Path(__file__).with_name("settings.toml")

#: Settings that hold secrets: read from the environment (or .env) only, never from the TOML file,
#: which is committed.
SECRET_FIELDS = {"api_key": "MULTIMAIL_API_KEY", "webhook_secret": "MULTIMAIL_WEBHOOK_SECRET"}

#: MultiMail remembers an idempotency key for 24 hours. A wait must end well before that, or a
#: flow rerun after a late decision could send a message a second time.
MAX_APPROVAL_TIMEOUT_SECONDS = 23 * 3600


class OversightMode(StrEnum):
    """MultiMail's trust ladder, most restrictive first."""

    READ_ONLY = "read_only"
    GATED_ALL = "gated_all"
    GATED_SEND = "gated_send"
    MONITORED = "monitored"
    AUTONOMOUS = "autonomous"

    @property
    def rank(self) -> int:
        """Position on the ladder: a higher rank trusts the agent more."""
        return list(OversightMode).index(self)


AddressLocalPart = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$")
]


class Audience(BaseModel):
    """Who a flow writes to: one mailbox, with its own oversight mode."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mailbox: AddressLocalPart = Field(description="Local part of the mailbox address.")
    oversight_mode: OversightMode = Field(description="How much a human sees of this mail.")
    purpose: str = Field(description="One line on what this audience's mail is for.")


class DigestSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    audience: str
    recipients: list[str] = Field(min_length=1)


class ReplySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    audience: str


#: The variable a model provider's key is read from, by the provider part of the model name;
#: any other provider `<name>` reads `<NAME>_API_KEY` unless `[drafting] api_key_env` says.
MODEL_KEY_VARIABLES = {
    "anthropic": "ANTHROPIC_API_KEY",
    "cohere": "CO_API_KEY",
    "google-gla": "GOOGLE_API_KEY",
    "openai": "OPENAI_API_KEY",
    "openai-chat": "OPENAI_API_KEY",
    "openai-responses": "OPENAI_API_KEY",
}


class DraftingSettings(BaseModel):
    """Who drafts replies to inbound mail: the fixed draft, or a model (drafting/agent.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(
        default="",
        description="pydantic-ai's name of the model, e.g. openai:gpt-5-mini; empty: no model.",
    )
    api_key_block: str = Field(
        default="", description="Prefect Secret block with the provider's key when deployed."
    )
    api_key_env: str | None = Field(
        default=None, description="The variable with the provider's key, if not the usual one."
    )
    max_requests: int = Field(default=3, ge=1, description="Model requests per draft, at most.")
    max_total_tokens: int = Field(default=20_000, ge=1, description="Tokens per draft, at most.")

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: str) -> str:
        if value and not re.fullmatch(r"[a-z][a-z0-9-]*:[A-Za-z0-9._:/@-]+", value):
            raise ValueError(
                f"[drafting] model must be empty (no model: the fixed draft) or "
                f"<provider>:<model> as pydantic-ai names it, e.g. openai:gpt-5-mini or "
                f"anthropic:claude-sonnet-4-5 (got {value!r})"
            )
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.model)

    @property
    def provider(self) -> str:
        return self.model.split(":", 1)[0]

    @property
    def key_variable(self) -> str:
        """Where the provider's key is read from: OPENAI_API_KEY for openai:..., and so on."""
        default = f"{self.provider.upper().replace('-', '_')}_API_KEY"
        return self.api_key_env or MODEL_KEY_VARIABLES.get(self.provider, default)


class SettingsFile(TomlConfigSettingsSource):
    """settings.toml, refusing any secret in it with the variable to use instead."""

    def __call__(self) -> dict[str, Any]:
        values = super().__call__()
        for field, variable in SECRET_FIELDS.items():
            if field in values:
                raise ValueError(
                    f"{SETTINGS_FILE.name} must not hold {field}: it is committed. Remove it and "
                    f"set {variable} in the environment or in the git-ignored .env instead."
                )
        return values


class SettingsError(ValueError):
    """The settings do not load; the message names each variable or key to fix."""


class Settings(BaseSettings):
    """Everything the client, tasks and flows need to know, validated once."""

    model_config = SettingsConfigDict(
        env_prefix="MULTIMAIL_",
        # MULTIMAIL_AUDIENCES__CUSTOMERS__OVERSIGHT_MODE=monitored overrides one nested value.
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        toml_file=SETTINGS_FILE,
        frozen=True,
    )

    api_url: str = "https://api.multimail.dev"
    api_key: SecretStr | None = Field(
        default=None, description="Set through MULTIMAIL_API_KEY only; never in settings.toml."
    )
    api_key_block: str
    webhook_secret: SecretStr | None = Field(
        default=None, description="Set through MULTIMAIL_WEBHOOK_SECRET only."
    )
    webhook_secret_block: str
    timeout_seconds: float = Field(default=30.0, gt=0)
    approval_timeout_seconds: float = Field(default=3600.0, gt=0, le=MAX_APPROVAL_TIMEOUT_SECONDS)
    retries: int = Field(default=5, ge=0, le=50)
    retry_backoff_seconds: float = Field(default=1.0, ge=0)
    retry_after_cap_seconds: float = Field(default=60.0, ge=0)
    scan_timeout_seconds: float = Field(default=60.0, gt=0)
    max_replies_per_thread_per_day: int = Field(default=3, ge=1)
    answer_concurrency_limit: int = Field(default=4, ge=1)
    stuck_run_seconds: float = Field(default=180.0, ge=0)
    digest: DigestSettings
    replies: ReplySettings
    audiences: dict[str, Audience] = Field(min_length=1)
    drafting: DraftingSettings = DraftingSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            SettingsFile(settings_cls),
        )

    @field_validator("api_url")
    @classmethod
    def _check_api_url(cls, value: str) -> str:
        if not re.fullmatch(r"https?://[^/\s?#@]+/?", value):
            raise ValueError(
                f"api_url must be http(s)://host[:port] without path or credentials, e.g. "
                f"https://api.multimail.dev (got {value!r}); set it in {SETTINGS_FILE.name} or "
                "MULTIMAIL_API_URL"
            )
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check_references(self) -> Settings:
        for role, name in (("digest", self.digest.audience), ("replies", self.replies.audience)):
            if name not in self.audiences:
                raise ValueError(
                    f"[{role}] audience = {name!r} is not one of the audiences in "
                    f"{SETTINGS_FILE.name}: {', '.join(sorted(self.audiences))}"
                )
        if self.drafting.enabled and not self.drafting.api_key_block:
            raise ValueError(
                f"[drafting] model = {self.drafting.model!r} needs [drafting] api_key_block: the "
                "Prefect Secret block deployed runs read the provider's key from"
            )
        mailboxes = [a.mailbox for a in self.audiences.values()]
        if len(set(mailboxes)) != len(mailboxes):
            raise ValueError(f"each audience needs its own mailbox; got {mailboxes}")
        return self

    def audience(self, name: str) -> Audience:
        """The audience called `name`, or an error that lists the ones that exist."""
        try:
            return self.audiences[name]
        except KeyError:
            raise KeyError(
                f"unknown audience {name!r}; {SETTINGS_FILE.name} defines "
                f"{', '.join(sorted(self.audiences))}"
            ) from None


def load_settings(*, read_env_file: bool = True) -> Settings:
    """Read and validate the settings now, or raise `SettingsError` naming what to fix.

    `read_env_file=False` ignores a `.env` in the working directory (deployed runs, tests).
    """
    try:
        return Settings() if read_env_file else Settings(_env_file=None)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            path = [str(part) for part in item["loc"]]
            variable = "MULTIMAIL_" + "__".join(part.upper() for part in path)
            where = ".".join(path) or "settings"
            problems.append(f"{where} (set in {SETTINGS_FILE.name} or {variable}): {item['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
