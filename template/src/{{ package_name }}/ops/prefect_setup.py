"""`setup`: store the MultiMail secrets (and a drafting model's key) in the Prefect Secret
blocks that deployed runs read, and limit the answer-inbound work queue.

Each value comes from its environment variable (or the git-ignored `.env`) or, when that is
unset, from a hidden prompt; no value is ever printed. Saving overwrites the block, so running
setup again with the same values changes nothing, and with new values rotates them. The block
names come from settings (`api_key_block`, `webhook_secret_block`), the same ones the flows and
the receiver load at run time (see `mail/connection.py`).

answer-inbound's concurrency is the limit of its own work queue (prefect.yaml names it; the
limit is `answer_concurrency_limit` in settings.toml): Prefect derives a queue's free slots from
its runs' states, so nothing stays held when a process dies or the Prefect server restarts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, cast

from pydantic import SecretStr

from ..mail.connection import model_key_from_env
from ..namespace import ANSWER_INBOUND
from ..settings import Settings

SaveOutcome = Literal["created", "updated", "unchanged", "kept", "skipped"]
#: The deployment whose work queue `setup` limits.
LIMITED_DEPLOYMENT = ANSWER_INBOUND


class SetupError(RuntimeError):
    """setup cannot go on; the message says what to do."""


@dataclass(frozen=True)
class SecretSlot:
    """One secret: where it comes from and the block it goes to."""

    what: str
    variable: str
    block: str
    from_env: SecretStr | None
    required: bool
    hint: str


def secret_slots(settings: Settings, *, webhook_secret: bool = True) -> list[SecretSlot]:
    slots = [
        SecretSlot(
            "MultiMail API key",
            "MULTIMAIL_API_KEY",
            settings.api_key_block,
            settings.api_key,
            required=True,
            hint="the flows cannot call MultiMail without it",
        )
    ]
    if webhook_secret:
        slots.append(
            SecretSlot(
                "webhook signing secret",
                "MULTIMAIL_WEBHOOK_SECRET",
                settings.webhook_secret_block,
                settings.webhook_secret,
                required=False,
                hint="`provision --webhook-url` stores it when it subscribes the receiver",
            )
        )
    drafting = settings.drafting
    if drafting.enabled:
        slots.append(
            SecretSlot(
                f"API key of the drafting model {drafting.model}",
                drafting.key_variable,
                drafting.api_key_block,
                model_key_from_env(settings),
                required=False,
                hint="answer-inbound cannot draft with the model without it",
            )
        )
    return slots


def check_prefect_api() -> str:
    """The URL of the Prefect API the blocks go to, or SetupError naming PREFECT_API_URL."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise SetupError(
            "PREFECT_API_URL is not set. setup stores the secrets on the Prefect server your "
            "workers use: start one (`prefect server start`) and point PREFECT_API_URL at its "
            "API, e.g. `export PREFECT_API_URL=http://127.0.0.1:4200/api`."
        )
    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
    if error is not None:
        raise SetupError(
            f"no Prefect server answers at PREFECT_API_URL={url} ({type(error).__name__}: "
            f"{error}). Start it, or set PREFECT_API_URL to the API of the server your workers use."
        )
    return str(url)


def _current_value(block: str) -> str | None:
    from prefect.blocks.system import Secret

    try:
        return str(cast(Secret[str], Secret.load(block)).get())
    except ValueError:  # Prefect's answer when no block has that name
        return None


def save_secret(block: str, value: SecretStr) -> SaveOutcome:
    """Create or overwrite the Secret block `block`; `unchanged` when it already holds `value`."""
    from prefect.blocks.system import Secret

    current = _current_value(block)
    if current == value.get_secret_value():
        return "unchanged"
    Secret(value=value.get_secret_value()).save(block, overwrite=True)
    return "created" if current is None else "updated"


def setup_secrets(
    settings: Settings,
    *,
    ask: Callable[[str], str],
    echo: Callable[[str], None],
    webhook_secret: bool = True,
) -> dict[str, SaveOutcome]:
    """Store each secret from its variable or `ask` (a hidden prompt; empty keeps the block).

    Returns the outcome per block name. Raises SetupError when Prefect is unreachable or a
    required secret is neither set, typed, nor already stored.
    """
    url = check_prefect_api()
    echo(f"Prefect API: {url}")
    outcomes: dict[str, SaveOutcome] = {}
    for slot in secret_slots(settings, webhook_secret=webhook_secret):
        value, source = slot.from_env, slot.variable
        if value is None or not value.get_secret_value():
            stored = _current_value(slot.block) is not None
            keep = "keep the stored one" if stored else f"skip; {slot.hint}"
            if slot.required and not stored:
                keep = "required"
            typed = ask(f"{slot.what} ({slot.variable} is unset; empty to {keep})").strip()
            value, source = SecretStr(typed), "the prompt"
            if not typed:
                if slot.required and not stored:
                    raise SetupError(
                        f"no {slot.what}: set {slot.variable} (or put it in .env) or type it at "
                        f"the prompt; {slot.hint}"
                    )
                skipped: SaveOutcome = "kept" if stored else "skipped"
                outcomes[slot.block] = skipped
                echo(f"[{skipped}] Secret block {slot.block!r}: {slot.what} not changed")
                continue
        outcome = save_secret(slot.block, value)
        outcomes[slot.block] = outcome
        echo(f"[{outcome}] Secret block {slot.block!r}: {slot.what} from {source}")
    return outcomes


def limit_answer_queue(settings: Settings, *, echo: Callable[[str], None]) -> SaveOutcome:
    """Create or update answer-inbound's work queue with `answer_concurrency_limit`.

    `skipped` (with what to do) when prefect.yaml's work pool does not exist yet: `serve` needs
    none, and `prefect deploy` would create the queue without a limit, so run setup again once
    the pool exists.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from .serve import deployment_config

    try:
        work_pool = deployment_config(LIMITED_DEPLOYMENT).get("work_pool") or {}
    except (FileNotFoundError, LookupError) as error:
        echo(f"[skipped] the {LIMITED_DEPLOYMENT} work queue's limit: {error}")
        return "skipped"
    pool, queue = str(work_pool.get("name")), str(work_pool.get("work_queue_name") or "default")
    limit = settings.answer_concurrency_limit
    what = f"work queue {queue!r} of pool {pool!r}"
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            echo(
                f"[skipped] {what}: no such work pool yet (`serve` needs none). To deploy, "
                f"create it (`prefect work-pool create {pool} --type ...`), then run setup again "
                f"to limit {LIMITED_DEPLOYMENT} to {limit} runs at once"
            )
            return "skipped"
        try:
            existing = client.read_work_queue_by_name(queue, work_pool_name=pool)
        except ObjectNotFound:
            client.create_work_queue(name=queue, work_pool_name=pool, concurrency_limit=limit)
            outcome: SaveOutcome = "created"
        else:
            outcome = "unchanged"
            if existing.concurrency_limit != limit:
                client.update_work_queue(existing.id, concurrency_limit=limit)
                outcome = "updated"
    echo(f"[{outcome}] {what}: at most {limit} {LIMITED_DEPLOYMENT} runs at once")
    return outcome
