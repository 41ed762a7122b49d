"""The tests' Prefect server makes a write wait for SQLite's lock instead of failing it with a 503
(prefect_server.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from prefect import flow, task


class _Retries(logging.Handler):
    """The Prefect client's notes of a request it will make again after a 503."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "retryable status code 503" in message:
            self.messages.append(message)


@pytest.fixture
def client_retries() -> Iterator[_Retries]:
    logger = logging.getLogger("prefect.client")
    handler, level = _Retries(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@task
def step(number: int) -> int:
    return number


@flow
def fan_out(width: int) -> int:
    return sum(step.map(range(width)).result())


@pytest.mark.slow
def test_runs_writing_at_once_get_no_503_and_wait_no_retry(client_retries: _Retries) -> None:
    """Eight flow runs created and moved from four threads at once while the server records their
    task runs: with Prefect's DEFERRED transactions some requests were answered 503 (the database
    locked) and made again 2 s later; here none is."""
    with ThreadPoolExecutor(4) as pool:
        totals = list(pool.map(fan_out, [10] * 8))
    assert totals == [45] * 8
    assert client_retries.messages == []
