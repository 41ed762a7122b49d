"""`receiver serve` through Prefect outages, as a user runs it: its own process, the secrets in
Prefect Secret blocks, the real Prefect test server behind a loopback port that the test can
shut (connections refused, as when the server is down), the fake MultiMail for email tags.

It starts and answers /healthz while Prefect is down, answers 503 (never 500) to what it cannot
verify or act on yet, and acts on the same delivery once Prefect is back.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import httpx
import pytest
from prefect import flow
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.settings import PREFECT_API_URL
from prefect.states import Suspended
from pydantic import SecretStr

from ...fake import FakeMultiMail, sign
from ...inbound.receiver import SIGNATURE_HEADER
from ...multimail.client import MultiMailClient
from ...multimail.provision import MailboxState
from ...oversight.approvals import pause_key, waiter_tag

pytestmark = pytest.mark.slow

SIGNING_SECRET = "whsec_" + "0c" * 16


class Gate:
    """A loopback port in front of `target`. Shut (as it starts), it refuses connections, as a
    stopped server's port does; open, it forwards each connection to `target`."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._listener = self._bind(0)
        self.port = int(self._listener.getsockname()[1])
        self._open = threading.Event()
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._acceptor: threading.Thread | None = None

    @staticmethod
    def _bind(port: int) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))  # bound, not listening: connecting is refused
        return sock

    def open(self) -> None:
        self._listener.listen()
        self._listener.settimeout(0.05)
        self._open.set()
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def shut(self) -> None:
        """Refuse new connections and cut the open ones, as a server going down does."""
        self._open.clear()
        if self._acceptor is not None:
            self._acceptor.join()
        self._listener.close()
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._listener = self._bind(self.port)

    def _accept(self) -> None:
        while self._open.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            client.settimeout(None)
            upstream = socket.create_connection(self._target)
            with self._lock:
                self._connections += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


@pytest.fixture
def prefect_gate() -> Iterator[Gate]:
    api = urlsplit(str(PREFECT_API_URL.value()))
    gate = Gate((api.hostname or "127.0.0.1", api.port or 80))
    yield gate
    gate.shut()
    gate._listener.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def _receiver_serve(cwd: Path, env: dict[str, str]) -> Iterator[tuple[str, Path]]:
    """`<project> receiver serve` in its own process; yields its base URL and its log file."""
    package = __name__.split(".")[0]
    port = _free_port()
    log = cwd / "receiver.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", f"{package}", "receiver", "serve", "--port", str(port)],
            cwd=cwd,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"`receiver serve` exited: {log.read_text(errors='replace')[-4000:]}")
            try:
                if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-4000:]
            time.sleep(0.2)
        yield base_url, log
    finally:
        process.terminate()
        process.wait(timeout=20)


@flow
def waiting() -> None:
    """Stands for an answer-inbound run suspended on a decision."""


async def _suspended_run(email_id: str) -> UUID:
    """A run of a deployment, suspended on the decision about `email_id` (nothing serves it:
    resumed, it waits as scheduled)."""
    async with get_client() as prefect:
        flow_id = await prefect.create_flow(waiting)
        deployment = await prefect.create_deployment(flow_id=flow_id, name="outage-test")
        run = await prefect.create_flow_run_from_deployment(deployment)
        suspended: Any = Suspended(timeout_seconds=3600, pause_key=pause_key(email_id))
        await prefect.set_flow_run_state(run.id, suspended, force=True)
        return run.id


async def _state_type(run_id: UUID) -> StateType | None:
    async with get_client() as prefect:
        run = await prefect.read_flow_run(run_id)
    return run.state.type if run.state else None


def _waiting_email(
    fake: FakeMultiMail, client: MultiMailClient, state: MailboxState
) -> tuple[str, UUID]:
    """An email of `state`'s mailbox and the run suspended on it, named by the email's tag."""
    email_id = fake.deliver_inbound(
        to=state.address, sender="bob@example.com", subject="Hi", markdown="Hello"
    )
    run_id = asyncio.run(_suspended_run(email_id))
    client.set_tags(state.mailbox_id, email_id, {waiter_tag(run_id): pause_key(email_id)})
    return email_id, run_id


def _decision(delivery_id: str, email_id: str, mailbox_id: str) -> bytes:
    """A decision delivery as MultiMail's published example has it: no tags."""
    payload = {
        "event": "oversight.approved",
        "id": delivery_id,
        "timestamp": "2026-11-25T10:00:00Z",
        "data": {"email_id": email_id, "mailbox_id": mailbox_id},
    }
    return json.dumps(payload).encode()


def _post(base_url: str, body: bytes, signed_with: str = SIGNING_SECRET) -> httpx.Response:
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(signed_with, body)}
    return httpx.post(f"{base_url}/multimail/webhook", content=body, headers=headers, timeout=30)


def test_the_receiver_starts_while_prefect_is_down_and_acts_once_it_is_back(
    mail_env: list[MailboxState],
    fake: FakeMultiMail,
    client: MultiMailClient,
    app_key: SecretStr,
    prefect_gate: Gate,
    tmp_path: Path,
) -> None:
    blocks = {"api_key_block": "outage-test-api-key", "webhook_secret_block": "outage-test-whsec"}
    Secret(value=app_key.get_secret_value()).save(blocks["api_key_block"], overwrite=True)
    Secret(value=SIGNING_SECRET).save(blocks["webhook_secret_block"], overwrite=True)
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("MULTIMAIL_API_KEY", "MULTIMAIL_WEBHOOK_SECRET")
    }
    env.update(
        PREFECT_API_URL=f"http://127.0.0.1:{prefect_gate.port}/api",
        MULTIMAIL_API_KEY_BLOCK=blocks["api_key_block"],
        MULTIMAIL_WEBHOOK_SECRET_BLOCK=blocks["webhook_secret_block"],
    )
    state = mail_env[0]
    (first_email, first), (second_email, second) = (
        _waiting_email(fake, client, state) for _ in range(2)
    )

    with _receiver_serve(tmp_path, env) as (base_url, log):  # Prefect is down: it starts anyway
        started = log.read_text()
        assert "loaded on the first delivery" in started
        assert repr(blocks["webhook_secret_block"]) in started

        body = _decision("dlv-first", first_email, state.mailbox_id)
        unverifiable = _post(base_url, body)
        assert unverifiable.status_code == 503  # the secret is in Prefect: MultiMail retries
        assert "signing secret" in unverifiable.json()["error"]

        prefect_gate.open()  # Prefect is back: the retry is verified and acted on
        assert _post(base_url, body, "whsec_forged").status_code == 401
        handled = _post(base_url, body)
        assert handled.status_code == 200, handled.text
        assert handled.json()["flow_runs"] == {str(first): "resumed"}
        assert asyncio.run(_state_type(first)) != StateType.PAUSED

        prefect_gate.shut()  # down again, with the secret and key loaded: the resume fails
        body = _decision("dlv-second", second_email, state.mailbox_id)
        refused = _post(base_url, body)
        assert refused.status_code == 503
        assert "Prefect" in refused.json()["error"]
        assert asyncio.run(_state_type(second)) == StateType.PAUSED

        prefect_gate.open()  # MultiMail's retry of that delivery: acted on, not a duplicate
        retried = _post(base_url, body)
        assert retried.status_code == 200, retried.text
        assert retried.json()["flow_runs"] == {str(second): "resumed"}
        assert asyncio.run(_state_type(second)) != StateType.PAUSED

    written = log.read_text()
    assert "loaded the webhook signing secret" in written
    assert SIGNING_SECRET not in written
    assert app_key.get_secret_value() not in written
