"""Request bodies; the models make FastAPI validate input and describe it in the OpenAPI schema.

Business rules that need state (address formats, duplicates, modes) live in the `state` package.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Mode = Literal["read_only", "gated_all", "gated_send", "monitored", "autonomous"]
Scope = Literal["read", "send", "admin", "oversight", "oversight_read"]
EmailStatus = Literal[
    "pending_scan",
    "pending_send_approval",
    "pending_inbound_approval",
    "scheduled",
    "sent",
    "unread",
    "read",
    "archived",
    "deleted",
    "rejected",
    "cancelled",
    "send_failed",
    "spam_flagged",
    "spam_quarantined",
]
Address = Annotated[str, Field(max_length=254)]
#: A mailbox's local part, optionally with the tenant domain (older clients send the address).
MailboxLocal = Annotated[
    str,
    Field(
        max_length=254,
        pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9._+-]{0,62}[A-Za-z0-9])?(?:@demo\.multimail\.dev)?$",
    ),
]
#: https anywhere; plain http only to the local machine (the fake's allowance).
WEBHOOK_URL_PATTERN = (
    r"^(?:https://[^\s/?#@]+|http://(?:127\.0\.0\.1|localhost)(?::[0-9]{1,5})?)(?:[/?#]\S*)?$"
)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class MailboxCreate(_Body):
    address_local: MailboxLocal | None = None
    address: MailboxLocal | None = Field(default=None, description="Older name of address_local.")
    address_local_part: MailboxLocal | None = Field(
        default=None, description="Older name of address_local."
    )
    display_name: str | None = Field(default=None, max_length=200)
    oversight_mode: Mode | None = Field(
        default=None, description="Ignored: a new mailbox always starts in gated_send."
    )
    ai_disclosure: bool | None = None


class MailboxUpdate(_Body):
    display_name: str | None = Field(default=None, max_length=200)
    oversight_mode: Mode | None = None
    auto_cc: str | None = Field(default=None, max_length=254)
    auto_bcc: str | None = Field(default=None, max_length=254)
    forward_inbound: Literal[0, 1] | None = None
    signature_block: str | None = Field(default=None, max_length=5000)
    ai_disclosure: bool | None = None


class UpgradeRequestBody(_Body):
    target_mode: Mode


class UpgradeBody(_Body):
    code: str = Field(min_length=1, max_length=64)


class AttachmentBody(_Body):
    name: str = Field(min_length=1, max_length=255)
    content_base64: str = Field(max_length=14_000_000)
    content_type: str = Field(default="application/octet-stream", min_length=1, max_length=255)


class SendBody(_Body):
    to: list[Address] = Field(min_length=1, max_length=50)
    subject: str = Field(min_length=1, max_length=998)
    markdown: str = Field(max_length=1_000_000)
    cc: list[Address] = Field(default_factory=list, max_length=50)
    bcc: list[Address] = Field(default_factory=list, max_length=50)
    attachments: list[AttachmentBody] = Field(default_factory=list, max_length=20)
    idempotency_key: str | None = Field(default=None, max_length=255)
    send_at: str | None = Field(
        default=None, max_length=64, description="ISO 8601 UTC time ending in Z."
    )
    gate_timing: Literal["gate_first", "schedule_first"] | None = None


class ReplyBody(_Body):
    markdown: str = Field(max_length=1_000_000)
    cc: list[Address] = Field(default_factory=list, max_length=50)
    bcc: list[Address] = Field(default_factory=list, max_length=50)
    attachments: list[AttachmentBody] = Field(default_factory=list, max_length=20)
    idempotency_key: str | None = Field(default=None, max_length=255)


class TagsBody(_Body):
    tags: dict[str, str] = Field(max_length=50)


class DecideBody(_Body):
    email_id: str = Field(max_length=64)
    action: Literal["approve", "reject"]
    reason: str | None = Field(default=None, max_length=2000)


class WebhookCreate(_Body):
    url: str = Field(max_length=2048, pattern=WEBHOOK_URL_PATTERN)
    events: list[str] = Field(min_length=1, max_length=20)
    mailbox_id: str | None = Field(default=None, max_length=64)


class ApiKeyCreate(_Body):
    name: str = Field(default="key", min_length=1, max_length=100)
    scopes: list[Scope] = Field(min_length=1, max_length=5)


# ---------------------------------------------------------------- control surface (/_fake/)


class FakeKeyCreate(_Body):
    scopes: list[Scope] = Field(min_length=1)
    name: str | None = Field(default=None, max_length=100)


class FakeInbound(_Body):
    to: str = Field(min_length=1, max_length=254)
    sender: str = Field(alias="from", min_length=1, max_length=254)
    subject: str = Field(default="", max_length=998)
    markdown: str = Field(default="", max_length=1_000_000)
    in_reply_to: str | None = Field(default=None, max_length=64)


class FakeFault(_Body):
    path_prefix: str | None = None
    method: str | None = Field(default=None, max_length=16)
    error_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    status: int | None = Field(default=None, ge=400, le=599)
    latency: float = Field(default=0.0, ge=0.0, le=60.0)
    retry_after: int | None = Field(default=None, ge=0)
    message: str | None = Field(default=None, max_length=500)
    drop_response: bool = False
    count: int | None = Field(default=None, ge=1)
    seed: int = 0


class FakeClockAdvance(_Body):
    seconds: float = Field(ge=0.0, le=100 * 366 * 24 * 3600)


class FakeConfig(_Body):
    scan_delay: float | None = Field(default=None, ge=0.0, le=3600.0)
    webhook_backoff: float | None = Field(default=None, ge=0.0, le=60.0)
    webhook_timeout: float | None = Field(default=None, gt=0.0, le=60.0)
