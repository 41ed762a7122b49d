"""MultiMail's audit log, exported to Prefect as events: the flow `<project>-export-audit-log`.

Each audit entry becomes one event `multimail.audit.<action>` (e.g. `multimail.audit.email.send`)
on the email, mailbox, webhook or key it concerns, at the time it happened, so the audit trail
sits in the Event Feed next to the flow runs that caused it, and automations can act on it.

MultiMail lists the log newest first, with a cursor towards older entries. An export walks
from the newest entry down to the newest one the previous export reached; where it stands is
kept in a Prefect Variable after every page, so a crashed run is continued by the next one.
The Variable is this project's (`<project>-audit-export`, namespace.py) and names the MultiMail
account whose log it walks: a position of another account (another project on the same Prefect
server, or this project moved to a new account) is refused, since exporting from it would skip
this account's older entries. Versions before the namespaces kept a position without an account
in `multimail_audit_export`: while the project has none of its own, that one is taken over for
the current account (and the log says so), so an update neither skips nor repeats entries.
Every event id is derived from the audit entry's id: an entry emitted twice (a crash between
emitting and saving the cursor, or a lost Variable) is stored once. Events carry ids, action
names and statuses only: addresses, subjects, bodies and free-text reasons stay in MultiMail.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_table_artifact
from prefect.events import Event
from prefect.events.clients import get_events_client
from prefect.variables import Variable
from pydantic import BaseModel, ConfigDict

from ..mail.connection import shared_client
from ..mail.events import event_id, related, resource
from ..mail.tasks import mail_task
from ..multimail.models import Account, AuditEntry, AuditPage
from ..namespace import AUDIT_CURSOR_VARIABLE, EXPORT_AUDIT_LOG, artifact_key, flow_name

#: Metadata that may leave MultiMail: statuses, modes, names of things. Anything else (from,
#: to, subject, reason, url, tag values, ...) is left out.
SAFE_METADATA = frozenset(
    {
        "action",
        "approval_status",
        "events",
        "forward_inbound",
        "is_active",
        "key",
        "mailbox_id",
        "new",
        "old",
        "op",
        "oversight_mode",
        "scopes",
        "status",
        "target_mode",
    }
)
#: Resource kinds in event resource ids, by the audit entry's resource_type.
_KINDS = {"api_key": "api-key"}


#: Where versions before the project namespaces kept the position (one for every project).
LEGACY_CURSOR_VARIABLE = "multimail_audit_export"


class ExportPosition(BaseModel):
    """Where the export stands (the Variable's value).

    `account`: the id of the MultiMail account whose audit log this is (`account_slug`, its
    slug, for messages); None in positions written by versions before it was recorded.
    `exported_through`: the newest entry a finished export reached. While an export runs:
    `newest`, the entry it started from, and `cursor`, the page to read next.
    """

    model_config = ConfigDict(frozen=True)

    account: str | None = None
    account_slug: str | None = None
    exported_through: str | None = None
    newest: str | None = None
    cursor: str | None = None


class CursorOfAnotherAccount(RuntimeError):
    """The Variable holds the position of another MultiMail account's audit log."""


def _named(account_id: str, slug: str | None) -> str:
    return f"{slug} ({account_id})" if slug else account_id


def own_position(saved: Any, account: Account, variable: str) -> ExportPosition:
    """The position stored in `variable` (`saved`, its value), as this account's.

    A position of another account raises `CursorOfAnotherAccount`, with what to do; one
    without an account (written by an older version) is taken over, and the log says so.
    """
    position = ExportPosition.model_validate(saved or {})
    if position.account is None:
        if saved:
            get_run_logger().warning(
                "The audit export position in Prefect Variable %r names no MultiMail account "
                "(an older version wrote it); continuing from it for account %s.",
                variable,
                _named(account.id, account.slug),
            )
        return position.model_copy(update={"account": account.id, "account_slug": account.slug})
    if position.account != account.id:
        raise CursorOfAnotherAccount(
            f"The audit export position in Prefect Variable {variable!r} belongs to MultiMail "
            f"account {_named(position.account, position.account_slug)}, but this project's "
            f"API key is of account {_named(account.id, account.slug)}; exporting from that "
            "position would skip this account's entries, so nothing was exported. If this "
            f"project moved to account {account.slug or account.id}, delete the old position "
            f"(`prefect variable unset {variable}`): the next run exports the whole audit log, "
            "and events already in Prefect are not stored twice. If another project on this "
            "Prefect server uses that account, give each project its own `project` in "
            "settings.toml (the Variable is named after it)."
        )
    return position.model_copy(update={"account_slug": account.slug})


def _safe(value: Any) -> Any:
    """Keep what `SAFE_METADATA` allows, recursively; never a string with an address in it."""
    if isinstance(value, dict):
        kept = {k: _safe(v) for k, v in value.items() if k in SAFE_METADATA}
        return {k: v for k, v in kept.items() if v is not None}
    if isinstance(value, list):
        return [item for item in map(_safe, value) if item is not None]
    if isinstance(value, str):
        return None if "@" in value else value
    if isinstance(value, bool | int | float) or value is None:
        return value
    return None


def _occurred(entry: AuditEntry) -> datetime:
    moment = datetime.fromisoformat(entry.created_at.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def audit_event(entry: AuditEntry) -> Event:
    """The Prefect event for one audit entry (its id derived from the entry's id)."""
    payload: dict[str, Any] = {"audit_id": entry.id, "metadata": _safe(entry.metadata)}
    for field in ("to", "cc", "bcc"):
        recipients = entry.metadata.get(field)
        if isinstance(recipients, list):
            payload[f"{field}_count"] = len(recipients)
    if entry.resource_type and entry.resource_id:
        kind = _KINDS.get(entry.resource_type, entry.resource_type)
        subject = resource(kind, entry.resource_id)
    else:
        subject = resource("audit-entry", entry.id)
    return Event(
        id=event_id("multimail.audit", entry.id),
        event=f"multimail.audit.{entry.action}",
        occurred=_occurred(entry),
        resource=subject,
        related=[related("api-key", entry.actor_key_id, "actor")] if entry.actor_key_id else [],
        payload=payload,
    )


@mail_task
def read_account() -> Account:
    """The MultiMail account of this project's API key (`read` scope, which `admin` includes)."""
    return shared_client().account()


@mail_task
def read_audit_page(limit: int, cursor: str | None) -> AuditPage:
    """One page of the audit log, newest first (needs a key with the `admin` scope)."""
    return shared_client().audit_log(limit=limit, cursor=cursor)


@flow(name=flow_name(EXPORT_AUDIT_LOG))
async def export_audit_log(
    page_size: int = 50,
    max_pages: int | None = None,
    cursor_variable: str = AUDIT_CURSOR_VARIABLE,
    legacy_cursor_variable: str = LEGACY_CURSOR_VARIABLE,
) -> int:
    """Emit every audit entry not exported yet as a Prefect event; returns how many.

    Scheduled every 5 minutes in prefect.yaml and by `serve`. `max_pages` bounds one run's
    work; the next run continues where it stopped. Refuses (CursorOfAnotherAccount) to go on
    from the position of another MultiMail account. `legacy_cursor_variable` is read only while
    `cursor_variable` does not exist.
    """
    account = read_account()
    saved, read_from = await Variable.aget(cursor_variable), cursor_variable
    if saved is None:
        saved, read_from = await Variable.aget(legacy_cursor_variable), legacy_cursor_variable
    position = own_position(saved, account, read_from)
    exported: list[AuditEntry] = []
    pages = 0
    # Continuing a crashed export ends at the entries it had started from; one more pass from
    # the top then takes what arrived meanwhile.
    continued = position.cursor is not None
    # checkpoint_every=1: each emit returns once the server has the event, so the position
    # saved after a page never runs ahead of what Prefect received.
    async with get_events_client(checkpoint_every=1) as events:
        while max_pages is None or pages < max_pages:
            page = read_audit_page(page_size, position.cursor)
            pages += 1
            through = position.exported_through
            new = [e for e in page.entries if through is None or e.id > through]
            for entry in new:
                await events.emit(audit_event(entry))
            exported.extend(new)
            newest = position.newest or (page.entries[0].id if page.entries else through)
            if page.cursor is None or len(new) < len(page.entries):
                position = position.model_copy(
                    update={"exported_through": newest, "newest": None, "cursor": None}
                )
            else:
                position = position.model_copy(
                    update={"exported_through": through, "newest": newest, "cursor": page.cursor}
                )
            await Variable.aset(cursor_variable, position.model_dump(), overwrite=True)
            if position.cursor is None:
                if not continued:
                    break
                continued = False
    await acreate_table_artifact(
        key=artifact_key("audit-export"),
        table=[
            {
                "audit_id": e.id,
                "event": f"multimail.audit.{e.action}",
                "resource": f"{e.resource_type}:{e.resource_id}",
                "created_at": e.created_at,
            }
            for e in exported
        ]
        or [{"audit_id": "", "event": "(nothing new)", "resource": "", "created_at": ""}],
        description=f"{len(exported)} MultiMail audit entries exported as Prefect events.",
    )
    get_run_logger().info(
        "Exported %d audit entries; position %s", len(exported), position.model_dump()
    )
    return len(exported)
