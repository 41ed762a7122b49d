"""`/v1/mailboxes`: create, read, change and delete mailboxes, and loosen a mode with the
operator's code (`state/mailboxes.py`)."""

from __future__ import annotations

from fastapi import APIRouter

from .. import models
from ..deps import StateDep
from ..state import Json
from .errors import ERROR_RESPONSES
from .scopes import Admin, Reader, Sender

router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)


@router.get("/mailboxes", tags=["mailboxes"])
def list_mailboxes(state: StateDep, _key: Reader) -> Json:
    return state.list_mailboxes()


@router.post("/mailboxes", status_code=201, tags=["mailboxes"])
def create_mailbox(state: StateDep, key: Admin, body: models.MailboxCreate) -> Json:
    local = body.address_local or body.address or body.address_local_part
    return state.create_mailbox(key, local, body.display_name, body.ai_disclosure)


@router.get("/mailboxes/{mailbox_id}", tags=["mailboxes"])
def get_mailbox(state: StateDep, _key: Reader, mailbox_id: str) -> Json:
    return state.get_mailbox(mailbox_id)


@router.patch("/mailboxes/{mailbox_id}", tags=["mailboxes"])
def update_mailbox(
    state: StateDep, key: Admin, mailbox_id: str, body: models.MailboxUpdate
) -> Json:
    return state.update_mailbox(key, mailbox_id, body.model_dump(exclude_unset=True))


@router.delete("/mailboxes/{mailbox_id}", tags=["mailboxes"])
def delete_mailbox(state: StateDep, key: Admin, mailbox_id: str) -> Json:
    return state.delete_mailbox(key, mailbox_id)


@router.post("/mailboxes/{mailbox_id}/request-upgrade", tags=["mailboxes"])
def request_upgrade(
    state: StateDep, key: Sender, mailbox_id: str, body: models.UpgradeRequestBody
) -> Json:
    return state.request_upgrade(key, mailbox_id, body.target_mode)


@router.post("/mailboxes/{mailbox_id}/upgrade", tags=["mailboxes"])
def upgrade(state: StateDep, key: Sender, mailbox_id: str, body: models.UpgradeBody) -> Json:
    return state.upgrade(key, mailbox_id, body.code)
