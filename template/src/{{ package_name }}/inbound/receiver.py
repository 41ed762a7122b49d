"""A small receiver for MultiMail webhooks: verifies each delivery, then acts on it.

Each event type has a handler (`create_receiver(..., handlers=...)`); by default the decisions
(`oversight.approved` / `oversight.rejected`) resume every flow run suspended on that email.
Run it with `<project> receiver serve` behind your HTTPS endpoint, and subscribe it to
MultiMail's oversight events (`provision --webhook-url`).

Every delivery is checked before anything in it is trusted: `X-MultiMail-Signature` must be
`sha256=` + the HMAC-SHA256 of the raw body keyed with the subscription's signing secret,
compared in constant time. Repeated deliveries (same delivery id) are answered but not acted on
twice. A non-2xx answer makes MultiMail retry the delivery later, which is what the receiver
asks for when the flow run has not finished suspending yet.

The receiver starts and answers `/healthz` while Prefect is down: given a loader instead of a
signing secret, it loads the secret on the first delivery (a Prefect Secret block needs the
API). While Prefect or MultiMail cannot be reached (the secret, an email's tags, the resume),
a delivery is answered 503, never 500, and not marked done, so MultiMail's retry is acted on.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import SecretStr
from starlette.concurrency import run_in_threadpool

from ..oversight.approvals import RETRY_LATER, ResumeOutcome, resume_waiters, waiting_runs

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-MultiMail-Signature"
DECISION_EVENTS = frozenset({"oversight.approved", "oversight.rejected"})

Resumer = Callable[[str, dict[str, Any]], Awaitable[dict[str, ResumeOutcome]]]
TagReader = Callable[[str, str], dict[str, str]]
#: Acts on one verified, first-seen delivery's `data`; answers (status code, body). A 2xx
#: marks the delivery done; anything else leaves it to MultiMail's retry.
EventHandler = Callable[[dict[str, Any]], Awaitable[tuple[int, dict[str, Any]]]]
#: The signing secret, or what loads it when the first delivery needs it (it may raise; it is
#: called again on the next delivery until it succeeds).
SecretSource = SecretStr | Callable[[], SecretStr]


def sign(secret: str, body: bytes) -> str:
    """The signature MultiMail sends for `body`: `sha256=<hex digest>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_is_valid(secret: str, body: bytes, header: str | None) -> bool:
    return header is not None and hmac.compare_digest(sign(secret, body), header.strip())


class _SeenDeliveries:
    """Delivery ids already acted on (bounded, oldest forgotten first)."""

    def __init__(self, size: int = 10_000) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def __contains__(self, delivery_id: str) -> bool:
        return delivery_id in self._ids

    def add(self, delivery_id: str) -> None:
        self._ids[delivery_id] = None
        while len(self._ids) > self._size:
            self._ids.popitem(last=False)


def _answer(status_code: int, **body: Any) -> JSONResponse:
    return JSONResponse(body, status_code=status_code)


def _unavailable(what: str, error: Exception) -> tuple[int, dict[str, Any]]:
    """Answer 503 (MultiMail retries) when `what` failed; log it without a traceback."""
    log.warning("%s failed (%s: %s); answered 503, MultiMail will retry", what, _name(error), error)
    return 503, {"error": f"{what} failed ({_name(error)}); MultiMail will retry this delivery"}


def _name(error: Exception) -> str:
    return type(error).__name__


class _SigningSecret:
    """The signing secret, loaded on first need and kept once loaded."""

    def __init__(self, source: SecretSource) -> None:
        self._value = source.get_secret_value() if isinstance(source, SecretStr) else None
        self._load = None if isinstance(source, SecretStr) else source

    async def get(self) -> str:
        """The secret; raises what the loader raises while it cannot be loaded."""
        if self._value is None:
            assert self._load is not None
            self._value = (await run_in_threadpool(self._load)).get_secret_value()
            log.info("loaded the webhook signing secret")
        return self._value


def decision_handler(read_tags: TagReader, resume: Resumer = resume_waiters) -> EventHandler:
    """Resume every flow run suspended on the decided email (`oversight.approved/rejected`)."""

    async def on_decision(data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        email_id, mailbox_id = str(data.get("email_id", "")), str(data.get("mailbox_id", ""))
        carried = data.get("tags")
        tags: dict[str, Any]
        if isinstance(carried, dict) and waiting_runs(carried):
            tags = carried
        else:
            try:
                tags = await run_in_threadpool(read_tags, mailbox_id, email_id)
            except Exception as error:  # MultiMail unreachable, or the key not loadable yet
                return _unavailable(f"reading the tags of email {email_id} from MultiMail", error)
        if not waiting_runs(tags):
            return 200, {"status": "ignored", "reason": "no flow run waits for this email"}
        try:
            outcomes = await resume(email_id, tags)
        except Exception as error:  # the Prefect API unreachable (check PREFECT_API_URL)
            return _unavailable(f"resuming the flow runs waiting for {email_id} in Prefect", error)
        if RETRY_LATER & set(outcomes.values()):
            # Not acted on as a whole (a run not suspended yet, or not resumed): MultiMail
            # retries the delivery with backoff, and runs resumed already answer `resumed` again.
            reason = "a flow run is not resumed yet; retry later"
            return 503, {"error": reason, "flow_runs": outcomes}
        return 200, {"status": "handled", "email_id": email_id, "flow_runs": outcomes}

    return on_decision


def create_receiver(
    signing_secret: SecretSource,
    *,
    read_tags: TagReader,
    resume: Resumer = resume_waiters,
    handlers: dict[str, EventHandler] | None = None,
) -> FastAPI:
    """The receiver app. `read_tags(mailbox_id, email_id)` fetches an email's tags when a
    delivery does not carry them (MultiMail's published payload example has none).
    `handlers` adds or replaces what is done per event type (the decisions by default).
    `signing_secret` may be a loader, called on the first delivery (see `SecretSource`)."""
    app = FastAPI(title="MultiMail webhook receiver", docs_url=None, redoc_url=None)
    seen = _SeenDeliveries()
    secret = _SigningSecret(signing_secret)
    on_decision = decision_handler(read_tags, resume)
    dispatch: dict[str, EventHandler] = {event: on_decision for event in DECISION_EVENTS}
    dispatch.update(handlers or {})

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/multimail/webhook")
    async def webhook(request: Request) -> JSONResponse:
        body = await request.body()
        try:
            key = await secret.get()
        except Exception as error:  # a Secret block needs the Prefect API
            status_code, answer = _unavailable("loading the webhook signing secret", error)
            return _answer(status_code, **answer)
        if not signature_is_valid(key, body, request.headers.get(SIGNATURE_HEADER)):
            return _answer(
                401,
                error=f"invalid or missing {SIGNATURE_HEADER}: check that the receiver's "
                "signing secret is the one of this webhook subscription",
            )
        try:
            payload = json.loads(body)
            event = str(payload["event"])
            delivery_id = str(payload["id"])
            data = payload["data"]
            if not isinstance(data, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return _answer(400, error="body is not a MultiMail webhook delivery (event, id, data)")
        if delivery_id in seen:
            return _answer(200, status="duplicate", delivery_id=delivery_id)
        handler = dispatch.get(event)
        if handler is None:
            seen.add(delivery_id)
            return _answer(200, status="ignored", event=event)
        try:
            status_code, answer = await handler(data)
        except Exception as error:  # never a 500: MultiMail retries what is not acted on
            log.exception("the %s handler failed on delivery %s; answered 503", event, delivery_id)
            return _answer(503, error=f"the {event} handler failed ({_name(error)}); retry later")
        if 200 <= status_code < 300:
            seen.add(delivery_id)
        return _answer(status_code, **answer)

    return app
