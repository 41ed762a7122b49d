"""A typed MultiMail client on httpx: one pooled connection, explicit timeouts, Bearer auth.

It knows nothing of Prefect, so it can be used (and tested) on its own. Every call returns a
pydantic model or raises a `MultiMailError` whose message says what went wrong and what to fix.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from itertools import pairwise
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import httpx
from pydantic import BaseModel, SecretStr, ValidationError

from .models import (
    Account,
    AuditPage,
    CancelResult,
    Email,
    EmailPage,
    EmailSummary,
    Mailbox,
    PendingItem,
    SendResult,
    Thread,
    WebhookSubscription,
)

ModelT = TypeVar("ModelT", bound=BaseModel)

_ID_KINDS = {"mailboxes": "mailbox", "emails": "email", "reply": "email", "threads": "thread"}


def _fix(status_code: int, message: str, path: str) -> str | None:
    """What the person running the flow should do about a non-retryable error."""
    if status_code == 401:
        return (
            "the API key was refused: check MULTIMAIL_API_KEY locally, or the Prefect Secret "
            "block named by api_key_block in settings.toml when deployed"
        )
    if status_code == 403:
        if "scope" in message.lower():
            return "use a key that has the scope named above (flows need read and send)"
        return (
            "the mailbox's oversight mode forbids this (a read_only mailbox cannot send): "
            "loosen it with the project's `provision` command and the operator's code"
        )
    if status_code == 404:
        parts = path.strip("/").split("/")
        named = [
            f"{_ID_KINDS[kind]} {value}" for kind, value in pairwise(parts) if kind in _ID_KINDS
        ]
        if not named:
            return "check the ids given to this call (they must exist in this MultiMail account)"
        return f"check that {' and '.join(named)} exist(s) in this MultiMail account"
    if status_code in (400, 422):
        return "the request was invalid: fix the field named above"
    if status_code == 409 and ("/send" in path or "/reply/" in path):
        return (
            "MultiMail already holds another message with the same content; this one carried "
            "its own idempotency key, so it is not a retry of that one and nothing was sent. "
            "Change the content, or send it again after 60 seconds"
        )
    return None


class MultiMailError(Exception):
    """Anything that went wrong talking to MultiMail."""


class MultiMailAPIError(MultiMailError):
    """MultiMail answered with a non-2xx status."""

    def __init__(
        self,
        *,
        status_code: int,
        message: str,
        method: str,
        path: str,
        retry_after: float | None = None,
    ) -> None:
        self.status_code = status_code
        self.message = message
        self.method = method
        self.path = path
        self.retry_after = retry_after
        fix = _fix(status_code, message, path)
        text = f"MultiMail {method} {path} -> {status_code}: {message}"
        super().__init__(f"{text} ({fix})" if fix else text)

    @property
    def retryable(self) -> bool:
        """Whether the same call may succeed later: rate limits and server errors only."""
        return self.status_code == 429 or self.status_code >= 500


class MultiMailResponseError(MultiMailError):
    """A 2xx answer whose body is not what the API contract promises."""


class MailboxNotFoundError(MultiMailError):
    """No mailbox in the account has the address an audience names."""


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class MultiMailClient:
    """Calls MultiMail's REST API at `base_url` (e.g. https://api.multimail.dev)."""

    def __init__(
        self,
        base_url: str,
        api_key: SecretStr,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/") + "/v1",
            headers={"Authorization": f"Bearer {api_key.get_secret_value()}"},
            timeout=httpx.Timeout(timeout),
            transport=transport,
        )
        self._mailbox_ids: dict[str, str] = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- plumbing --------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, str | int] | None = None,
    ) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, json=json, params=params)
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as error:
            raise MultiMailError(
                f"cannot call {self._http.base_url}{path}: {error}; set api_url in settings.toml "
                "or MULTIMAIL_API_URL to http(s)://host[:port]"
            ) from None
        if response.is_success:
            try:
                data = response.json()
            except ValueError:
                data = None
            if not isinstance(data, dict):
                raise MultiMailResponseError(
                    f"MultiMail {method} {path} -> {response.status_code} with a body that is "
                    "not a JSON object; is api_url pointing at the MultiMail API?"
                )
            return data
        try:
            body = response.json()
        except ValueError:
            body = None
        message = ""
        if isinstance(body, dict) and "error" in body:
            message = str(body["error"])
            hint = str(body.get("hint") or "")
            if hint and hint not in message:  # some 429s and 403s explain themselves
                message += f" ({hint})"
        raise MultiMailAPIError(
            status_code=response.status_code,
            message=message or response.reason_phrase or "no error message",
            method=method,
            path=path,
            retry_after=_retry_after(response),
        )

    @staticmethod
    def _parse(model: type[ModelT], data: Any, where: str) -> ModelT:
        try:
            return model.model_validate(data)
        except ValidationError as error:
            raise MultiMailResponseError(
                f"MultiMail {where} answered with an unexpected body: {error}"
            ) from None

    # -- mailboxes -------------------------------------------------------------------------

    def list_mailboxes(self) -> list[Mailbox]:
        data = self._call("GET", "/mailboxes")
        return [self._parse(Mailbox, m, "GET /mailboxes") for m in data.get("mailboxes", [])]

    def get_mailbox(self, mailbox_id: str) -> Mailbox:
        return self._parse(Mailbox, self._call("GET", f"/mailboxes/{mailbox_id}"), "GET mailbox")

    def create_mailbox(self, address_local: str, display_name: str | None = None) -> Mailbox:
        body: dict[str, Any] = {"address_local": address_local}
        if display_name:
            body["display_name"] = display_name
        data = self._call("POST", "/mailboxes", json=body)
        return self._parse(Mailbox, data, "POST /mailboxes")

    def update_mailbox(self, mailbox_id: str, **fields: Any) -> None:
        self._call("PATCH", f"/mailboxes/{mailbox_id}", json=fields)

    def request_upgrade(self, mailbox_id: str, target_mode: str) -> None:
        self._call(
            "POST", f"/mailboxes/{mailbox_id}/request-upgrade", json={"target_mode": target_mode}
        )

    def upgrade(self, mailbox_id: str, code: str) -> str:
        data = self._call("POST", f"/mailboxes/{mailbox_id}/upgrade", json={"code": code})
        return str(data.get("oversight_mode", ""))

    def mailbox_id(self, address_local: str) -> str:
        """The id of the mailbox whose address starts with `address_local@` (cached)."""
        if address_local not in self._mailbox_ids:
            self._mailbox_ids.update({m.local_part: m.id for m in self.list_mailboxes()})
        try:
            return self._mailbox_ids[address_local]
        except KeyError:
            raise MailboxNotFoundError(
                f"no mailbox {address_local}@... in this MultiMail account; create it with the "
                "project's `provision` command (or in the MultiMail dashboard)"
            ) from None

    # -- emails ----------------------------------------------------------------------------

    def send(
        self,
        mailbox_id: str,
        *,
        to: list[str],
        subject: str,
        markdown: str,
        idempotency_key: str,
        cc: list[str] | None = None,
        bcc: list[str] | None = None,
    ) -> SendResult:
        body: dict[str, Any] = {
            "to": to,
            "subject": subject,
            "markdown": markdown,
            "idempotency_key": idempotency_key,
        }
        if cc:
            body["cc"] = cc
        if bcc:
            body["bcc"] = bcc
        data = self._call("POST", f"/mailboxes/{mailbox_id}/send", json=body)
        return self._parse(SendResult, data, "send")

    def reply(
        self,
        mailbox_id: str,
        email_id: str,
        *,
        markdown: str,
        idempotency_key: str,
        cc: list[str] | None = None,
    ) -> SendResult:
        body: dict[str, Any] = {"markdown": markdown, "idempotency_key": idempotency_key}
        if cc:
            body["cc"] = cc
        data = self._call("POST", f"/mailboxes/{mailbox_id}/reply/{email_id}", json=body)
        return self._parse(SendResult, data, "reply")

    def list_emails(
        self,
        mailbox_id: str,
        *,
        status: str | None = None,
        direction: Literal["inbound", "outbound"] | None = None,
        since_id: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> EmailPage:
        query = {"status": status, "direction": direction, "since_id": since_id}
        params: dict[str, str | int] = {k: v for k, v in query.items() if v is not None}
        if limit is not None:
            params["limit"] = limit
        if cursor is not None:
            params["cursor"] = cursor
        data = self._call("GET", f"/mailboxes/{mailbox_id}/emails", params=params)
        return self._parse(EmailPage, data, "list emails")

    def iter_emails(
        self,
        mailbox_id: str,
        *,
        status: str | None = None,
        direction: Literal["inbound", "outbound"] | None = None,
    ) -> Iterator[EmailSummary]:
        """Every matching email, newest first, following the cursor page by page."""
        cursor = None
        while True:
            page = self.list_emails(
                mailbox_id, status=status, direction=direction, limit=100, cursor=cursor
            )
            yield from page.emails
            if page.cursor is None:
                return
            cursor = page.cursor

    def get_email(self, mailbox_id: str, email_id: str) -> Email:
        """Read one email. MultiMail marks an `unread` email `read` as a side effect."""
        data = self._call("GET", f"/mailboxes/{mailbox_id}/emails/{email_id}")
        return self._parse(Email, data, "read email")

    def cancel(self, mailbox_id: str, email_id: str) -> CancelResult:
        data = self._call("POST", f"/mailboxes/{mailbox_id}/emails/{email_id}/cancel")
        return self._parse(CancelResult, data, "cancel")

    def get_tags(self, mailbox_id: str, email_id: str) -> dict[str, str]:
        data = self._call("GET", f"/mailboxes/{mailbox_id}/emails/{email_id}/tags")
        return {str(k): str(v) for k, v in data.get("tags", {}).items()}

    def set_tags(self, mailbox_id: str, email_id: str, tags: Mapping[str, str]) -> dict[str, str]:
        """Merge `tags` into the email's tags (given keys overwrite, others stay)."""
        path = f"/mailboxes/{mailbox_id}/emails/{email_id}/tags"
        data = self._call("PUT", path, json={"tags": dict(tags)})
        return {str(k): str(v) for k, v in data.get("tags", {}).items()}

    def delete_tag(self, mailbox_id: str, email_id: str, key: str) -> None:
        self._call("DELETE", f"/mailboxes/{mailbox_id}/emails/{email_id}/tags/{key}")

    def get_thread(self, mailbox_id: str, thread_id: str) -> Thread:
        data = self._call("GET", f"/mailboxes/{mailbox_id}/threads/{thread_id}")
        return self._parse(Thread, data, "thread")

    # -- oversight, audit, account ---------------------------------------------------------

    def list_pending(self) -> list[PendingItem]:
        data = self._call("GET", "/oversight/pending")
        items = data.get("emails", data.get("pending", []))
        return [self._parse(PendingItem, item, "pending") for item in items]

    def decide(
        self, email_id: str, action: Literal["approve", "reject"], reason: str | None = None
    ) -> str:
        """Approve or reject a pending email (needs a key with the `oversight` scope)."""
        body: dict[str, Any] = {"email_id": email_id, "action": action}
        if reason:
            body["reason"] = reason
        return str(self._call("POST", "/oversight/decide", json=body).get("status", ""))

    def audit_log(self, *, limit: int | None = None, cursor: str | None = None) -> AuditPage:
        params: dict[str, str | int] = {}
        if limit is not None:
            params["limit"] = limit
        if cursor is not None:
            params["cursor"] = cursor
        return self._parse(AuditPage, self._call("GET", "/audit-log", params=params), "audit")

    def create_webhook(
        self, url: str, events: list[str], mailbox_id: str | None = None
    ) -> WebhookSubscription:
        """Subscribe `url` to `events`; the answer carries the signing secret (shown once)."""
        body: dict[str, Any] = {"url": url, "events": events}
        if mailbox_id:
            body["mailbox_id"] = mailbox_id
        data = self._call("POST", "/webhooks", json=body)
        return self._parse(WebhookSubscription, data, "create webhook")

    def list_webhooks(self) -> list[WebhookSubscription]:
        data = self._call("GET", "/webhooks")
        items = data.get("subscriptions", data.get("webhooks", []))
        return [self._parse(WebhookSubscription, item, "list webhooks") for item in items]

    def account(self) -> Account:
        return self._parse(Account, self._call("GET", "/account"), "account")

    def api_key_names(self) -> dict[str, str]:
        """Each API key's name by its id (admin scope): who approved, in the operator's words."""
        keys = self._call("GET", "/api-keys").get("api_keys", [])
        return {str(key["id"]): str(key.get("name") or key["id"]) for key in keys}
