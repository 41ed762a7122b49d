"""Mailboxes and modes: create, change and delete mailboxes; the trust ladder and its upgrades.

A new mailbox starts in `gated_send`. Tightening the mode is a plain update; loosening it takes
an upgrade request (the operator receives a one-time code) and the upgrade with that code.
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .base import ApiError, Json, hash_secret, is_email, locked
from .keys import TENANT_SLUG, ApiKey, KeysAndAudit

#: The trust ladder, most restrictive first.
MODES = ("read_only", "gated_all", "gated_send", "monitored", "autonomous")
GATED_MODES = frozenset({"read_only", "gated_all", "gated_send"})
TENANT_DOMAIN = f"{TENANT_SLUG}.multimail.dev"
UPGRADE_CODE_TTL = timedelta(hours=24)
UPGRADE_WINDOW = timedelta(hours=1)
UPGRADE_REQUESTS_PER_WINDOW = 3

_NULLABLE_MAILBOX_FIELDS = frozenset({"display_name", "auto_cc", "auto_bcc", "signature_block"})
_LOCAL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._+-]{0,62}[a-z0-9])?$")


@dataclass
class UpgradeRequest:
    code_hash: str = field(repr=False)
    target_mode: str
    expires_at: datetime


@dataclass
class Mailbox:
    id: str
    address: str
    display_name: str | None
    oversight_mode: str
    created_at_ms: int
    auto_cc: str | None = None
    auto_bcc: str | None = None
    forward_inbound: int = 0
    signature_block: str | None = None
    deleted: bool = False
    upgrade_request_times: list[datetime] = field(default_factory=list)
    upgrade_request: UpgradeRequest | None = None
    #: idempotency key -> (email id, when it was first used)
    idempotency: dict[str, tuple[str, datetime]] = field(default_factory=dict)
    #: content fingerprint -> (email id, when) for the 60-second duplicate check
    recent: dict[tuple[Any, ...], tuple[str, datetime]] = field(default_factory=dict)

    def to_json(self, tenant_id: str) -> Json:
        return {
            "id": self.id,
            "tenant_id": tenant_id,
            "address": self.address,
            "display_name": self.display_name,
            "oversight_mode": self.oversight_mode,
            "auto_cc": self.auto_cc,
            "auto_bcc": self.auto_bcc,
            "forward_inbound": self.forward_inbound,
            "webhook_url": None,
            "oversight_webhook_url": None,
            "signature_block": self.signature_block,
            "ai_disclosure": True,
            "created_at": self.created_at_ms,
            "is_active": 0 if self.deleted else 1,
        }


class Mailboxes(KeysAndAudit):
    """The mailboxes of the account and their oversight modes."""

    def _clear(self) -> None:
        super()._clear()
        self.mailboxes: dict[str, Mailbox] = {}
        self.used_addresses: set[str] = set()

    def _mailbox(self, mailbox_id: str) -> Mailbox:
        mailbox = self.mailboxes.get(mailbox_id)
        if mailbox is None or mailbox.deleted:
            raise ApiError(404, "Mailbox not found")
        return mailbox

    @locked
    def list_mailboxes(self) -> Json:
        tenant = self.account["id"]
        return {"mailboxes": [m.to_json(tenant) for m in self.mailboxes.values() if not m.deleted]}

    @locked
    def get_mailbox(self, mailbox_id: str) -> Json:
        return self._mailbox(mailbox_id).to_json(self.account["id"])

    @locked
    def create_mailbox(
        self,
        actor: ApiKey | None,
        address_local: str | None,
        display_name: str | None = None,
        ai_disclosure: bool | None = None,
    ) -> Json:
        if ai_disclosure is False:
            raise ApiError(400, "ai_disclosure: AI disclosure is always on and cannot be disabled")
        if not address_local:
            raise ApiError(400, "address_local: required")
        local = address_local.strip().lower()
        if "@" in local:
            local, _, domain = local.partition("@")
            if domain != TENANT_DOMAIN:
                raise ApiError(400, f"address: the domain must be {TENANT_DOMAIN}")
        if not _LOCAL_RE.fullmatch(local):
            raise ApiError(
                400,
                "address_local: use 1-64 lowercase letters, digits, '.', '_', '+' or '-', "
                "starting and ending with a letter or digit",
            )
        address = f"{local}@{TENANT_DOMAIN}"
        if address in self.used_addresses:
            raise ApiError(409, f"Address {address} is already taken")
        active = sum(1 for m in self.mailboxes.values() if not m.deleted)
        if active >= self.account["max_mailboxes"]:
            raise ApiError(403, "Mailbox limit of the plan reached")
        mailbox = Mailbox(
            id=self._new_id(),
            address=address,
            display_name=display_name,
            oversight_mode="gated_send",
            created_at_ms=int(self.now().timestamp() * 1000),
        )
        self.mailboxes[mailbox.id] = mailbox
        self.used_addresses.add(address)
        self._audit(
            actor,
            "mailbox.create",
            "mailbox",
            mailbox.id,
            {"address": address, "display_name": display_name, "oversight_mode": "gated_send"},
        )
        return mailbox.to_json(self.account["id"])

    @locked
    def update_mailbox(self, actor: ApiKey, mailbox_id: str, changes: Json) -> Json:
        """Apply a PATCH; `changes` holds only the fields the client sent."""
        mailbox = self._mailbox(mailbox_id)
        if changes.get("ai_disclosure", True) is not True:
            raise ApiError(400, "ai_disclosure: AI disclosure is always on and cannot be disabled")
        # An explicit null clears a nullable field and is ignored for the others.
        changes = {
            k: v
            for k, v in changes.items()
            if k != "ai_disclosure" and (v is not None or k in _NULLABLE_MAILBOX_FIELDS)
        }
        if "forward_inbound" in changes:
            changes["forward_inbound"] = int(changes["forward_inbound"])  # JSON true -> 1
        mode = changes.get("oversight_mode")
        if mode is not None and MODES.index(mode) > MODES.index(mailbox.oversight_mode):
            raise ApiError(
                403,
                f"Cannot loosen oversight from {mailbox.oversight_mode} to {mode} with PATCH: "
                f"request an upgrade with POST /v1/mailboxes/{mailbox.id}/request-upgrade",
            )
        for name in ("auto_cc", "auto_bcc"):
            value = changes.get(name)
            if value and not is_email(value):
                raise ApiError(400, f"{name}: not a valid email address")
        old = {name: getattr(mailbox, name) for name in changes}
        for name, value in changes.items():
            setattr(mailbox, name, value)
        self._audit(actor, "mailbox.update", "mailbox", mailbox.id, {"old": old, "new": changes})
        return {"status": "updated"}

    @locked
    def delete_mailbox(self, actor: ApiKey, mailbox_id: str) -> Json:
        mailbox = self._mailbox(mailbox_id)
        mailbox.deleted = True
        self._audit(actor, "mailbox.delete", "mailbox", mailbox.id, {"address": mailbox.address})
        return {"status": "deleted"}

    @locked
    def request_upgrade(self, actor: ApiKey, mailbox_id: str, target_mode: str) -> Json:
        mailbox = self._mailbox(mailbox_id)
        if MODES.index(target_mode) <= MODES.index(mailbox.oversight_mode):
            raise ApiError(
                400,
                f"target_mode: {target_mode} is not less restrictive than "
                f"{mailbox.oversight_mode}; tighten the mode with PATCH instead",
            )
        now = self.now()
        window = [t for t in mailbox.upgrade_request_times if now - t < UPGRADE_WINDOW]
        mailbox.upgrade_request_times = window
        if len(window) >= UPGRADE_REQUESTS_PER_WINDOW:
            retry = math.ceil((window[0] + UPGRADE_WINDOW - now).total_seconds())
            raise ApiError(
                429,
                "Too many upgrade requests for this mailbox (at most 3 an hour)",
                headers={"Retry-After": str(max(retry, 1))},
            )
        window.append(now)
        code = f"{secrets.randbelow(10**8):08d}"
        # Only the newest code is valid: a new request replaces the previous one.
        mailbox.upgrade_request = UpgradeRequest(
            code_hash=hash_secret(code), target_mode=target_mode, expires_at=now + UPGRADE_CODE_TTL
        )
        self._notify_operator(
            "upgrade_code",
            mailbox.id,
            f"Upgrade code for {mailbox.address}",
            f"An agent asks to move {mailbox.address} from {mailbox.oversight_mode} to "
            f"{target_mode}. If you agree, give it this one-time code (valid 24 hours): {code}",
            code=code,
        )
        self._audit(
            actor,
            "mailbox.upgrade_requested",
            "mailbox",
            mailbox.id,
            {"from_mode": mailbox.oversight_mode, "target_mode": target_mode},
        )
        return {"status": "upgrade_requested"}

    @locked
    def upgrade(self, actor: ApiKey, mailbox_id: str, code: str) -> Json:
        mailbox = self._mailbox(mailbox_id)
        request = mailbox.upgrade_request
        if request is None:
            raise ApiError(404, "No pending upgrade request for this mailbox")
        if request.expires_at <= self.now():
            mailbox.upgrade_request = None
            raise ApiError(403, "Upgrade code expired: request a new one")
        if not secrets.compare_digest(request.code_hash, hash_secret(code.strip())):
            raise ApiError(403, "Invalid upgrade code")
        old = mailbox.oversight_mode
        mailbox.oversight_mode = request.target_mode
        mailbox.upgrade_request = None
        self._audit(
            actor,
            "mailbox.upgraded",
            "mailbox",
            mailbox.id,
            {"old": {"oversight_mode": old}, "new": {"oversight_mode": mailbox.oversight_mode}},
        )
        return {"status": "upgraded", "oversight_mode": mailbox.oversight_mode}
