"""`setup` stores the secrets in their Prefect Secret blocks, from the environment or a hidden
prompt, never printing them, and says which variable to fix when Prefect cannot be reached."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.settings import PREFECT_API_URL, temporary_settings
from typer.testing import CliRunner

from ...mail import connection
from ...ops.cli import app
from ...ops.prefect_setup import LIMITED_DEPLOYMENT
from ...ops.serve import deployment_config

# Built at run time: no key-shaped literal in the repository for secret scanners to flag.
API_KEY = "mm_live_" + "5e7" * 8
WEBHOOK_SECRET = "whsec_" + "setup" * 5
MODEL_KEY = "sk-ant-" + "setup" * 6


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """No secret from the environment or a developer's .env; each test names its own blocks."""
    for name in ("MULTIMAIL_API_KEY", "MULTIMAIL_WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    connection.reset()
    yield monkeypatch
    connection.reset()


def unique_blocks(monkeypatch: pytest.MonkeyPatch, suffix: str) -> tuple[str, str]:
    """Block names of this test only: the tests share one Prefect server."""
    names = (f"setup-test-key-{suffix}", f"setup-test-webhook-{suffix}")
    monkeypatch.setenv("MULTIMAIL_API_KEY_BLOCK", names[0])
    monkeypatch.setenv("MULTIMAIL_WEBHOOK_SECRET_BLOCK", names[1])
    connection.reset()
    return names


def stored(block: str) -> str:
    return str(cast(Secret[str], Secret.load(block)).get())


def setup(*args: str, stdin: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["setup", *args], input=stdin)
    return result.exit_code, result.output


@pytest.mark.slow
def test_setup_stores_both_secrets_from_the_environment_idempotently(
    settings_env: pytest.MonkeyPatch,
) -> None:
    key_block, webhook_block = unique_blocks(settings_env, "env")
    settings_env.setenv("MULTIMAIL_API_KEY", API_KEY)
    settings_env.setenv("MULTIMAIL_WEBHOOK_SECRET", WEBHOOK_SECRET)
    connection.reset()

    code, output = setup()
    assert code == 0, output
    assert stored(key_block) == API_KEY
    assert stored(webhook_block) == WEBHOOK_SECRET
    assert output.count("[created]") == 2
    assert "from MULTIMAIL_API_KEY" in output

    code, again = setup()
    assert code == 0, again
    assert again.count("[unchanged]") == 2

    settings_env.setenv("MULTIMAIL_API_KEY", API_KEY + "-rotated")
    connection.reset()
    code, rotated = setup()
    assert code == 0, rotated
    assert stored(key_block) == API_KEY + "-rotated"
    assert "[updated]" in rotated
    for text in (output, again, rotated):
        assert API_KEY not in text
        assert WEBHOOK_SECRET not in text


@pytest.mark.slow
def test_setup_stores_the_drafting_models_key_that_the_agent_then_reads(
    settings_env: pytest.MonkeyPatch,
) -> None:
    """With a model in settings.toml, the provider's key goes to its own block; a run without
    the variable (a worker) reads it from there."""
    unique_blocks(settings_env, "model")
    model_block = "setup-test-model-key"
    settings_env.setenv("MULTIMAIL_API_KEY", API_KEY)
    settings_env.setenv("MULTIMAIL_DRAFTING__MODEL", "anthropic:claude-sonnet-4-5")
    settings_env.setenv("MULTIMAIL_DRAFTING__API_KEY_BLOCK", model_block)
    settings_env.setenv("ANTHROPIC_API_KEY", MODEL_KEY)
    connection.reset()

    code, output = setup(stdin="\n")  # the webhook secret skipped
    assert code == 0, output
    assert f"[created] Secret block {model_block!r}" in output
    assert "from ANTHROPIC_API_KEY" in output
    assert MODEL_KEY not in output
    assert stored(model_block) == MODEL_KEY

    settings_env.delenv("ANTHROPIC_API_KEY")
    resolved = connection.resolve_model_api_key(connection.current_settings())
    assert resolved.get_secret_value() == MODEL_KEY


@pytest.mark.slow
def test_setup_asks_with_a_hidden_prompt_when_the_variables_are_unset(
    settings_env: pytest.MonkeyPatch,
) -> None:
    key_block, webhook_block = unique_blocks(settings_env, "prompt")

    code, output = setup(stdin=f"{API_KEY}\n\n")  # the key typed, the webhook secret skipped
    assert code == 0, output
    assert stored(key_block) == API_KEY
    assert API_KEY not in output  # hidden input is not echoed
    assert "MULTIMAIL_API_KEY is unset" in output
    assert f"[skipped] Secret block {webhook_block!r}" in output
    with pytest.raises(ValueError, match="Unable to find block document"):
        Secret.load(webhook_block)

    code, kept = setup(stdin="\n\n")  # nothing typed: the stored key stays
    assert code == 0, kept
    assert f"[kept] Secret block {key_block!r}" in kept
    assert stored(key_block) == API_KEY


@pytest.mark.slow
def test_setup_refuses_an_empty_key_when_none_is_stored(settings_env: pytest.MonkeyPatch) -> None:
    unique_blocks(settings_env, "empty")
    code, output = setup("--no-webhook-secret", stdin="\n")
    assert code == 1
    assert "set MULTIMAIL_API_KEY" in output


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/api", None])
def test_setup_names_prefect_api_url_when_no_server_answers(
    settings_env: pytest.MonkeyPatch, url: str | None
) -> None:
    settings_env.setenv("MULTIMAIL_API_KEY", API_KEY)
    connection.reset()
    updates = {PREFECT_API_URL: url} if url else {}
    restore = set() if url else {PREFECT_API_URL}
    with temporary_settings(updates=updates, restore_defaults=restore):
        code, output = setup()
    assert code == 1
    assert "PREFECT_API_URL" in output
    assert API_KEY not in output


@pytest.mark.slow
def test_setup_limits_the_answer_inbound_work_queue_once_the_pool_exists(
    settings_env: pytest.MonkeyPatch,
) -> None:
    """answer-inbound's concurrency is its work queue's limit, which Prefect derives from the
    queue's run states (nothing to leak when a process dies or the server restarts)."""
    unique_blocks(settings_env, "queue")
    settings_env.setenv("MULTIMAIL_API_KEY", API_KEY)
    work_pool = deployment_config(LIMITED_DEPLOYMENT)["work_pool"]
    pool, queue = work_pool["name"], work_pool["work_queue_name"]

    def limit(value: int) -> tuple[int, str]:
        settings_env.setenv("MULTIMAIL_ANSWER_CONCURRENCY_LIMIT", str(value))
        connection.reset()
        return setup("--no-webhook-secret")

    code, output = limit(3)
    assert code == 0, output
    assert f"[skipped] work queue {queue!r} of pool {pool!r}: no such work pool" in output
    assert f"prefect work-pool create {pool}" in output

    with get_client(sync_client=True) as prefect:
        prefect.create_work_pool(WorkPoolCreate(name=pool, type="process"), overwrite=True)
        try:
            for value, outcome in ((3, "created"), (3, "unchanged"), (5, "updated")):
                code, output = limit(value)
                assert code == 0, output
                assert f"[{outcome}] work queue {queue!r} of pool {pool!r}: at most {value}" in (
                    output
                )
                found = prefect.read_work_queue_by_name(queue, work_pool_name=pool)
                assert found.concurrency_limit == value
        finally:
            prefect.delete_work_pool(pool)
