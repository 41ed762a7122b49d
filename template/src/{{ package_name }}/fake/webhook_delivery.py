"""Background delivery of signed webhook events, with retries and exponential backoff."""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

#: One first attempt plus three retries, as the contract says.
MAX_ATTEMPTS = 4


def sign(secret: str, body: bytes) -> str:
    """Return the `X-MultiMail-Signature` header value for a raw request body."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


@dataclass
class Delivery:
    """One event sent to one subscription; the same `id` is used on every attempt."""

    id: str
    event_type: str
    url: str
    subscription_id: str
    body: bytes = field(repr=False)
    secret: str = field(repr=False)
    created_at: str
    status: str = "pending"
    attempts: int = 0
    response_status: int | None = None
    last_attempt_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event_type": self.event_type,
            "url": self.url,
            "subscription_id": self.subscription_id,
            "status": self.status,
            "attempts": self.attempts,
            "response_status": self.response_status,
            "created_at": self.created_at,
            "last_attempt_at": self.last_attempt_at,
        }


class WebhookDispatcher:
    """Posts deliveries from a daemon thread so that API calls never wait for a receiver.

    Delivery records are owned by the fake's state; they are updated under the state's lock
    (`lock`), and `now` gives the fake clock's timestamp for `last_attempt_at`. Backoff uses
    real time (`backoff * 2**(attempt-1)` seconds) because the receiver is a real HTTP server.
    """

    def __init__(self, lock: threading.RLock, now: Callable[[], str]) -> None:
        self.backoff = 1.0
        self.timeout = 5.0
        self._lock = lock
        self._now = now
        self._cond = threading.Condition()
        self._queue: list[tuple[float, int, int, Delivery]] = []
        self._seq = itertools.count()
        self._generation = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, delivery: Delivery, delay: float = 0.0, generation: int | None = None) -> None:
        with self._cond:
            if self._closed:
                return
            gen = self._generation if generation is None else generation
            if gen != self._generation:
                return  # the state was reset while this delivery was in flight
            due = time.monotonic() + delay
            heapq.heappush(self._queue, (due, next(self._seq), gen, delivery))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="fake-multimail-webhooks", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def clear(self) -> None:
        """Forget queued deliveries (used by reset); attempts in flight are not retried."""
        with self._cond:
            self._queue.clear()
            self._generation += 1

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=self.timeout + 1)

    def _next(self) -> tuple[int, Delivery] | None:
        with self._cond:
            while not self._closed:
                if self._queue:
                    wait = self._queue[0][0] - time.monotonic()
                    if wait <= 0:
                        _, _, gen, delivery = heapq.heappop(self._queue)
                        return gen, delivery
                    self._cond.wait(wait)
                else:
                    self._cond.wait()
            return None

    def _run(self) -> None:
        with httpx.Client(trust_env=False, follow_redirects=False) as client:
            while (item := self._next()) is not None:
                self._attempt(client, *item)

    def _attempt(self, client: httpx.Client, generation: int, delivery: Delivery) -> None:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "MultiMail-Webhooks/fake",
            "X-MultiMail-Event": delivery.event_type,
            "X-MultiMail-Delivery": delivery.id,
            "X-MultiMail-Signature": sign(delivery.secret, delivery.body),
        }
        status: int | None
        try:
            response = client.post(
                delivery.url, content=delivery.body, headers=headers, timeout=self.timeout
            )
            status = response.status_code
        except Exception:  # any transport problem counts as a failed attempt
            status = None
        ok = status is not None and 200 <= status < 300
        with self._lock:
            delivery.attempts += 1
            delivery.response_status = status
            delivery.last_attempt_at = self._now()
            if ok:
                delivery.status = "delivered"
            elif delivery.attempts >= MAX_ATTEMPTS:
                delivery.status = "failed"
            retry = delivery.status == "pending"
            attempts = delivery.attempts
        if retry:
            self.submit(delivery, self.backoff * 2 ** (attempts - 1), generation)
