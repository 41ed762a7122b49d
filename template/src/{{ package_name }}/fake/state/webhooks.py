"""Webhooks: subscriptions, the events they receive and the record of every delivery.

Sections that change an email call `_emit` with the event's data; the `WebhookDispatcher` posts
the signed deliveries from its own thread, so an API call never waits for a receiver.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field

from ..webhook_delivery import Delivery, WebhookDispatcher
from .base import ApiError, Json, iso, locked, page
from .keys import ApiKey
from .mailboxes import Mailboxes

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


def _check_webhook_url(url: str) -> None:
    """https anywhere; plain http only to the local machine (a fake-only allowance)."""
    lowered = url.lower()
    if lowered.startswith("https://") and len(url) > len("https://"):
        return
    for local in ("http://127.0.0.1", "http://localhost"):
        if lowered.startswith(local) and lowered[len(local) : len(local) + 1] in ("", ":", "/"):
            return
    raise ApiError(400, "url: must be https (http is allowed only for 127.0.0.1 and localhost)")


class Webhooks(Mailboxes):
    """Webhook subscriptions and deliveries."""

    def __init__(self) -> None:
        super().__init__()
        self.dispatcher = WebhookDispatcher(self.lock, lambda: iso(self.now()))

    def _clear(self) -> None:
        super()._clear()
        self.subscriptions: dict[str, Subscription] = {}
        self.deliveries: list[Delivery] = []

    @locked
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

    @locked
    def list_webhooks(self) -> Json:
        subs = [s.to_json(with_secret=False) for s in self.subscriptions.values()]
        return {"subscriptions": subs, "webhooks": subs}

    @locked
    def get_webhook(self, webhook_id: str) -> Json:
        subscription = self.subscriptions.get(webhook_id)
        if subscription is None:
            raise ApiError(404, "Webhook not found")
        return subscription.to_json(with_secret=True)

    @locked
    def delete_webhook(self, actor: ApiKey, webhook_id: str) -> Json:
        subscription = self.subscriptions.pop(webhook_id, None)
        if subscription is None:
            raise ApiError(404, "Webhook not found")
        self._audit(actor, "webhook.delete", "webhook", webhook_id, {"url": subscription.url})
        return {"status": "deleted"}

    @locked
    def list_deliveries(self, limit: int, cursor: str | None) -> Json:
        rows = [d.to_json() for d in reversed(self.deliveries)]
        shown, next_cursor = page(rows, limit, cursor)
        return {"deliveries": shown, "cursor": next_cursor}

    def _emit(self, event: str, mailbox_id: str, data: Json) -> None:
        """Queue a delivery of `event` with `data` for every subscription that wants it."""
        for subscription in self.subscriptions.values():
            if not subscription.wants(event, mailbox_id):
                continue
            delivery_id = self._new_id()
            timestamp = iso(self.now())
            payload = {"event": event, "id": delivery_id, "timestamp": timestamp, "data": data}
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
