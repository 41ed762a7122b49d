"""In-memory state and business rules of the fake MultiMail service.

Everything the HTTP layer, the approval page and the Python control API do goes through
`FakeState`, under one re-entrant lock (the server runs in another thread than the tests).
`FakeState` is built from one class per section of the contract, each in its own module and
each building on the ones before it:

- `base`: the lock, the fake clock, ids, `ApiError`;
- `keys`: the account, API keys, the audit log and the operator's inbox;
- `mailboxes`: mailboxes and oversight modes, upgrade requests;
- `webhooks`: subscriptions, events and deliveries;
- `emails`: send, reply, inbound mail, the lifecycle of an email, threads and tags;
- `oversight`: the approval queue and decisions.

This module adds what belongs to the fake alone: timing settings and injected faults.
"""

from __future__ import annotations

from ..faults import FaultRule
from .base import ApiError, Json, locked
from .emails import Email, NewAttachment
from .keys import ApiKey
from .mailboxes import Mailbox
from .oversight import Oversight

__all__ = ["ApiError", "ApiKey", "Email", "FakeState", "Json", "Mailbox", "NewAttachment"]


class FakeState(Oversight):
    """The account, its keys, mailboxes, emails and everything around them."""

    def __init__(
        self,
        *,
        scan_delay: float = 0.0,
        webhook_backoff: float = 1.0,
        webhook_timeout: float = 5.0,
    ) -> None:
        super().__init__()
        self._defaults = (scan_delay, webhook_backoff, webhook_timeout)
        self._clear()

    def _clear(self) -> None:
        super()._clear()
        self.scan_delay, self.dispatcher.backoff, self.dispatcher.timeout = self._defaults
        self.faults: list[FaultRule] = []

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

    # ------------------------------------------------------------------ faults

    @locked
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

    @locked
    def list_faults(self) -> Json:
        return {"faults": [rule.to_json() for rule in self.faults]}

    @locked
    def clear_faults(self) -> None:
        self.faults.clear()

    def pick_fault(self, method: str, path: str) -> FaultRule | None:
        """The first matching rule that fires for this request, if any."""
        with self.lock:
            for rule in self.faults:
                if rule.matches(method, path) and rule.fire():
                    return rule
            return None
