"""The fault-injecting proxies of the chaos soak (bench/chaos.py), on 127.0.0.1.

- `ApiProxy` stands between the project (flow runs, the receiver) and the fake MultiMail: while
  its faults are on, a share of requests is answered 503 without reaching the fake, applied by
  the fake and then answered 502 (the answer is lost), or delayed.
- `WebhookProxy` stands between the fake's webhook deliveries and the project's receiver: it
  records every delivery and what the receiver answered, and, while duplicating, delivers each
  one again (same delivery id, after the receiver may have forgotten it; and re-signed under a
  new delivery id, as a second subscription or a replayed event would) and sometimes answers
  the fake 502 after the receiver accepted, so that the fake redelivers too.

Runs inside a generated project's environment (httpx, starlette and uvicorn are there).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

#: Headers a proxy must not pass on as they are (hop by hop, or recomputed by httpx).
HOP_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}
)


def _forwarded_headers(headers: Any) -> dict[str, str]:
    """Headers to pass on, names in lower case (so that one can be replaced by name)."""
    return {k.lower(): v for k, v in headers.items() if k.lower() not in HOP_HEADERS}


@dataclass
class ApiFaults:
    """Shares of requests faulted while `enabled`; drawn from one seeded RNG."""

    enabled: bool = False
    unavailable: float = 0.04  # 503 before the fake sees the request
    lost_answer: float = 0.03  # the fake applies it, the client gets 502
    slow: float = 0.05  # answered after `delay` seconds
    delay: tuple[float, float] = (0.5, 3.0)


class ApiProxy:
    """An ASGI app forwarding everything to `target` (the fake), with `faults` when enabled."""

    def __init__(self, target: str, faults: ApiFaults, seed: int) -> None:
        self.target = target.rstrip("/")
        self.faults = faults
        self.counts: Counter[str] = Counter()
        self._rng = random.Random(seed)  # noqa: S311 (repeatable fault draws, not security)
        self._lock = threading.Lock()
        self._client: httpx.AsyncClient | None = None

    def _draw(self) -> str:
        faults = self.faults
        with self._lock:
            if not faults.enabled:
                return "none"
            roll = self._rng.random()
            if roll < faults.unavailable:
                return "unavailable"
            if roll < faults.unavailable + faults.lost_answer:
                return "lost_answer"
            if roll < faults.unavailable + faults.lost_answer + faults.slow:
                return "slow"
            return "none"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=60.0, trust_env=False)
        request = Request(scope, receive)
        body = await request.body()
        fault = self._draw()
        with self._lock:
            self.counts["requests"] += 1
            if fault != "none":
                self.counts[fault] += 1
        if fault == "unavailable":
            await JSONResponse({"error": "injected: service unavailable"}, 503)(
                scope, receive, send
            )
            return
        if fault == "slow":
            await asyncio.sleep(self._rng.uniform(*self.faults.delay))
        url = self.target + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        try:
            answer = await self._client.request(
                request.method, url, content=body, headers=_forwarded_headers(request.headers)
            )
        except httpx.HTTPError as error:
            await JSONResponse({"error": f"proxy: {type(error).__name__}"}, 502)(
                scope, receive, send
            )
            return
        if fault == "lost_answer":
            await JSONResponse({"error": "injected: answer lost"}, 502)(scope, receive, send)
            return
        response = Response(
            answer.content, answer.status_code, headers=_forwarded_headers(answer.headers)
        )
        await response(scope, receive, send)


@dataclass
class Delivery:
    """One webhook delivery seen by the proxy (first attempt, redelivery or injected copy)."""

    at: float
    event: str
    delivery_id: str
    email_id: str
    status: int | None  # what the receiver answered; None: it could not be reached
    injected: str = ""  # "", "same_id" or "new_id"
    body: bytes = field(default=b"", repr=False)
    answer: str = ""  # the receiver's answer when it was an error (5xx)


class WebhookProxy:
    """An ASGI app forwarding MultiMail's webhooks to the receiver at `target`."""

    def __init__(self, target: str, seed: int) -> None:
        self.target = target
        self.deliveries: list[Delivery] = []
        self.duplicating = False
        self.injected: Counter[str] = Counter()
        self._secret: str | None = None
        self._rng = random.Random(seed)  # noqa: S311 (repeatable fault draws, not security)
        self._lock = threading.Lock()
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def set_secret(self, secret: str) -> None:
        """The subscription's signing secret, to sign copies under a new delivery id."""
        self._secret = secret

    def receiver_answers(self) -> Counter[tuple[str, str]]:
        """(event, status the receiver answered) -> count; `down` when it was unreachable."""
        with self._lock:
            return Counter(
                (d.event, "down" if d.status is None else str(d.status)) for d in self.deliveries
            )

    def receiver_errors(self) -> Counter[str]:
        """The receiver's 5xx answers: `event status: body` -> count."""
        with self._lock:
            return Counter(
                f"{d.event} {d.status}: {d.answer}"
                for d in self.deliveries
                if d.status is not None and d.status >= 500
            )

    async def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int | None, str]:
        assert self._client is not None
        try:
            answer = await self._client.post(self.target, content=body, headers=headers)
        except httpx.HTTPError:
            return None, ""
        return answer.status_code, answer.text[:160] if answer.status_code >= 500 else ""

    def _record(self, body: bytes, status: int | None, injected: str, answer: str = "") -> None:
        try:
            payload = json.loads(body)
            event, delivery_id = str(payload["event"]), str(payload["id"])
            email_id = str(payload.get("data", {}).get("email_id", ""))
        except (ValueError, KeyError, TypeError, AttributeError):
            event, delivery_id, email_id = "unreadable", "", ""
        with self._lock:
            self.deliveries.append(
                Delivery(time.time(), event, delivery_id, email_id, status, injected, body, answer)
            )

    def _resigned(self, body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        payload = json.loads(body)
        payload["id"] = f"chaos-{uuid.uuid4().hex}"
        new_body = json.dumps(payload).encode()
        assert self._secret is not None
        digest = hmac.new(self._secret.encode(), new_body, hashlib.sha256).hexdigest()
        return new_body, {
            **headers,
            "x-multimail-signature": f"sha256={digest}",
            "x-multimail-delivery": payload["id"],
        }

    async def _again(self, delay: float, body: bytes, headers: dict[str, str], kind: str) -> None:
        await asyncio.sleep(delay)
        if kind == "new_id":
            body, headers = self._resigned(body, headers)
        status, answer = await self._post(body, headers)
        self._record(body, status, kind, answer)

    def _schedule(self, delay: float, body: bytes, headers: dict[str, str], kind: str) -> None:
        task = asyncio.get_running_loop().create_task(self._again(delay, body, headers, kind))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        with self._lock:
            self.injected[kind] += 1

    def _duplicate(self, body: bytes, headers: dict[str, str]) -> bool:
        """Copies of one delivery; True when the fake is to be told it failed (it redelivers)."""
        self._schedule(self._rng.uniform(1.0, 15.0), body, headers, "same_id")
        if self._secret is not None and self._rng.random() < 0.5:
            self._schedule(self._rng.uniform(1.0, 15.0), body, headers, "new_id")
        if self._rng.random() < 0.4:
            with self._lock:
                self.injected["answered_502"] += 1
            return True
        return False

    def replay_earlier(self, count: int) -> int:
        """Deliver again `count` deliveries seen earlier, picked at random (each under its own
        delivery id or re-signed under a new one); from any thread. Returns how many."""
        with self._lock:
            earlier = [d for d in self.deliveries if not d.injected and d.body]
        picked = self._rng.sample(earlier, min(count, len(earlier)))
        loop = self._loop
        if loop is None:
            return 0
        headers = {"content-type": "application/json", "user-agent": "MultiMail-Webhooks/fake"}
        for delivery in picked:
            signed = {**headers, **self._sign_headers(delivery.body)}
            kind = "new_id" if self._secret is not None and self._rng.random() < 0.5 else "same_id"
            loop.call_soon_threadsafe(
                self._schedule, self._rng.uniform(0.0, 5.0), delivery.body, signed, kind
            )
        return len(picked)

    def _sign_headers(self, body: bytes) -> dict[str, str]:
        if self._secret is None:
            return {}
        digest = hmac.new(self._secret.encode(), body, hashlib.sha256).hexdigest()
        return {"x-multimail-signature": f"sha256={digest}"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self._loop = asyncio.get_running_loop()
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=30.0, trust_env=False)
        request = Request(scope, receive)
        body = await request.body()
        headers = _forwarded_headers(request.headers)
        status, answer = await self._post(body, headers)
        self._record(body, status, "", answer)
        answer_502 = False
        if self.duplicating and status is not None and 200 <= status < 300:
            answer_502 = self._duplicate(body, headers)
        if status is None or answer_502:
            await JSONResponse({"error": "proxy: receiver unreachable or injected"}, 502)(
                scope, receive, send
            )
            return
        await Response(b"", status)(scope, receive, send)
