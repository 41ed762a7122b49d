"""Emails and threads: send, reply, inbound mail, the lifecycle of an email, reading and tags.

An outbound email starts in `pending_scan`; when the scan finishes (`scan_delay` seconds on the
fake clock) it is held for approval in a gated mailbox, scheduled, or sent. Idempotency keys and
the 60-second duplicate check live on the mailbox record.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .base import ApiError, Json, is_email, iso, locked, page
from .keys import ApiKey
from .mailboxes import GATED_MODES, Mailbox
from .webhooks import Webhooks

PENDING_STATUSES = frozenset({"pending_send_approval", "pending_inbound_approval"})
GATE_TIMINGS = ("gate_first", "schedule_first")
#: Recipients in this domain bounce, so that `message.bounced` can be exercised.
BOUNCE_DOMAIN = "bounce.example"
IDEMPOTENCY_TTL = timedelta(hours=24)
DEDUP_WINDOW = timedelta(seconds=60)


@dataclass(frozen=True)
class NewAttachment:
    name: str
    content_base64: str
    content_type: str


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

    def event_data(self) -> Json:
        """The `data` of a webhook event about this email."""
        return {
            "email_id": self.id,
            "mailbox_id": self.mailbox_id,
            "thread_id": self.thread_id,
            "from": self.sender,
            "to": list(self.to),
            "subject": self.subject,
            "direction": self.direction,
            "status": self.status,
            "has_attachments": bool(self.attachments),
            "tags": dict(self.tags),
            "markdown": self.markdown,
        }


class Emails(Webhooks):
    """Emails of every mailbox, with the transitions the clock drives."""

    scan_delay: float

    def _clear(self) -> None:
        super()._clear()
        self.emails: dict[str, Email] = {}
        #: emails whose status the clock may change (pending_scan, scheduled)
        self._timed: set[str] = set()

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

    def _emit_email(self, event: str, email: Email, extra: Json | None = None) -> None:
        self._emit(event, email.mailbox_id, {**email.event_data(), **(extra or {})})

    # ------------------------------------------------------------------ sending

    @locked
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

    @locked
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
        _forget_expired(mailbox.recent, now)
        mailbox.recent.pop(fingerprint, None)  # re-added last: the dict stays in time order
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
        self._emit_email("oversight.pending", email)

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
        self._emit_email("message.sent", email)
        if email.delivered_at is not None:
            self._emit_email("message.delivered", email)
        if bounced:
            self._emit_email("message.bounced", email, {"bounced_recipients": bounced})
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

    @locked
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
        shown, next_cursor = page([e.summary() for e in found], limit, cursor)
        return {"emails": shown, "cursor": next_cursor}

    @locked
    def read_email(self, mailbox_id: str, email_id: str) -> Json:
        email = self._email(self._mailbox(mailbox_id), email_id)
        if email.status == "unread":
            email.status = "read"
        return email.full()

    @locked
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

    @locked
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

    @locked
    def get_tags(self, mailbox_id: str, email_id: str) -> Json:
        return {"tags": dict(self._email(self._mailbox(mailbox_id), email_id).tags)}

    @locked
    def set_tags(self, actor: ApiKey, mailbox_id: str, email_id: str, tags: dict[str, str]) -> Json:
        email = self._email(self._mailbox(mailbox_id), email_id)
        if len({**email.tags, **tags}) > 50:
            raise ApiError(400, "tags: at most 50 tags per email")
        email.tags.update(tags)
        self._audit(actor, "email.tag", "email", email.id, {"op": "set", "tags": dict(tags)})
        return {"tags": dict(email.tags)}

    @locked
    def delete_tag(self, actor: ApiKey, mailbox_id: str, email_id: str, key: str) -> Json:
        email = self._email(self._mailbox(mailbox_id), email_id)
        if key not in email.tags:
            raise ApiError(404, "Tag not found")
        del email.tags[key]
        self._audit(actor, "email.tag", "email", email.id, {"op": "delete", "key": key})
        return {"deleted": True}

    # ------------------------------------------------------------------ inbound

    @locked
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
            self._emit_email("message.received", email)
        return {"email_id": email.id, "thread_id": email.thread_id, "status": email.status}


def _forget_expired(recent: dict[tuple[Any, ...], tuple[str, datetime]], now: datetime) -> None:
    """Drop the fingerprints older than the dedup window, oldest first, stopping at the first
    one still inside it: `recent` is in the order sends were accepted, so a send costs the same
    however many others the window holds (rebuilding it made each send slower than the last)."""
    while recent:
        oldest = next(iter(recent))
        if now - recent[oldest][1] < DEDUP_WINDOW:
            return
        del recent[oldest]


def _check_addresses(field_name: str, values: Iterable[str]) -> list[str]:
    checked = []
    for index, value in enumerate(values):
        if not is_email(value):
            raise ApiError(400, f"{field_name}[{index}]: not a valid email address")
        checked.append(value)
    return checked


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
