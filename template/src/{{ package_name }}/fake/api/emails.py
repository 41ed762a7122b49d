"""`/v1/mailboxes/{id}/emails`, `send`, `reply`, tags and threads (`state/emails.py`)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from .. import models
from ..deps import StateDep
from ..state import Json, NewAttachment
from .errors import ERROR_RESPONSES
from .scopes import Cursor, Reader, Sender, limit

router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)


def _attachments(items: list[models.AttachmentBody]) -> list[NewAttachment]:
    return [NewAttachment(a.name, a.content_base64, a.content_type) for a in items]


@router.get("/mailboxes/{mailbox_id}/emails", tags=["emails"])
def list_emails(
    state: StateDep,
    _key: Reader,
    mailbox_id: str,
    status: models.EmailStatus | None = None,
    direction: Literal["inbound", "outbound"] | None = None,
    since_id: Annotated[str | None, Query(max_length=64)] = None,
    sender: Annotated[str | None, Query(max_length=254)] = None,
    subject_contains: Annotated[str | None, Query(max_length=998)] = None,
    limit: int = limit(20),
    cursor: Cursor = None,
) -> Json:
    return state.list_emails(
        mailbox_id,
        status=status,
        direction=direction,
        since_id=since_id,
        sender=sender,
        subject_contains=subject_contains,
        limit=min(limit, 100),
        cursor=cursor,
    )


@router.get("/mailboxes/{mailbox_id}/emails/{email_id}", tags=["emails"])
def read_email(state: StateDep, _key: Reader, mailbox_id: str, email_id: str) -> Json:
    return state.read_email(mailbox_id, email_id)


@router.post("/mailboxes/{mailbox_id}/send", status_code=202, tags=["emails"])
def send(
    state: StateDep, key: Sender, mailbox_id: str, body: models.SendBody, response: Response
) -> Json:
    status, result = state.send(
        key,
        mailbox_id,
        to=body.to,
        subject=body.subject,
        markdown=body.markdown,
        cc=body.cc,
        bcc=body.bcc,
        attachments=_attachments(body.attachments),
        idempotency_key=body.idempotency_key,
        send_at=body.send_at,
        gate_timing=body.gate_timing,
    )
    response.status_code = status
    return result


@router.post("/mailboxes/{mailbox_id}/reply/{email_id}", status_code=202, tags=["emails"])
def reply(
    state: StateDep,
    key: Sender,
    mailbox_id: str,
    email_id: str,
    body: models.ReplyBody,
    response: Response,
) -> Json:
    status, result = state.reply(
        key,
        mailbox_id,
        email_id,
        markdown=body.markdown,
        cc=body.cc,
        bcc=body.bcc,
        attachments=_attachments(body.attachments),
        idempotency_key=body.idempotency_key,
    )
    response.status_code = status
    return result


@router.post("/mailboxes/{mailbox_id}/emails/{email_id}/cancel", tags=["emails"])
def cancel(state: StateDep, key: Sender, mailbox_id: str, email_id: str) -> Json:
    return state.cancel(key, mailbox_id, email_id)


@router.get("/mailboxes/{mailbox_id}/emails/{email_id}/tags", tags=["emails"])
def get_tags(state: StateDep, _key: Reader, mailbox_id: str, email_id: str) -> Json:
    return state.get_tags(mailbox_id, email_id)


@router.put("/mailboxes/{mailbox_id}/emails/{email_id}/tags", tags=["emails"])
def set_tags(
    state: StateDep, key: Sender, mailbox_id: str, email_id: str, body: models.TagsBody
) -> Json:
    return state.set_tags(key, mailbox_id, email_id, body.tags)


@router.delete("/mailboxes/{mailbox_id}/emails/{email_id}/tags/{tag}", tags=["emails"])
def delete_tag(state: StateDep, key: Sender, mailbox_id: str, email_id: str, tag: str) -> Json:
    return state.delete_tag(key, mailbox_id, email_id, tag)


@router.get("/mailboxes/{mailbox_id}/threads/{thread_id}", tags=["emails"])
def get_thread(state: StateDep, _key: Reader, mailbox_id: str, thread_id: str) -> Json:
    return state.thread(mailbox_id, thread_id)
