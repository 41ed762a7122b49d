"""Which failures of MultiMail (and of a drafting model) are worth another attempt, and how
long to wait before it.

One pure function, `classify`, decides for every caller: the Prefect tasks (through
`tasks.is_transient` and their retry delays) and anything that retries on its own, such as a
bulk sender. No Prefect import here and no sleeping: a caller that waits does so in its own
scheduler (Prefect puts the task run in `AwaitingRetry` until the delay is over).
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass

import httpx

from ..multimail.client import MultiMailAPIError

#: Network trouble worth another attempt: refused or reset connections, timeouts, an answer cut
#: off. Not a malformed URL or a local protocol error, which no retry would fix.
TRANSIENT_TRANSPORT_ERRORS = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)

#: Spread of the randomised backoff: a delay d becomes a value in [d, d * (1 + JITTER)].
JITTER = 0.5


@dataclass(frozen=True)
class RetryDecision:
    """Whether to try again, and the least time to wait first (a 429's Retry-After)."""

    retryable: bool
    min_delay_seconds: float = 0.0
    reason: str = ""


def classify(error: BaseException, *, retry_after_cap_seconds: float) -> RetryDecision:
    """Decide about one failure of a MultiMail call.

    Retried: connection errors, timeouts, cut-off answers, 429 and 5xx. A 429 whose Retry-After
    exceeds `retry_after_cap_seconds` (a monthly quota, say) is not: no retry within reach would
    succeed. Everything else (400, 401, 403, 404, 409, 422, a missing key, a bug) fails at once.
    """
    if isinstance(error, MultiMailAPIError):
        if not error.retryable:
            return RetryDecision(False, reason=f"HTTP {error.status_code} is not transient")
        return _after_waiting(
            error.retry_after, retry_after_cap_seconds, f"HTTP {error.status_code}"
        )
    if isinstance(error, TRANSIENT_TRANSPORT_ERRORS):
        return RetryDecision(True, reason=type(error).__name__)
    if "pydantic_ai" in sys.modules:  # only a process that drafted with a model can have one
        decision = _classify_model_error(error, retry_after_cap_seconds)
        if decision is not None:
            return decision
    return RetryDecision(False, reason=f"{type(error).__name__} is not transient")


def _classify_model_error(error: BaseException, cap_seconds: float) -> RetryDecision | None:
    """The drafting model's failures, like MultiMail's: a rate limit (within the cap), an
    unavailable or failing provider and a lost connection are retried; a refusal (a bad key, an
    unknown model, an exhausted quota) is not. None: not a model error."""
    from pydantic_ai.exceptions import (
        ModelAPIError,
        ModelConnectionError,
        ModelHTTPError,
        ModelQuotaExceededError,
        ModelRateLimitError,
        ModelServerError,
        ModelUnavailableError,
    )

    if not isinstance(error, ModelAPIError):
        return None
    if isinstance(error, ModelQuotaExceededError):  # often a 429 too (OpenAI's insufficient_quota)
        return RetryDecision(False, reason="the model's account is out of quota or credit")
    status = error.status_code if isinstance(error, ModelHTTPError) else None
    transient = isinstance(
        error, ModelRateLimitError | ModelUnavailableError | ModelServerError | ModelConnectionError
    ) or (status is not None and (status == 429 or status >= 500))
    if not transient:
        return RetryDecision(False, reason=f"the model refused: {type(error).__name__}")
    return _after_waiting(error.retry_after, cap_seconds, f"the model: {type(error).__name__}")


def _after_waiting(retry_after: float | None, cap_seconds: float, reason: str) -> RetryDecision:
    """A transient failure retried after at least its Retry-After, unless that exceeds the cap
    (a monthly quota, say: no retry within reach would succeed)."""
    wait = retry_after or 0.0
    if wait > cap_seconds:
        return RetryDecision(
            False,
            reason=f"{reason}: Retry-After {wait:g} s exceeds retry_after_cap_seconds "
            f"({cap_seconds:g} s)",
        )
    return RetryDecision(True, wait, reason=reason)


def backoff_seconds(
    attempt: int, base_seconds: float, *, rng: random.Random | None = None
) -> float:
    """Exponential backoff with jitter for retry number `attempt` (0 for the first retry)."""
    delay: float = base_seconds * 2**attempt
    spread: float = (rng or random).random()
    return delay * (1 + JITTER * spread)


def retry_delay(
    decision: RetryDecision, attempt: int, base_seconds: float, *, rng: random.Random | None = None
) -> float:
    """How long to wait before retry number `attempt`: the backoff, at least the Retry-After."""
    return max(backoff_seconds(attempt, base_seconds, rng=rng), decision.min_delay_seconds)


#: Whole-flow retries of the mail flows, and the seconds between them: 6 minutes in all.
FLOW_RETRIES = 3
FLOW_RETRY_DELAY_SECONDS = 120
