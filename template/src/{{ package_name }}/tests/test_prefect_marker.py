"""The `slow` marker decides which tests get a Prefect server (see `prefect_only_where_marked`)."""

from __future__ import annotations

import pytest
from prefect import flow


def test_an_unmarked_test_that_would_start_a_prefect_server_is_told_to_mark_itself() -> None:
    @flow
    def nothing() -> None:
        """Any flow run needs a Prefect API."""

    refused = r"starts a Prefect server: mark it `@pytest\.mark\.slow`"
    with pytest.raises(RuntimeError, match=refused):
        nothing()


@pytest.mark.slow
def test_a_marked_test_runs_on_the_sessions_server() -> None:
    @flow
    def answer() -> int:
        return 42

    assert answer() == 42
