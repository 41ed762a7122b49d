"""Serve an ASGI app from a background thread on a local port: the fake MultiMail in tests and
the demo, the webhook receiver in tests."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BackgroundServer:
    """uvicorn in a daemon thread; `base_url` carries the real port once started.

    Only loopback addresses may be bound unless `allow_non_loopback`: what runs here (a fake,
    a test receiver) has no business being reachable from a network by accident.
    """

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        allow_non_loopback: bool = False,
        name: str = "local-server",
        ssl_certfile: str | None = None,
    ) -> None:
        if not allow_non_loopback and not is_loopback(host):
            raise ValueError(
                f"refusing to bind {host!r}: this server is for local use only (127.0.0.1, ::1, "
                "localhost); pass allow_non_loopback=True (--allow-non-loopback) to override"
            )
        self.app = app
        self.host = "127.0.0.1" if host.lower() == "localhost" else host
        self.port = port
        self.name = name
        #: A PEM file holding the private key and the certificate chain: serve HTTPS.
        self.ssl_certfile = ssl_certfile
        self.base_url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> BackgroundServer:
        """Bind, serve in a daemon thread and wait until connections are accepted."""
        if self._server is not None:
            return self
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets whose proto says TCP,
        # and without it every response waits ~40 ms for a delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
            ssl_certfile=self.ssl_certfile,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=self.name, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                self._server = None
                raise RuntimeError(f"{self.name} did not start on {self.host}:{self.port}")
            time.sleep(0.005)
        netloc = f"[{self.host}]" if family == socket.AF_INET6 else self.host
        scheme = "https" if self.ssl_certfile else "http"
        self.base_url = f"{scheme}://{netloc}:{self.port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server = None
            self._thread = None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
