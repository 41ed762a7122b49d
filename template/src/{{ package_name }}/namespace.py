"""Every name this project gives to something on a shared Prefect server, derived in one place.

Several projects (several MultiMail accounts) can share one Prefect server or Cloud workspace.
Prefect keys most things by name, so each name here carries the project: `project` in
settings.toml (the project's slug; MULTIMAIL_PROJECT in the environment overrides it, e.g. to
deploy one checkout twice). It is read once, when the package is imported, because a flow's
name is fixed when the flow is defined.

- Flows are `<project>-<flow>` (`my-mail-flows-answer-inbound`). Prefect keeps idempotency keys
  per flow and groups runs by flow, so with the project in the flow's name the run keys, the
  sweeps' queries and the UI's runs are this project's alone.
- Deployments keep the flow's short name (`<project>-answer-inbound/answer-inbound`, and
  `.../local` under `serve`): prefect.yaml names them, `flows/<deployment>.py` defines each flow.
- The answer-inbound work queue, the audit export's Variable, artifact keys, pause keys, the
  draft cache key, event ids and a `<project>` tag on every deployment, run and event carry the
  project too.
  The work pool and the Secret blocks are Copier answers that default to project-named ones.
"""

from __future__ import annotations

import os
import re
import tomllib
from typing import Final

from .settings import SETTINGS_FILE, SettingsError

#: What a project name may be: a slug, as Prefect accepts it in every name it keys by.
PROJECT_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
#: The variable that overrides `project` of settings.toml.
PROJECT_VARIABLE = "MULTIMAIL_PROJECT"


def read_project() -> str:
    """`project` from the environment, else settings.toml; a clear error when it is not a slug."""
    value = os.environ.get(PROJECT_VARIABLE)
    if value is None:
        value = tomllib.loads(SETTINGS_FILE.read_text(encoding="utf-8")).get("project")
    if not isinstance(value, str) or not PROJECT_PATTERN.fullmatch(value):
        raise SettingsError(
            f"project (set in {SETTINGS_FILE.name} or {PROJECT_VARIABLE}) must be a slug of "
            f"lowercase letters, digits and dashes, at most 63 characters (got {value!r})"
        )
    return value


#: This project's namespace on the Prefect server.
PROJECT: Final = read_project()
#: Tag on each deployment (prefect.yaml) and so on each of their runs, and on served ones.
PROJECT_TAG: Final = PROJECT
#: Where `serve` puts its deployments: `<flow>/local`.
SERVED_DEPLOYMENT_NAME: Final = "local"


def flow_name(short: str) -> str:
    """The name of this project's flow `short` on the server: `<project>-<short>`."""
    return f"{PROJECT}-{short}"


ANSWER_INBOUND: Final = "answer-inbound"
RECONCILE_INBOUND: Final = "reconcile-inbound"
EXPIRE_APPROVAL_WAITS: Final = "expire-approval-waits"
STATUS_DIGEST: Final = "status-digest"
EXPORT_AUDIT_LOG: Final = "export-audit-log"
RECEIVE_WEBHOOK: Final = "receive-webhook"


def deployment_name(short: str, *, served: bool = False) -> str:
    """`FLOW/DEPLOYMENT` of deployment `short` of prefect.yaml, or of its `serve` twin."""
    return f"{flow_name(short)}/{SERVED_DEPLOYMENT_NAME if served else short}"


def artifact_key(short: str) -> str:
    """The key of this project's artifact `short` (Prefect keeps one history per key)."""
    return f"{PROJECT}-{short}"


#: The Prefect Variable where the audit export stands.
AUDIT_CURSOR_VARIABLE: Final = f"{PROJECT}-audit-export"
#: What every pause key of this project starts with: the expiry sweep touches no other run.
PAUSE_KEY_PREFIX: Final = f"{PROJECT}-decision-"
#: What every cache key of the draft task starts with (since the draft became a `Draft`: a
#: cached draft of an older version, a plain string, is not read back as one).
DRAFT_KEY_PREFIX: Final = f"{PROJECT}-reply-draft-"
#: The artifact on an answer-inbound run whose reply a model drafted.
DRAFTED: Final = "reply-drafted"
#: The tag on an inbound email whose reply a model drafted: the model's name. The fake's
#: approval page shows it beside the reply.
DRAFTED_BY_TAG: Final = "drafted_by"
#: Label on every event this project emits, so an automation can match one project's events.
EVENT_LABEL: Final = "multimail.project"
