"""Oversight: the approval queue across all mailboxes and the decisions on it.

Emails enter the queue in the emails section (`_hold`); here they are listed and decided, by an
API key with the `oversight` scope or by the operator on the approval page.
"""

from __future__ import annotations

from typing import NamedTuple

from .base import ApiError, Json, locked
from .emails import PENDING_STATUSES, Emails
from .keys import ApiKey


class PendingView(NamedTuple):
    """What the approval page shows for one pending email."""

    email: Json
    mailbox: Json
    in_reply_to: Json | None
    #: not part of the email as the API shows it, but a reviewer must see every recipient
    bcc: list[str]


class Oversight(Emails):
    """The approval queue."""

    @locked
    def pending(self) -> Json:
        items = [
            e.pending_item()
            for e in sorted(self.emails.values(), key=lambda e: e.id, reverse=True)
            if e.status in PENDING_STATUSES and not self.mailboxes[e.mailbox_id].deleted
        ]
        return {"emails": items, "pending": items}

    @locked
    def pending_emails(self) -> list[PendingView]:
        """Pending emails oldest first, each with its mailbox and the email it answers."""
        tenant = self.account["id"]
        views = []
        for email in sorted(self.emails.values(), key=lambda e: e.id):
            mailbox = self.mailboxes[email.mailbox_id]
            if email.status not in PENDING_STATUSES or mailbox.deleted:
                continue
            answered = self.emails.get(email.in_reply_to) if email.in_reply_to else None
            views.append(
                PendingView(
                    email=email.full(),
                    mailbox=mailbox.to_json(tenant),
                    in_reply_to=answered.full() if answered else None,
                    bcc=list(email.bcc),
                )
            )
        return views

    @locked
    def find_email(self, email_id: str) -> Json | None:
        """The email with this id in any mailbox (for the approval page's notices)."""
        email = self.emails.get(email_id)
        return email.full() if email else None

    @locked
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
            self._emit_email("oversight.rejected", email, {"reason": reason})
        else:
            email.approved_at = now
            email.approved_by = approver or (actor.id if actor else "operator")
            self._emit_email("oversight.approved", email, {"reason": reason})
            if email.direction == "inbound":
                email.status = "unread"
                result = "approved"
                self._emit_email("message.received", email)
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
