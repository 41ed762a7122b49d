"""Typed views of MultiMail's JSON objects, as the API contract describes them.

Models ignore fields they do not know (the API may grow) and read the documented aliases some
integrations use (`from_address`, `to_addresses`, `created_at`, `text_body`), primary names first.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr


class ApiModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class Mailbox(ApiModel):
    id: str
    address: str
    display_name: str | None = None
    oversight_mode: str = "gated_send"
    webhook_url: str | None = None
    is_active: int | bool = 1

    @property
    def local_part(self) -> str:
        return self.address.partition("@")[0]


class EmailSummary(ApiModel):
    id: str
    sender: str = Field(default="", validation_alias=AliasChoices("from", "from_address"))
    to: list[str] = Field(default_factory=list, validation_alias=AliasChoices("to", "to_addresses"))
    subject: str = ""
    direction: Literal["inbound", "outbound"] | None = None
    status: str
    received_at: str | None = Field(
        default=None, validation_alias=AliasChoices("received_at", "created_at")
    )
    thread_id: str | None = None
    has_attachments: bool = False
    delivered_at: str | None = None


class Email(EmailSummary):
    cc: list[str] = Field(default_factory=list)
    markdown: str = Field(default="", validation_alias=AliasChoices("markdown", "text_body"))
    approved_at: str | None = None
    approved_by: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)


class EmailPage(ApiModel):
    emails: list[EmailSummary]
    cursor: str | None = None


class SendResult(ApiModel):
    """What send and reply answer: 202 `pending_scan`, or 200 `already_sent` on a repeat key."""

    id: str
    status: str
    thread_id: str | None = None
    idempotent: bool = False


class CancelResult(ApiModel):
    id: str
    status: str


class Thread(ApiModel):
    thread_id: str
    message_count: int
    participants: list[str] = Field(default_factory=list)
    last_activity: str | None = None
    has_unanswered_inbound: bool = False
    emails: list[EmailSummary] = Field(default_factory=list)


class PendingItem(ApiModel):
    id: str
    mailbox_id: str
    direction: Literal["inbound", "outbound"] | None = None
    sender: str = Field(default="", validation_alias=AliasChoices("from", "from_address"))
    to: list[str] = Field(default_factory=list, validation_alias=AliasChoices("to", "to_addresses"))
    subject: str = ""
    body_markdown: str = ""
    status: str


class AuditEntry(ApiModel):
    id: str
    action: str
    resource_type: str | None = None
    resource_id: str | None = None
    actor_key_id: str | None = None
    metadata: dict[str, object] = Field(default_factory=dict)
    created_at: str


class AuditPage(ApiModel):
    entries: list[AuditEntry]
    cursor: str | None = None


class WebhookSubscription(ApiModel):
    id: str
    url: str
    events: list[str] = Field(default_factory=list)
    mailbox_id: str | None = None
    #: Only in the answers to create and get-one; a SecretStr so that no repr or log shows it.
    signing_secret: SecretStr | None = None


class Account(ApiModel):
    id: str
    name: str | None = None
    slug: str
    plan: str | None = None
    oversight_email: str | None = None
