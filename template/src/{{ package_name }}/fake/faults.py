"""Fault injection rules: errors, latency and dropped responses for `/v1/` requests."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FaultRule:
    """A rule matches requests by path prefix and method and fires with `error_rate`.

    When it fires it waits `latency` seconds, then either answers `status` without applying the
    request, or applies the request and drops the response (`drop_response`). `count` limits how
    often it fires; `seed` makes the random draws repeatable.
    """

    id: str
    path_prefix: str | None = None
    method: str | None = None
    error_rate: float = 1.0
    status: int | None = None
    latency: float = 0.0
    retry_after: int | None = None
    #: The `error` text of the injected answer (e.g. "Duplicate ..." for a 409).
    message: str | None = None
    drop_response: bool = False
    count: int | None = None
    seed: int = 0
    fired: int = 0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Deliberately a seeded, non-cryptographic RNG: fault sequences must be repeatable.
        self._rng = random.Random(self.seed)  # noqa: S311
        if self.method is not None:
            self.method = self.method.upper()

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method.upper():
            return False
        if self.path_prefix is not None and not path.startswith(self.path_prefix):
            return False
        return self.count is None or self.fired < self.count

    def fire(self) -> bool:
        """Draw once from the rule's RNG; count the firing if it happens."""
        if self._rng.random() >= self.error_rate:
            return False
        self.fired += 1
        return True

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "path_prefix": self.path_prefix,
            "method": self.method,
            "error_rate": self.error_rate,
            "status": self.status,
            "latency": self.latency,
            "retry_after": self.retry_after,
            "message": self.message,
            "drop_response": self.drop_response,
            "count": self.count,
            "seed": self.seed,
            "fired": self.fired,
        }
