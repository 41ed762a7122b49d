"""Keys and audit: the account, its API keys and scopes, the audit log and the operator's inbox.

The operator's inbox stands in for the mail the real service sends to the account's oversight
address (upgrade codes, approval notices, monitored copies).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

from .base import ApiError, Json, StateBase, hash_secret, iso, locked, page

SCOPES = frozenset({"read", "send", "admin", "oversight", "oversight_read"})
TENANT_SLUG = "demo"
OVERSIGHT_EMAIL = "operator@demo.example"


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


class KeysAndAudit(StateBase):
    """The account, API keys, the audit log and the operator's inbox."""

    def _clear(self) -> None:
        super()._clear()
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
        self.audit: list[Json] = []
        self.operator: list[Json] = []

    # ------------------------------------------------------------------ keys and auth

    @locked
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
            key_hash=hash_secret(raw),
            created_at=iso(self.now()),
        )
        self.keys[key.key_hash] = key
        self._audit(None, "api_key.create", "api_key", key.id, {"name": key.name, "scopes": wanted})
        return key, raw

    def authenticate(self, raw: str | None) -> ApiKey | None:
        if not raw:
            return None
        with self.lock:
            key = self.keys.get(hash_secret(raw))
            return key if key is not None and not key.revoked else None

    @locked
    def list_keys(self) -> Json:
        keys = [k.to_json() for k in self.keys.values() if not k.revoked]
        return {"api_keys": sorted(keys, key=lambda k: k["id"], reverse=True)}

    @locked
    def revoke_key(self, actor: ApiKey, key_id: str) -> Json:
        for key in self.keys.values():
            if key.id == key_id and not key.revoked:
                key.revoked = True
                self._audit(actor, "api_key.revoke", "api_key", key_id, {"name": key.name})
                return {"status": "revoked"}
        raise ApiError(404, "API key not found")

    # ------------------------------------------------------------------ account, audit, operator

    @locked
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

    @locked
    def list_audit(self, limit: int, cursor: str | None) -> Json:
        entries, next_cursor = page(list(reversed(self.audit)), limit, cursor)
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

    @locked
    def operator_inbox(self) -> list[Json]:
        return [dict(m) for m in self.operator]
