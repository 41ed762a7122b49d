"""Where the MultiMail API key comes from, and the one pooled client built with it.

Locally the key is MULTIMAIL_API_KEY (environment or `.env`); in a deployed run it is
MULTIMAIL_API_KEY from the run's environment if set, else the Prefect Secret block named by
`api_key_block` (a `.env` in the working directory is ignored there). It is loaded at run time
inside the task, so it is never a flow parameter, a deployment variable or a task result.
"""

from __future__ import annotations

import os
from functools import cache
from typing import cast

from dotenv import dotenv_values
from pydantic import SecretStr

from ..multimail.client import MultiMailClient, MultiMailError
from ..settings import Settings, load_settings
from .redaction import register_secret


class MissingSecretError(MultiMailError):
    """Neither the environment variable nor the Prefect Secret block holds the secret."""


def _resolve(from_env: SecretStr | None, env_name: str, block_name: str, what: str) -> SecretStr:
    """`from_env` if set, else the Prefect Secret block `block_name`; masked in logs either way."""
    if from_env is not None and from_env.get_secret_value():
        register_secret(from_env.get_secret_value())
        return from_env
    from prefect.blocks.system import Secret  # imported late: loading needs a Prefect API

    try:
        # `_sync`: inside an async flow (a sweep reading mail from a worker thread) Prefect would
        # otherwise see an async context and hand back a coroutine.
        secret = cast(Secret[str], Secret.load(block_name, _sync=True))  # type: ignore[call-arg]
    except ValueError as error:  # Prefect's answer when no block has that name
        raise MissingSecretError(
            f"no {what}: set {env_name} (locally, e.g. in .env), or create the Prefect Secret "
            f"block {block_name!r} for deployments (the project's `setup` command stores it)"
        ) from error
    except Exception as error:  # the Prefect API itself could not be asked
        raise MissingSecretError(
            f"no {what} in {env_name}, and the Prefect Secret block {block_name!r} could not be "
            f"loaded: {error}. Check PREFECT_API_URL (is the Prefect server reachable?), or set "
            f"{env_name} instead"
        ) from error
    value = str(secret.get())
    register_secret(value)
    return SecretStr(value)


def resolve_api_key(settings: Settings) -> SecretStr:
    """The key from MULTIMAIL_API_KEY, else from the Prefect Secret block `api_key_block`."""
    return _resolve(
        settings.api_key, "MULTIMAIL_API_KEY", settings.api_key_block, "MultiMail API key"
    )


def resolve_webhook_secret(settings: Settings) -> SecretStr:
    """The signing secret from MULTIMAIL_WEBHOOK_SECRET, else its Prefect Secret block."""
    return _resolve(
        settings.webhook_secret,
        "MULTIMAIL_WEBHOOK_SECRET",
        settings.webhook_secret_block,
        "webhook signing secret",
    )


def model_key_from_env(settings: Settings, *, read_env_file: bool = True) -> SecretStr | None:
    """The drafting model provider's key from its variable (`drafting.key_variable`, e.g.
    OPENAI_API_KEY), else from `.env` (`read_env_file`), else None."""
    variable = settings.drafting.key_variable
    value = os.environ.get(variable)
    if not value and read_env_file:
        value = dotenv_values(".env").get(variable)
    return SecretStr(value) if value else None


def resolve_model_api_key(settings: Settings) -> SecretStr:
    """The drafting model provider's key: its variable (locally also from `.env`), else the
    Prefect Secret block `drafting.api_key_block`. Masked in logs like the MultiMail key."""
    return _resolve(
        model_key_from_env(settings, read_env_file=not in_deployed_run()),
        settings.drafting.key_variable,
        settings.drafting.api_key_block,
        f"API key for the drafting model {settings.drafting.model}",
    )


def in_deployed_run() -> bool:
    """Whether this code runs inside a flow run of a deployment (a worker or `serve`).

    Asked on every settings read, so it must not call the API: the flow run in context says
    it. (Prefect 3.9's `prefect.runtime.deployment.id` misses that and reads the flow run from
    the API each time, about 80 ms a task.)
    """
    from prefect.context import FlowRunContext  # imported late: only asked when settings load

    context = FlowRunContext.get()
    if context is not None and context.flow_run is not None:
        return context.flow_run.deployment_id is not None
    from prefect.runtime import deployment  # outside a flow: from PREFECT__FLOW_RUN_ID, if any

    return deployment.id is not None


@cache
def _settings(read_env_file: bool) -> Settings:
    return load_settings(read_env_file=read_env_file)


def current_settings() -> Settings:
    """The settings, read on first use (never at import) and then kept (see `reset`).

    Inside a deployed run a `.env` in the working directory is ignored: the key comes from the
    environment the deployment sets, else the Prefect Secret block, never from a developer's
    personal `.env` on the machine that runs the worker.
    """
    return _settings(not in_deployed_run())


@cache
def shared_client() -> MultiMailClient:
    """One pooled client per process, so every task reuses its connections."""
    settings = current_settings()
    return MultiMailClient(
        settings.api_url, resolve_api_key(settings), timeout=settings.timeout_seconds
    )


def reset() -> None:
    """Forget the cached settings and client (after the environment changed, e.g. in tests)."""
    if shared_client.cache_info().currsize:
        shared_client().close()
    shared_client.cache_clear()
    _settings.cache_clear()
