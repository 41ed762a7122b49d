"""Make the MultiMail account match settings.toml: one mailbox per audience, in its mode.

MultiMail lets a key *tighten* a mailbox's oversight mode at once but not loosen it: loosening
takes a one-time code that MultiMail mails to the account's operator. So provisioning is two
runs when an audience is less restrictive than `gated_send` (the mode new mailboxes start in):
one with `request_upgrades` asks MultiMail to mail the operator a code, the next applies it.
Requests are never made unasked: each one mails the operator, and MultiMail allows three an
hour per mailbox.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from ..settings import OversightMode, Settings
from .client import MultiMailClient
from .models import WebhookSubscription

#: What the receiver acts on: the decisions that resume a suspended flow run, and inbound mail
#: (one answer-inbound run per message, `inbound/starter.py`).
RECEIVER_EVENTS = ["oversight.approved", "oversight.rejected", "message.received"]

Action = Literal[
    "unchanged", "created", "tightened", "upgrade_needed", "upgrade_requested", "upgraded"
]


@dataclass(frozen=True)
class MailboxState:
    audience: str
    address: str
    mailbox_id: str
    mode: OversightMode
    target: OversightMode
    actions: tuple[Action, ...]

    @property
    def ready(self) -> bool:
        return self.mode == self.target


def provision(
    client: MultiMailClient,
    settings: Settings,
    upgrade_codes: Mapping[str, str] | None = None,
    *,
    request_upgrades: bool = False,
) -> list[MailboxState]:
    """Create missing mailboxes and move each to its audience's mode, as far as allowed.

    `upgrade_codes` maps an audience name to the operator's code for a pending upgrade;
    `request_upgrades` asks for codes where a mode must be loosened and no code is given.
    """
    codes = upgrade_codes or {}
    existing = {m.local_part: m for m in client.list_mailboxes()}
    states = []
    for name, audience in settings.audiences.items():
        actions: list[Action] = []
        mailbox = existing.get(audience.mailbox)
        if mailbox is None:
            mailbox = client.create_mailbox(audience.mailbox, display_name=name)
            actions.append("created")
        mode = OversightMode(mailbox.oversight_mode)
        target = audience.oversight_mode
        if target.rank < mode.rank:
            client.update_mailbox(mailbox.id, oversight_mode=target.value)
            mode = target
            actions.append("tightened")
        elif target.rank > mode.rank:
            if name in codes:
                mode = OversightMode(client.upgrade(mailbox.id, codes[name]) or target.value)
                actions.append("upgraded")
            elif request_upgrades:
                client.request_upgrade(mailbox.id, target.value)
                actions.append("upgrade_requested")
            else:
                actions.append("upgrade_needed")
        states.append(
            MailboxState(
                audience=name,
                address=mailbox.address,
                mailbox_id=mailbox.id,
                mode=mode,
                target=target,
                actions=tuple(actions) or ("unchanged",),
            )
        )
    return states


def subscribe_receiver(client: MultiMailClient, url: str) -> WebhookSubscription:
    """Subscribe the webhook receiver at `url` to the events it acts on (once per URL)."""
    for subscription in client.list_webhooks():
        if subscription.url == url and set(RECEIVER_EVENTS) <= set(subscription.events):
            return subscription
    return client.create_webhook(url, RECEIVER_EVENTS)
