"""Keep secrets out of every log line this process writes: Prefect's, httpx's, uvicorn's, ours.

A filter on one logger misses records of its children and of other libraries, so masking is
installed where every record is born: the log record factory. Once a secret is registered
(`register_secret`, called wherever a key or signing secret is loaded), any record whose
message or formatted exception contains it carries `***` instead, before any handler, Prefect's
API log handler included, sees it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

MASK = "***"
# Shorter values would mask ordinary words; real keys and secrets are far longer.
_MIN_LENGTH = 8

# Longest first, replaced whole under the lock, so a reader never sees it change midway.
_secrets: tuple[str, ...] = ()
_lock = threading.Lock()
_installed = False


def mask(text: str) -> str:
    """`text` with every registered secret replaced by `***`."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def register_secret(value: str) -> None:
    """Mask `value` in all log records from now on."""
    if len(value) < _MIN_LENGTH:
        return
    global _installed, _secrets
    with _lock:
        _secrets = tuple(sorted({*_secrets, value}, key=len, reverse=True))
        if not _installed:
            _install()
            _installed = True


def _install() -> None:
    make_record = logging.getLogRecordFactory()

    def masking_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's error to report
            return record
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[1] is not None:
            text = str(record.exc_info[1])
            if mask(text) != text:
                record.exc_text = mask(logging.Formatter().formatException(record.exc_info))
        return record

    logging.setLogRecordFactory(masking_factory)
