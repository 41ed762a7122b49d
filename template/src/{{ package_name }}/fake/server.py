"""Run the fake in a background thread with uvicorn, for tests, the demo and the tutorial."""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from .app import DroppedResponse, create_app
from .background import BackgroundServer
from .state import ApiError, FakeState


class _HideDroppedResponses(logging.Filter):
    """Dropped responses are deliberate (fault injection); uvicorn need not log a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], DroppedResponse))


_FILTER = _HideDroppedResponses()


class FakeMultiMail:
    """A running fake MultiMail server plus shortcuts into its state.

    Use it as a context manager (`with FakeMultiMail() as fake: ...`); `base_url` carries the
    real port once started. Only loopback addresses may be bound unless `allow_non_loopback`:
    the fake has no real security and must not be reachable from a network by accident.

    With `tls=True` it serves HTTPS with a certificate issued at start by a throwaway CA
    (`trustme`); `ca_file` is that CA's PEM. Clients on httpx trust it when `SSL_CERT_FILE`
    names it (set before the client is built). Plain HTTP stays the default.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        allow_non_loopback: bool = False,
        scan_delay: float = 0.0,
        webhook_backoff: float = 1.0,
        webhook_timeout: float = 5.0,
        tls: bool = False,
    ) -> None:
        self.state = FakeState(
            scan_delay=scan_delay, webhook_backoff=webhook_backoff, webhook_timeout=webhook_timeout
        )
        self.app = create_app(self.state)
        self._tls_dir: tempfile.TemporaryDirectory[str] | None = None
        self._server_pem = b""
        #: The PEM of the CA that signed the server's certificate (TLS mode only).
        self.ca_file: Path | None = None
        self._server = BackgroundServer(
            self.app,
            host,
            port,
            allow_non_loopback=allow_non_loopback,
            name="fake-multimail",
            ssl_certfile=self._issue_certificate(host) if tls else None,
        )
        self._stop_ticking = threading.Event()
        self._ticker: threading.Thread | None = None

    def _issue_certificate(self, host: str) -> str:
        """Make a CA and a server certificate for loopback (and `host`); where uvicorn reads it.

        Only the CA's certificate stays on disk (`ca_file`); the server's key and certificate
        are written just for the moment uvicorn loads them in `start`.
        """
        import trustme  # imported late: only TLS mode needs it (and its cryptography)

        # Removed when the process exits (the CA file must outlive `stop` for a restart).
        self._tls_dir = tempfile.TemporaryDirectory(prefix="fake-multimail-tls-")
        folder = Path(self._tls_dir.name)
        ca = trustme.CA(organization_name="Fake MultiMail (local testing only)")
        names = dict.fromkeys(["127.0.0.1", "::1", "localhost", host])
        self._server_pem = ca.issue_cert(*names).private_key_and_cert_chain_pem.bytes()
        self.ca_file = folder / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        return str(folder / "server.pem")

    @property
    def base_url(self) -> str:
        """`http(s)://127.0.0.1:<port>` (no trailing slash, no /v1), once started."""
        return self._server.base_url

    @property
    def port(self) -> int:
        """The bound port (the free one picked for port 0, once started)."""
        return self._server.port

    def start(self) -> FakeMultiMail:
        """Bind, start serving in a daemon thread and wait until connections are accepted."""
        logging.getLogger("uvicorn.error").addFilter(_FILTER)
        key_file = Path(self._server.ssl_certfile) if self._server.ssl_certfile else None
        if key_file is not None:
            key_file.touch(mode=0o600)
            key_file.write_bytes(self._server_pem)
        try:
            self._server.start()
        finally:
            if key_file is not None:
                key_file.unlink()
        if self._ticker is None:
            self._stop_ticking.clear()
            self._ticker = threading.Thread(
                target=self._tick, name="fake-multimail-clock", daemon=True
            )
            self._ticker.start()
        return self

    def _tick(self) -> None:
        """Apply due transitions (and so fire their webhooks) even when no request comes in."""
        while not self._stop_ticking.wait(0.05):
            self.state.tick()

    def stop(self) -> None:
        self._stop_ticking.set()
        if self._ticker is not None:
            self._ticker.join(timeout=1)
            self._ticker = None
        self._server.stop()
        self.state.close()

    def __enter__(self) -> FakeMultiMail:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---------------------------------------------------------------- shortcuts into the state

    def create_key(self, scopes: list[str], name: str | None = None) -> str:
        """Create an API key with `scopes` and return the raw key (`mm_live_...`)."""
        try:
            _, raw = self.state.create_key(scopes, name)
        except ApiError as exc:
            raise ValueError(exc.message) from None
        return raw

    def deliver_inbound(
        self,
        *,
        to: str,
        sender: str,
        subject: str,
        markdown: str,
        in_reply_to: str | None = None,
    ) -> str:
        """Deliver an email from outside to a mailbox (address or id); returns its id.

        Raises `ValueError` for an unknown mailbox or `in_reply_to`, or a malformed sender.
        """
        try:
            result = self.state.deliver_inbound(
                to=to, sender=sender, subject=subject, markdown=markdown, in_reply_to=in_reply_to
            )
        except ApiError as exc:
            raise ValueError(exc.message) from None
        email_id: str = result["email_id"]
        return email_id

    def operator_inbox(self) -> list[dict[str, Any]]:
        """What the operator received: upgrade codes, approval notices, monitored copies."""
        return self.state.operator_inbox()

    def reset(self) -> None:
        self.state.reset()
