"""What every part of the fake's state shares: the lock, the fake clock, ids and errors.

Time comes from a fake clock: real UTC time plus an offset that `advance_clock` moves forward.
Clock-driven transitions (the content scan finishing, scheduled sends falling due) are applied
lazily by `_tick()`, which runs at the start of every public operation (see `locked`), so the
outcome of a sequence of calls depends on the clock alone, not on thread timing.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import secrets
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Concatenate, ParamSpec, TypeVar

from ulid import ULID

Json = dict[str, Any]

_EMAIL_RE = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S", bound="StateBase")


class ApiError(Exception):
    """A failure the API reports as `{"error": message, **extra}` with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        extra: Json | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> Json:
        return {"error": self.message, **self.extra}


def iso(moment: datetime) -> str:
    """ISO 8601 UTC with milliseconds and a `Z` suffix."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def is_email(value: str) -> bool:
    return len(value) <= 254 and _EMAIL_RE.fullmatch(value) is not None


def hash_secret(raw: str) -> str:
    """How API keys and upgrade codes are stored: never the raw value."""
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


def page(items: list[Json], limit: int, cursor: str | None) -> tuple[list[Json], str | None]:
    """Cursor pagination over items sorted newest first by ULID `id`; the cursor is the last id."""
    if cursor:
        items = [item for item in items if item["id"] < cursor]
    shown = items[:limit]
    more = len(items) > limit
    return shown, (shown[-1]["id"] if more and shown else None)


def locked(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """Run a public state operation under the lock, after applying due clock transitions."""

    @functools.wraps(method)
    def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with self.lock:
            self._tick()
            return method(self, *args, **kwargs)

    return wrapper


class StateBase:
    """The lock, the clock and the ids; each section of the state builds on this.

    Every section keeps its own records and sets them up in `_clear`, calling `super()._clear()`
    first, so `reset()` empties all of them.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()

    def _clear(self) -> None:
        self._offset = 0.0
        self._last_ulid = 0

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self._offset)

    def _new_id(self) -> str:
        """A ULID from the fake clock, strictly increasing so that ids sort by creation."""
        value = (int(self.now().timestamp() * 1000) << 80) | secrets.randbits(80)
        value = max(value, self._last_ulid + 1)
        self._last_ulid = value
        return str(ULID.from_int(value))

    def tick(self) -> None:
        with self.lock:
            self._tick()

    def advance_clock(self, seconds: float) -> str:
        with self.lock:
            if not math.isfinite(seconds) or seconds < 0:
                raise ApiError(400, "seconds: must be a finite number >= 0")
            self._offset += seconds
            self._tick()
            return iso(self.now())

    def _tick(self) -> None:
        """Apply the transitions that are due by now; the emails section fills this in."""
