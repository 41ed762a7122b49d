"""In-memory state and business rules of the fake MultiMail service.

Everything the HTTP layer, the approval page and the Python control API do goes through
`FakeState`, under one re-entrant lock (the server runs in another thread than the tests).

Time comes from a fake clock: real UTC time plus an offset that `advance_clock` moves forward.
Clock-driven transitions (the content scan finishing, scheduled sends falling due) are applied
lazily by `tick()`, which runs at the start of every public operation, so the outcome of a
sequence of calls depends on the clock alone, not on thread timing.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import math
import re
import secrets
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Concatenate, ParamSpec, TypeVar

from ulid import ULID

from .faults import FaultRule
from .webhooks import Delivery, WebhookDispatcher

Json = dict[str, Any]

#: The trust ladder, most restrictive first.
MODES = ("read_only", "gated_all", "gated_send", "monitored", "autonomous")
GATED_MODES = frozenset({"read_only", "gated_all", "gated_send"})
SCOPES = frozenset({"read", "send", "admin", "oversight", "oversight_read"})
EVENTS = (
    "message.received",
    "message.sent",
    "message.delivered",
    "message.bounced",
    "oversight.pending",
    "oversight.approved",
    "oversight.rejected",
)
EVENT_ALIASES = {"email.received": "message.received"}
PENDING_STATUSES = frozenset({"pending_send_approval", "pending_inbound_approval"})
GATE_TIMINGS = ("gate_first", "schedule_first")

TENANT_SLUG = "demo"
TENANT_DOMAIN = f"{TENANT_SLUG}.multimail.dev"
OVERSIGHT_EMAIL = "operator@demo.example"
#: Recipients in this domain bounce, so that `message.bounced` can be exercised.
BOUNCE_DOMAIN = "bounce.example"

IDEMPOTENCY_TTL = timedelta(hours=24)
DEDUP_WINDOW = timedelta(seconds=60)
UPGRADE_CODE_TTL = timedelta(hours=24)
UPGRADE_WINDOW = timedelta(hours=1)
UPGRADE_REQUESTS_PER_WINDOW = 3

_EMAIL_RE = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)
_NULLABLE_MAILBOX_FIELDS = frozenset({"display_name", "auto_cc", "auto_bcc", "signature_block"})
_LOCAL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._+-]{0,62}[a-z0-9])?$")

P = ParamSpec("P")
R = TypeVar("R")


class ApiError(Exception):
    """A failure the API reports as `{"error": message, **extra}` with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        extra: Json | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> Json:
        return {"error": self.message, **self.extra}


def iso(moment: datetime) -> str:
    """ISO 8601 UTC with milliseconds and a `Z` suffix."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def is_email(value: str) -> bool:
    return len(value) <= 254 and _EMAIL_RE.fullmatch(value) is not None


def _check_addresses(field_name: str, values: Iterable[str]) -> list[str]:
    checked = []
    for index, value in enumerate(values):
        if not is_email(value):
            raise ApiError(400, f"{field_name}[{index}]: not a valid email address")
        checked.append(value)
    return checked


def _hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


def _locked(
    method: Callable[Concatenate[FakeState, P], R],
) -> Callable[Concatenate[FakeState, P], R]:
    """Run a public state operation under the lock, after applying due clock transitions."""

    @functools.wraps(method)
    def wrapper(self: FakeState, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with self.lock:
            self._tick()
            return method(self, *args, **kwargs)

    return wrapper


@dataclass(frozen=True)
class NewAttachment:
    name: str
    content_base64: str
    content_type: str


@dataclass
class ApiKey:
    id: str
    name: str
    prefix: str
    scopes: tuple[str, ...]
    key_hash: str = field(repr=False)
    created_at: str
    revoked: bool = False

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes or (scope == "read" and "admin" in self.scopes)

    def to_json(self) -> Json:
        return {
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "scopes": list(self.scopes),
            "created_at": self.created_at,
        }


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


@dataclass
class Email:
    id: str
    mailbox_id: str
    direction: str
    status: str
    sender: str
    to: list[str]
    subject: str
    markdown: str
    thread_id: str
    created_at: datetime
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    attachments: list[Json] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    delivered_at: datetime | None = None
    approved_at: datetime | None = None
    approved_by: str | None = None
    send_at: datetime | None = None
    gate_timing: str = "gate_first"
    scan_due: datetime | None = None
    in_reply_to: str | None = None

    def summary(self) -> Json:
        received_at = iso(self.created_at)
        return {
            "id": self.id,
            "from": self.sender,
            "to": list(self.to),
            "subject": self.subject,
            "direction": self.direction,
            "status": self.status,
            "received_at": received_at,
            "thread_id": self.thread_id,
            "has_attachments": bool(self.attachments),
            "delivered_at": iso(self.delivered_at) if self.delivered_at else None,
            "send_at": iso(self.send_at) if self.send_at else None,
            "from_address": self.sender,
            "to_addresses": list(self.to),
            "created_at": received_at,
        }

    def full(self) -> Json:
        return {
            **self.summary(),
            "mailbox_id": self.mailbox_id,
            "cc": list(self.cc),
            "markdown": self.markdown,
            "text_body": self.markdown,
            "attachments": [dict(a) for a in self.attachments],
            "approved_at": iso(self.approved_at) if self.approved_at else None,
            "approved_by": self.approved_by,
            "tags": dict(self.tags),
            "in_reply_to": self.in_reply_to,
        }

    def pending_item(self) -> Json:
        return {
            "id": self.id,
            "mailbox_id": self.mailbox_id,
            "direction": self.direction,
            "from": self.sender,
            "to": list(self.to),
            "subject": self.subject,
            "body_markdown": self.markdown,
            "status": self.status,
            "received_at": iso(self.created_at),
        }


@dataclass
class Subscription:
    id: str
    url: str
    events: list[str]
    mailbox_id: str | None
    created_at: str
    signing_secret: str = field(repr=False)

    def wants(self, event: str, mailbox_id: str) -> bool:
        if self.mailbox_id is not None and self.mailbox_id != mailbox_id:
            return False
        return any(EVENT_ALIASES.get(e, e) == event for e in self.events)

    def to_json(self, *, with_secret: bool) -> Json:
        body: Json = {
            "id": self.id,
            "url": self.url,
            "events": list(self.events),
            "mailbox_id": self.mailbox_id,
            "created_at": self.created_at,
        }
        if with_secret:
            body["signing_secret"] = self.signing_secret
        return body


def _page(items: list[Json], limit: int, cursor: str | None) -> tuple[list[Json], str | None]:
    """Cursor pagination over items sorted newest first by ULID `id`; the cursor is the last id."""
    if cursor:
        items = [item for item in items if item["id"] < cursor]
    page = items[:limit]
    more = len(items) > limit
    return page, (page[-1]["id"] if more and page else None)


class FakeState:
    """The account, its keys, mailboxes, emails and everything around them."""

    def __init__(
        self,
        *,
        scan_delay: float = 0.0,
        webhook_backoff: float = 1.0,
        webhook_timeout: float = 5.0,
    ) -> None:
        self.lock = threading.RLock()
        self._defaults = (scan_delay, webhook_backoff, webhook_timeout)
        self.dispatcher = WebhookDispatcher(self.lock, lambda: iso(self.now()))
        self._clear()

    # ------------------------------------------------------------------ lifecycle, clock, ids

    def _clear(self) -> None:
        self.scan_delay, self.dispatcher.backoff, self.dispatcher.timeout = self._defaults
        self._offset = 0.0
        self._last_ulid = 0
        self.account: Json = {
            "id": self._new_id(),
            "name": "Demo Agents Inc.",
            "slug": TENANT_SLUG,
            "plan": "pro",
            "oversight_email": OVERSIGHT_EMAIL,
            "monthly_email_quota": 10000,
            "emails_sent_this_month": 0,
            "max_mailboxes": 100,
            "is_active": True,
            "sending_disabled": False,
        }
        self.keys: dict[str, ApiKey] = {}
        self.mailboxes: dict[str, Mailbox] = {}
        self.used_addresses: set[str] = set()
        self.emails: dict[str, Email] = {}
        self.audit: list[Json] = []
        self.operator: list[Json] = []
        self.subscriptions: dict[str, Subscription] = {}
        self.deliveries: list[Delivery] = []
        self.faults: list[FaultRule] = []
        #: emails whose status the clock may change (pending_scan, scheduled)
        self._timed: set[str] = set()

    def reset(self) -> None:
        """Back to a clean default account; queued webhook deliveries are dropped."""
        with self.lock:
            self.dispatcher.clear()
            self._clear()

    def close(self) -> None:
        self.dispatcher.close()

    def config(self) -> Json:
        with self.lock:
            return {
                "scan_delay": self.scan_delay,
                "webhook_backoff": self.dispatcher.backoff,
                "webhook_timeout": self.dispatcher.timeout,
            }

    def configure(
        self,
        *,
        scan_delay: float | None = None,
        webhook_backoff: float | None = None,
        webhook_timeout: float | None = None,
    ) -> Json:
        """Change timing settings until the next reset (which restores the defaults)."""
        with self.lock:
            if scan_delay is not None:
                self.scan_delay = scan_delay
            if webhook_backoff is not None:
                self.dispatcher.backoff = webhook_backoff
            if webhook_timeout is not None:
                self.dispatcher.timeout = webhook_timeout
            return self.config()

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self._offset)

    def _new_id(self) -> str:
        """A ULID from the fake clock, strictly increasing so that ids sort by creation."""
        value = (int(self.now().timestamp() * 1000) << 80) | secrets.randbits(80)
        value = max(value, self._last_ulid + 1)
        self._last_ulid = value
        return str(ULID.from_int(value))

    def tick(self) -> None:
        with self.lock:
            self._tick()

    def advance_clock(self, seconds: float) -> str:
        with self.lock:
            if not math.isfinite(seconds) or seconds < 0:
                raise ApiError(400, "seconds: must be a finite number >= 0")
            self._offset += seconds
            self._tick()
            return iso(self.now())

    def _tick(self) -> None:
        now = self.now()
        for email_id in sorted(self._timed):
            email = self.emails[email_id]
            if email.status == "pending_scan" and email.scan_due and email.scan_due <= now:
                self._finish_scan(email)
            if email.status == "scheduled" and email.send_at and email.send_at <= now:
                mailbox = self.mailboxes[email.mailbox_id]
                if email.approved_at is None and mailbox.oversight_mode in GATED_MODES:
                    self._hold(email)  # gate_timing "schedule_first": approval at send time
                else:
                    self._deliver(email)
            if email.status not in ("pending_scan", "scheduled"):
                self._timed.discard(email_id)

    # ------------------------------------------------------------------ keys and auth

    @_locked
    def create_key(self, scopes: Iterable[str], name: str | None = None) -> tuple[ApiKey, str]:
        """Create an API key; returns the record and the raw key (shown once, stored hashed)."""
        wanted = list(dict.fromkeys(scopes))
        if not wanted:
            raise ApiError(400, "scopes: at least one scope is required")
        unknown = [s for s in wanted if s not in SCOPES]
        if unknown:
            raise ApiError(400, f"scopes: unknown scope {unknown[0]!r}")
        if "send" in wanted and "oversight" in wanted:
            raise ApiError(
                400,
                "scopes: a key cannot hold both 'send' and 'oversight' "
                "(an agent must not approve its own mail)",
            )
        raw = "mm_live_" + secrets.token_hex(16)
        key = ApiKey(
            id=self._new_id(),
            name=name or "key",
            prefix=raw[:12],
            scopes=tuple(wanted),
            key_hash=_hash_key(raw),
            created_at=iso(self.now()),
        )
        self.keys[key.key_hash] = key
        self._audit(None, "api_key.create", "api_key", key.id, {"name": key.name, "scopes": wanted})
        return key, raw

    def authenticate(self, raw: str | None) -> ApiKey | None:
        if not raw:
            return None
        with self.lock:
            key = self.keys.get(_hash_key(raw))
            return key if key is not None and not key.revoked else None

    @_locked
    def list_keys(self) -> Json:
        keys = [k.to_json() for k in self.keys.values() if not k.revoked]
        return {"api_keys": sorted(keys, key=lambda k: k["id"], reverse=True)}

    @_locked
    def revoke_key(self, actor: ApiKey, key_id: str) -> Json:
        for key in self.keys.values():
            if key.id == key_id and not key.revoked:
                key.revoked = True
                self._audit(actor, "api_key.revoke", "api_key", key_id, {"name": key.name})
                return {"status": "revoked"}
        raise ApiError(404, "API key not found")

    # ------------------------------------------------------------------ account, audit, operator

    @_locked
    def get_account(self) -> Json:
        return dict(self.account)

    def _audit(
        self, actor: ApiKey | None, action: str, rtype: str, rid: str, metadata: Json
    ) -> None:
        self.audit.append(
            {
                "id": self._new_id(),
                "action": action,
                "resource_type": rtype,
                "resource_id": rid,
                "actor_key_id": actor.id if actor else None,
                "metadata": metadata,
                "created_at": iso(self.now()),
            }
        )

    @_locked
    def list_audit(self, limit: int, cursor: str | None) -> Json:
        entries, next_cursor = _page(list(reversed(self.audit)), limit, cursor)
        return {"entries": [dict(e) for e in entries], "cursor": next_cursor}

    def _notify_operator(
        self, kind: str, mailbox_id: str, subject: str, body: str, code: str | None = None
    ) -> None:
        message: Json = {
            "id": self._new_id(),
            "kind": kind,
            "to": self.account["oversight_email"],
            "mailbox_id": mailbox_id,
            "subject": subject,
            "body": body,
            "created_at": iso(self.now()),
        }
        if code is not None:
            message["code"] = code
        self.operator.append(message)

    @_locked
    def operator_inbox(self) -> list[Json]:
        return [dict(m) for m in self.operator]

    # ------------------------------------------------------------------ mailboxes

    def _mailbox(self, mailbox_id: str) -> Mailbox:
        mailbox = self.mailboxes.get(mailbox_id)
        if mailbox is None or mailbox.deleted:
            raise ApiError(404, "Mailbox not found")
        return mailbox

    @_locked
    def list_mailboxes(self) -> Json:
        tenant = self.account["id"]
        return {"mailboxes": [m.to_json(tenant) for m in self.mailboxes.values() if not m.deleted]}

    @_locked
    def get_mailbox(self, mailbox_id: str) -> Json:
        return self._mailbox(mailbox_id).to_json(self.account["id"])

    @_locked
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

    @_locked
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

    @_locked
    def delete_mailbox(self, actor: ApiKey, mailbox_id: str) -> Json:
        mailbox = self._mailbox(mailbox_id)
        mailbox.deleted = True
        self._audit(actor, "mailbox.delete", "mailbox", mailbox.id, {"address": mailbox.address})
        return {"status": "deleted"}

    @_locked
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
            code_hash=_hash_key(code), target_mode=target_mode, expires_at=now + UPGRADE_CODE_TTL
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

    @_locked
    def upgrade(self, actor: ApiKey, mailbox_id: str, code: str) -> Json:
        mailbox = self._mailbox(mailbox_id)
        request = mailbox.upgrade_request
        if request is None:
            raise ApiError(404, "No pending upgrade request for this mailbox")
        if request.expires_at <= self.now():
            mailbox.upgrade_request = None
            raise ApiError(403, "Upgrade code expired: request a new one")
        if not secrets.compare_digest(request.code_hash, _hash_key(code.strip())):
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

    # ------------------------------------------------------------------ sending

    @_locked
    def send(
        self,
        actor: ApiKey,
        mailbox_id: str,
        *,
        to: list[str],
        subject: str,
        markdown: str,
        cc: list[str] | None = None,
        bcc: list[str] | None = None,
        attachments: list[NewAttachment] | None = None,
        idempotency_key: str | None = None,
        send_at: str | None = None,
        gate_timing: str | None = None,
    ) -> tuple[int, Json]:
        """Queue an email; returns (HTTP status, body): 202 when created, 200 when idempotent."""
        mailbox = self._mailbox(mailbox_id)
        to = _check_addresses("to", to)
        if not to:
            raise ApiError(400, "to: at least one recipient is required")
        if len(to) > 50:
            raise ApiError(400, "to: at most 50 recipients")
        if not subject:
            raise ApiError(400, "subject: required")
        if len(subject) > 998:
            raise ApiError(400, "subject: at most 998 characters")
        cc_list = _check_addresses("cc", cc or [])
        bcc_list = _check_addresses("bcc", bcc or [])
        when = _parse_send_at(send_at)
        timing = gate_timing or "gate_first"
        if timing not in GATE_TIMINGS:
            raise ApiError(400, f"gate_timing: must be one of {', '.join(GATE_TIMINGS)}")
        fingerprint = ("send", tuple(sorted(a.lower() for a in to)), subject, markdown)
        return self._queue_outbound(
            actor,
            mailbox,
            kind="send",
            to=to,
            cc=cc_list,
            bcc=bcc_list,
            subject=subject,
            markdown=markdown,
            attachments=_decode_attachments(attachments or []),
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
            thread_id=None,
            in_reply_to=None,
            send_at=when,
            gate_timing=timing,
        )

    @_locked
    def reply(
        self,
        actor: ApiKey,
        mailbox_id: str,
        email_id: str,
        *,
        markdown: str,
        cc: list[str] | None = None,
        bcc: list[str] | None = None,
        attachments: list[NewAttachment] | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[int, Json]:
        mailbox = self._mailbox(mailbox_id)
        original = self._email(mailbox, email_id)
        cc_list = _check_addresses("cc", cc or [])
        bcc_list = _check_addresses("bcc", bcc or [])
        to = [original.sender] if original.direction == "inbound" else list(original.to)
        subject = original.subject
        if not subject.lower().startswith("re:"):
            subject = f"Re: {subject}"[:998]
        return self._queue_outbound(
            actor,
            mailbox,
            kind="reply",
            to=to,
            cc=cc_list,
            bcc=bcc_list,
            subject=subject,
            markdown=markdown,
            attachments=_decode_attachments(attachments or []),
            idempotency_key=idempotency_key,
            fingerprint=("reply", original.id, markdown),
            thread_id=original.thread_id,
            in_reply_to=original.id,
            send_at=None,
            gate_timing="gate_first",
        )

    def _queue_outbound(
        self,
        actor: ApiKey,
        mailbox: Mailbox,
        *,
        kind: str,
        to: list[str],
        cc: list[str],
        bcc: list[str],
        subject: str,
        markdown: str,
        attachments: list[Json],
        idempotency_key: str | None,
        fingerprint: tuple[Any, ...],
        thread_id: str | None,
        in_reply_to: str | None,
        send_at: datetime | None,
        gate_timing: str,
    ) -> tuple[int, Json]:
        now = self.now()
        if idempotency_key:
            seen = mailbox.idempotency.get(idempotency_key)
            if seen is not None and now - seen[1] < IDEMPOTENCY_TTL:
                return 200, {"id": seen[0], "status": "already_sent", "idempotent": True}
        if mailbox.oversight_mode == "read_only":
            hint = (
                f"Request an upgrade with POST /v1/mailboxes/{mailbox.id}/request-upgrade "
                "and ask the operator for the code"
            )
            raise ApiError(
                403, f"Mailbox is read_only: sending is not allowed. {hint}", extra={"hint": hint}
            )
        if self.account["sending_disabled"]:
            raise ApiError(403, "Sending is disabled for this account")
        if self.account["emails_sent_this_month"] >= self.account["monthly_email_quota"]:
            first_of_next = (now.replace(day=1) + timedelta(days=32)).replace(
                day=1, hour=0, minute=0, second=0, microsecond=0
            )
            raise ApiError(
                429,
                "Monthly email quota reached",
                headers={"Retry-After": str(math.ceil((first_of_next - now).total_seconds()))},
                extra={"hint": "Upgrade the plan or wait for the next month"},
            )
        if not idempotency_key:
            seen = mailbox.recent.get(fingerprint)
            if seen is not None and now - seen[1] < DEDUP_WINDOW:
                raise ApiError(
                    409,
                    f"Duplicate {kind}: an identical message ({seen[0]}) was accepted less than "
                    "60 seconds ago; use idempotency_key to retry safely",
                )
        if mailbox.auto_cc and mailbox.auto_cc not in cc:
            cc = [*cc, mailbox.auto_cc]
        if mailbox.auto_bcc and mailbox.auto_bcc not in bcc:
            bcc = [*bcc, mailbox.auto_bcc]
        email = Email(
            id=self._new_id(),
            mailbox_id=mailbox.id,
            direction="outbound",
            status="pending_scan",
            sender=mailbox.address,
            to=to,
            cc=cc,
            bcc=bcc,
            subject=subject,
            markdown=markdown,
            attachments=attachments,
            thread_id=thread_id or self._new_id(),
            created_at=now,
            send_at=send_at,
            gate_timing=gate_timing,
            scan_due=now + timedelta(seconds=self.scan_delay),
            in_reply_to=in_reply_to,
        )
        self.emails[email.id] = email
        self._timed.add(email.id)
        if idempotency_key:
            mailbox.idempotency[idempotency_key] = (email.id, now)
        mailbox.recent = {
            fp: seen for fp, seen in mailbox.recent.items() if now - seen[1] < DEDUP_WINDOW
        }
        mailbox.recent[fingerprint] = (email.id, now)
        metadata: Json = {
            "from": email.sender,
            "to": list(to),
            "subject": subject,
            "oversight_mode": mailbox.oversight_mode,
            "status": email.status,
        }
        if in_reply_to:
            metadata["in_reply_to"] = in_reply_to
        if idempotency_key:
            metadata["idempotency_key"] = idempotency_key
        self._audit(actor, f"email.{kind}", "email", email.id, metadata)
        body: Json = {"id": email.id, "status": email.status, "thread_id": email.thread_id}
        if kind == "send":
            body["message"] = "Email accepted; it is scanned before it moves on"
        return 202, body

    def _finish_scan(self, email: Email) -> None:
        mailbox = self.mailboxes[email.mailbox_id]
        later = email.send_at is not None and email.send_at > self.now()
        gated = mailbox.oversight_mode in GATED_MODES
        if gated and not (later and email.gate_timing == "schedule_first"):
            self._hold(email)
        elif later:
            email.status = "scheduled"
        else:
            self._deliver(email)

    def _hold(self, email: Email) -> None:
        """Put an email into the approval queue and tell the operator."""
        mailbox = self.mailboxes[email.mailbox_id]
        inbound = email.direction == "inbound"
        email.status = "pending_inbound_approval" if inbound else "pending_send_approval"
        what = "Inbound email" if inbound else "Outbound email"
        self._notify_operator(
            "approval_notice",
            mailbox.id,
            f"Approval needed: {email.subject}",
            f"{what} {email.id} in {mailbox.address} ({mailbox.oversight_mode}) waits for your "
            f"decision.\nFrom: {email.sender}\nTo: {', '.join(email.to)}\n"
            f"Subject: {email.subject}\n\n{email.markdown}\n\n"
            "Decide on the approval page: /_fake/approvals",
        )
        self._emit("oversight.pending", email)

    def _deliver(self, email: Email) -> None:
        mailbox = self.mailboxes[email.mailbox_id]
        now = self.now()
        recipients = [*email.to, *email.cc, *email.bcc]
        bounced = [r for r in recipients if r.lower().endswith("@" + BOUNCE_DOMAIN)]
        self.account["emails_sent_this_month"] += 1
        if len(bounced) == len(recipients):
            email.status = "send_failed"
        else:
            email.status = "sent"
            email.delivered_at = now
        self._emit("message.sent", email)
        if email.delivered_at is not None:
            self._emit("message.delivered", email)
        if bounced:
            self._emit("message.bounced", email, {"bounced_recipients": bounced})
        if mailbox.oversight_mode == "monitored":
            self._notify_operator(
                "monitored_copy",
                mailbox.id,
                f"[monitored] {email.subject}",
                f"{mailbox.address} sent email {email.id}.\nTo: {', '.join(email.to)}\n"
                f"Subject: {email.subject}\n\n{email.markdown}",
            )

    # ------------------------------------------------------------------ reading

    def _email(self, mailbox: Mailbox, email_id: str) -> Email:
        email = self.emails.get(email_id)
        if email is None or email.mailbox_id != mailbox.id:
            raise ApiError(404, "Email not found")
        return email

    @_locked
    def list_emails(
        self,
        mailbox_id: str,
        *,
        status: str | None = None,
        direction: str | None = None,
        since_id: str | None = None,
        sender: str | None = None,
        subject_contains: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> Json:
        mailbox = self._mailbox(mailbox_id)
        found = [
            e
            for e in self.emails.values()
            if e.mailbox_id == mailbox.id
            and (status is None or e.status == status)
            and (direction is None or e.direction == direction)
            and (since_id is None or e.id > since_id)
            and (sender is None or sender.lower() in e.sender.lower())
            and (subject_contains is None or subject_contains.lower() in e.subject.lower())
        ]
        found.sort(key=lambda e: e.id, reverse=True)
        page, next_cursor = _page([e.summary() for e in found], limit, cursor)
        return {"emails": page, "cursor": next_cursor}

    @_locked
    def read_email(self, mailbox_id: str, email_id: str) -> Json:
        email = self._email(self._mailbox(mailbox_id), email_id)
        if email.status == "unread":
            email.status = "read"
        return email.full()

    @_locked
    def thread(self, mailbox_id: str, thread_id: str) -> Json:
        mailbox = self._mailbox(mailbox_id)
        emails = sorted(
            (
                e
                for e in self.emails.values()
                if e.mailbox_id == mailbox.id and e.thread_id == thread_id
            ),
            key=lambda e: e.id,
        )
        if not emails:
            raise ApiError(404, "Thread not found")
        participants: dict[str, None] = {}
        for email in emails:
            for address in (email.sender, *email.to, *email.cc):
                participants.setdefault(address, None)
        last_in = max((e.id for e in emails if e.direction == "inbound"), default="")
        answered = [
            e.id
            for e in emails
            if e.direction == "outbound"
            and e.status not in ("cancelled", "rejected", "send_failed")
        ]
        return {
            "thread_id": thread_id,
            "message_count": len(emails),
            "participants": list(participants),
            "last_activity": iso(emails[-1].created_at),
            "has_unanswered_inbound": bool(last_in) and max(answered, default="") < last_in,
            "emails": [e.summary() for e in emails],
        }

    # ------------------------------------------------------------------ cancel and tags

    @_locked
    def cancel(self, actor: ApiKey, mailbox_id: str, email_id: str) -> Json:
        email = self._email(self._mailbox(mailbox_id), email_id)
        if email.status == "cancelled":
            return {"id": email.id, "status": "cancelled"}
        cancellable = email.direction == "outbound" and email.approved_at is None
        if not cancellable or email.status not in (
            "pending_scan",
            "pending_send_approval",
            "scheduled",
        ):
            raise ApiError(409, f"Email cannot be cancelled (status: {email.status})")
        previous = email.status
        email.status = "cancelled"
        self._audit(
            actor,
            "email.cancel",
            "email",
            email.id,
            {"previous_status": previous, "status": "cancelled"},
        )
        return {"id": email.id, "status": "cancelled"}

    @_locked
    def get_tags(self, mailbox_id: str, email_id: str) -> Json:
        return {"tags": dict(self._email(self._mailbox(mailbox_id), email_id).tags)}

    @_locked
    def set_tags(self, actor: ApiKey, mailbox_id: str, email_id: str, tags: dict[str, str]) -> Json:
        email = self._email(self._mailbox(mailbox_id), email_id)
        if len({**email.tags, **tags}) > 50:
            raise ApiError(400, "tags: at most 50 tags per email")
        email.tags.update(tags)
        self._audit(actor, "email.tag", "email", email.id, {"op": "set", "tags": dict(tags)})
        return {"tags": dict(email.tags)}

    @_locked
    def delete_tag(self, actor: ApiKey, mailbox_id: str, email_id: str, key: str) -> Json:
        email = self._email(self._mailbox(mailbox_id), email_id)
        if key not in email.tags:
            raise ApiError(404, "Tag not found")
        del email.tags[key]
        self._audit(actor, "email.tag", "email", email.id, {"op": "delete", "key": key})
        return {"deleted": True}

    # ------------------------------------------------------------------ inbound

    @_locked
    def deliver_inbound(
        self, *, to: str, sender: str, subject: str, markdown: str, in_reply_to: str | None = None
    ) -> Json:
        """Deliver an email from the outside world; `to` is a mailbox address or id."""
        target = to.strip().lower()
        mailbox = next(
            (
                m
                for m in self.mailboxes.values()
                if not m.deleted and (m.id == to.strip() or m.address == target)
            ),
            None,
        )
        if mailbox is None:
            raise ApiError(404, f"to: no mailbox {to!r}")
        if not is_email(sender):
            raise ApiError(400, "from: not a valid email address")
        if len(subject) > 998:
            raise ApiError(400, "subject: at most 998 characters")
        thread_id = None
        if in_reply_to:
            original = self.emails.get(in_reply_to)
            if original is None or original.mailbox_id != mailbox.id:
                raise ApiError(404, "in_reply_to: no such email in this mailbox")
            thread_id = original.thread_id
        email = Email(
            id=self._new_id(),
            mailbox_id=mailbox.id,
            direction="inbound",
            status="unread",
            sender=sender,
            to=[mailbox.address],
            subject=subject,
            markdown=markdown,
            thread_id=thread_id or self._new_id(),
            created_at=self.now(),
            in_reply_to=in_reply_to,
        )
        self.emails[email.id] = email
        if mailbox.oversight_mode == "gated_all":
            self._hold(email)
        else:
            self._emit("message.received", email)
        return {"email_id": email.id, "thread_id": email.thread_id, "status": email.status}

    # ------------------------------------------------------------------ oversight

    @_locked
    def pending(self) -> Json:
        items = [
            e.pending_item()
            for e in sorted(self.emails.values(), key=lambda e: e.id, reverse=True)
            if e.status in PENDING_STATUSES and not self.mailboxes[e.mailbox_id].deleted
        ]
        return {"emails": items, "pending": items}

    @_locked
    def pending_emails(self) -> list[tuple[Json, Json]]:
        """Pending emails with their mailboxes, oldest first (for the approval page)."""
        tenant = self.account["id"]
        return [
            (e.full(), self.mailboxes[e.mailbox_id].to_json(tenant))
            for e in sorted(self.emails.values(), key=lambda e: e.id)
            if e.status in PENDING_STATUSES and not self.mailboxes[e.mailbox_id].deleted
        ]

    @_locked
    def decide(
        self,
        actor: ApiKey | None,
        email_id: str,
        action: str,
        reason: str | None = None,
        approver: str | None = None,
    ) -> Json:
        """Approve or reject a pending email (API with `actor`, or the approval page)."""
        email = self.emails.get(email_id)
        if email is None or self.mailboxes[email.mailbox_id].deleted:
            raise ApiError(404, "Email not found")
        if email.status not in PENDING_STATUSES:
            raise ApiError(409, f"Email is not pending approval (status: {email.status})")
        if action not in ("approve", "reject"):
            raise ApiError(400, "action: must be 'approve' or 'reject'")
        now = self.now()
        if action == "reject":
            email.status = "rejected"
            result = "rejected"
            self._emit("oversight.rejected", email, {"reason": reason})
        else:
            email.approved_at = now
            email.approved_by = approver or (actor.id if actor else "operator")
            self._emit("oversight.approved", email, {"reason": reason})
            if email.direction == "inbound":
                email.status = "unread"
                result = "approved"
                self._emit("message.received", email)
            elif email.send_at is not None and email.send_at > now:
                email.status = "scheduled"
                self._timed.add(email.id)
                result = "approved"
            else:
                self._deliver(email)
                result = "approved_and_sent"
        self._audit(
            actor,
            "oversight.decide",
            "email",
            email.id,
            {
                "action": action,
                "reason": reason,
                "approval_status": result,
                "status": email.status,
                "approved_by": email.approved_by,
            },
        )
        return {"status": result}

    # ------------------------------------------------------------------ webhooks

    @_locked
    def create_webhook(
        self, actor: ApiKey, url: str, events: list[str], mailbox_id: str | None
    ) -> Json:
        _check_webhook_url(url)
        if not events:
            raise ApiError(400, "events: at least one event is required")
        for index, event in enumerate(events):
            if event not in EVENTS and event not in EVENT_ALIASES:
                raise ApiError(400, f"events[{index}]: unknown event {event!r}")
        if mailbox_id is not None:
            self._mailbox(mailbox_id)
        subscription = Subscription(
            id=self._new_id(),
            url=url,
            events=list(dict.fromkeys(events)),
            mailbox_id=mailbox_id,
            created_at=iso(self.now()),
            signing_secret="whsec_" + secrets.token_hex(24),
        )
        self.subscriptions[subscription.id] = subscription
        self._audit(
            actor,
            "webhook.create",
            "webhook",
            subscription.id,
            {"url": url, "events": subscription.events, "mailbox_id": mailbox_id},
        )
        return subscription.to_json(with_secret=True)

    @_locked
    def list_webhooks(self) -> Json:
        subs = [s.to_json(with_secret=False) for s in self.subscriptions.values()]
        return {"subscriptions": subs, "webhooks": subs}

    @_locked
    def get_webhook(self, webhook_id: str) -> Json:
        subscription = self.subscriptions.get(webhook_id)
        if subscription is None:
            raise ApiError(404, "Webhook not found")
        return subscription.to_json(with_secret=True)

    @_locked
    def delete_webhook(self, actor: ApiKey, webhook_id: str) -> Json:
        subscription = self.subscriptions.pop(webhook_id, None)
        if subscription is None:
            raise ApiError(404, "Webhook not found")
        self._audit(actor, "webhook.delete", "webhook", webhook_id, {"url": subscription.url})
        return {"status": "deleted"}

    @_locked
    def list_deliveries(self, limit: int, cursor: str | None) -> Json:
        rows = [d.to_json() for d in reversed(self.deliveries)]
        page, next_cursor = _page(rows, limit, cursor)
        return {"deliveries": page, "cursor": next_cursor}

    def _emit(self, event: str, email: Email, extra: Json | None = None) -> None:
        for subscription in self.subscriptions.values():
            if not subscription.wants(event, email.mailbox_id):
                continue
            delivery_id = self._new_id()
            timestamp = iso(self.now())
            payload = {
                "event": event,
                "id": delivery_id,
                "timestamp": timestamp,
                "data": {
                    "email_id": email.id,
                    "mailbox_id": email.mailbox_id,
                    "thread_id": email.thread_id,
                    "from": email.sender,
                    "to": list(email.to),
                    "subject": email.subject,
                    "direction": email.direction,
                    "status": email.status,
                    "has_attachments": bool(email.attachments),
                    "tags": dict(email.tags),
                    "markdown": email.markdown,
                    **(extra or {}),
                },
            }
            delivery = Delivery(
                id=delivery_id,
                event_type=event,
                url=subscription.url,
                subscription_id=subscription.id,
                body=json.dumps(payload, separators=(",", ":")).encode(),
                secret=subscription.signing_secret,
                created_at=timestamp,
            )
            self.deliveries.append(delivery)
            self.dispatcher.submit(delivery)

    # ------------------------------------------------------------------ faults

    @_locked
    def add_fault(self, settings: Json) -> Json:
        """Add a fault rule; `settings` are `FaultRule` fields other than `id`."""
        if settings.get("status") is not None and settings.get("drop_response"):
            raise ApiError(400, "status and drop_response cannot be combined")
        effects = (settings.get("status"), settings.get("drop_response"), settings.get("latency"))
        if not any(effects):
            raise ApiError(400, "a fault needs a status, drop_response or latency")
        rule = FaultRule(id=self._new_id(), **settings)
        self.faults.append(rule)
        return rule.to_json()

    @_locked
    def list_faults(self) -> Json:
        return {"faults": [rule.to_json() for rule in self.faults]}

    @_locked
    def clear_faults(self) -> None:
        self.faults.clear()

    def pick_fault(self, method: str, path: str) -> FaultRule | None:
        """The first matching rule that fires for this request, if any."""
        with self.lock:
            for rule in self.faults:
                if rule.matches(method, path) and rule.fire():
                    return rule
            return None


def _parse_send_at(value: str | None) -> datetime | None:
    if value is None:
        return None
    if not value.endswith("Z"):
        raise ApiError(400, "send_at: must be an ISO 8601 UTC time ending in 'Z'")
    try:
        moment = datetime.fromisoformat(value[:-1] + "+00:00")
    except ValueError:
        raise ApiError(400, "send_at: not a valid ISO 8601 time") from None
    return moment.astimezone(UTC)


def _decode_attachments(attachments: list[NewAttachment]) -> list[Json]:
    decoded = []
    for index, attachment in enumerate(attachments):
        try:
            raw = base64.b64decode(attachment.content_base64, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, f"attachments[{index}].content_base64: not valid base64") from None
        decoded.append(
            {"name": attachment.name, "size": len(raw), "content_type": attachment.content_type}
        )
    return decoded


def _check_webhook_url(url: str) -> None:
    """https anywhere; plain http only to the local machine (a fake-only allowance)."""
    lowered = url.lower()
    if lowered.startswith("https://") and len(url) > len("https://"):
        return
    for local in ("http://127.0.0.1", "http://localhost"):
        if lowered.startswith(local) and lowered[len(local) : len(local) + 1] in ("", ":", "/"):
            return
    raise ApiError(400, "url: must be https (http is allowed only for 127.0.0.1 and localhost)")
