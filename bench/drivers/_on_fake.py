"""What the drivers share: a quiet, throwaway Prefect home, and a fake MultiMail on which the
generated project's audiences are provisioned, its key in the environment as the flows read it.

Runs inside a generated project's environment, imported by the drivers beside it.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


def quiet_prefect(home_prefix: str) -> None:
    """Prefect's own logging down to errors, its state in a new temporary PREFECT_HOME."""
    os.environ.update(
        PREFECT_LOGGING_LEVEL="ERROR",
        PREFECT_SERVER_LOGGING_LEVEL="CRITICAL",  # no shutdown noise from the test server
        PREFECT_HOME=tempfile.mkdtemp(prefix=home_prefix),
    )


@dataclass(frozen=True)
class OnFake:
    package: str
    fake: Any
    settings: Any
    client: Any
    states: list[Any]  # provision.MailboxState of each audience

    def module(self, name: str) -> Any:
        """A module of the generated package (`flows.answer_inbound`, `inbound.receiver`, ...)."""
        return importlib.import_module(f"{self.package}.{name}")

    def client_with(self, key: str) -> Any:
        """A new MultiMail client on the fake with `key` and the client's own defaults (not the
        MULTIMAIL_* settings a driver may have shrunk for its flows)."""
        from pydantic import SecretStr

        client_module = self.module("multimail.client")
        return client_module.MultiMailClient(self.fake.base_url, SecretStr(key))

    def operator_client(self) -> Any:
        """A MultiMail client with the oversight scope: the human who decides."""
        return self.client_with(self.fake.create_key(["oversight"]))


@contextmanager
def provisioned_fake(package: str, **fake_options: Any) -> Iterator[OnFake]:
    """A running fake with one mailbox per audience, in its mode; MULTIMAIL_* point at it."""
    fake_module = importlib.import_module(f"{package}.fake")
    credentials = importlib.import_module(f"{package}.mail.connection")
    operator = importlib.import_module(f"{package}.fake.operator")
    with fake_module.FakeMultiMail(**fake_options) as fake:
        key = fake.create_key(["read", "send", "admin"])
        os.environ.update(MULTIMAIL_API_URL=fake.base_url, MULTIMAIL_API_KEY=key)
        credentials.reset()
        settings = credentials.current_settings()
        client = credentials.shared_client()
        states = operator.provision_on_fake(fake, client, settings)
        yield OnFake(package, fake, settings, client, states)
