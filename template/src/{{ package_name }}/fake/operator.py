"""The human in the loop, for tests and the demo: an operator who decides held mail on the fake,
and provisioning that applies the upgrade codes the fake mails that operator."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Literal

from ..multimail.client import MultiMailClient
from ..multimail.models import PendingItem
from ..multimail.provision import MailboxState, provision
from ..settings import Settings
from .server import FakeMultiMail

#: Replies whose subject contains this are rejected by `demo_policy`.
REJECT_MARKER = "close my account"

Decision = tuple[Literal["approve", "reject"], str | None]


def demo_policy(item: PendingItem) -> Decision:
    """The demo operator approves everything but replies about closing an account."""
    if item.direction == "outbound" and REJECT_MARKER in item.subject.lower():
        return "reject", "We do not close accounts by email; a colleague will call."
    return "approve", None


class Operator(threading.Thread):
    """The human in the loop, as a thread: decides each pending email with `policy`."""

    def __init__(
        self,
        client: MultiMailClient,
        policy: Callable[[PendingItem], Decision] = demo_policy,
        echo: Callable[[str], None] = print,
    ) -> None:
        super().__init__(name="operator", daemon=True)
        self._client = client
        self._policy = policy
        self._echo = echo
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(0.1):
            for item in self._client.list_pending():
                action, reason = self._policy(item)
                self._client.decide(item.id, action, reason)
                self._echo(
                    f"  held for approval ({item.status}): {item.direction} {item.subject!r}; "
                    f"the operator {action}s it" + (f": {reason}" if reason else "")
                )

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=5)


def provision_on_fake(
    fake: FakeMultiMail, client: MultiMailClient, settings: Settings
) -> list[MailboxState]:
    """Provision, then apply the upgrade codes the fake mailed its operator (a human's job)."""
    states = provision(client, settings, request_upgrades=True)
    requested = {s.mailbox_id: s.audience for s in states if "upgrade_requested" in s.actions}
    if not requested:
        return states
    codes = {
        requested[message["mailbox_id"]]: str(message["code"])
        for message in fake.operator_inbox()
        if message.get("kind") == "upgrade_code" and message.get("mailbox_id") in requested
    }
    return provision(client, settings, upgrade_codes=codes)
