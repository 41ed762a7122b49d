"""Processes of the chaos soak (bench/chaos.py): start, find what they run, kill, restart.

Every long-running piece (the fake, the receiver, the workers, a restarted Prefect server) runs
in its own session with its output appended to a log file in the soak's log folder. A worker is
killed with its whole process tree (SIGKILL to the worker and to every flow-run process it
started, which Prefect may put in sessions of their own): what a lost worker machine does.

Runs inside a generated project's environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _parent_map() -> dict[int, int]:
    """pid -> parent pid of every process visible in /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        parents[int(entry.name)] = int(fields[1])
    return parents


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, grandchildren, ...)."""
    children: dict[int, list[int]] = {}
    for child, parent in _parent_map().items():
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def flow_run_of(pid: int) -> str | None:
    """The flow run a process runs (PREFECT__FLOW_RUN_ID in its environment), if any."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for item in environ.split(b"\0"):
        if item.startswith(b"PREFECT__FLOW_RUN_ID="):
            return item.partition(b"=")[2].decode()
    return None


def exited(pid: int) -> bool:
    """Whether `pid` is gone (or a zombie nobody reaped yet)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> list[int]:
    """Send `sig` to `pid` and every descendant at once; the pids signalled."""
    pids = [pid, *descendants(pid)]
    for target in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, sig)
    return pids


class Service:
    """One long-running command, in its own session, output appended to `log`."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], cwd: Path, log: Path):
        self.name, self.args, self.env, self.cwd, self.log = name, args, env, cwd, log
        self.process: subprocess.Popen[bytes] | None = None
        self.planned_down = False  # stopped on purpose: an exit is not a finding

    def start(self) -> None:
        with self.log.open("ab") as out:
            out.write(f"\n==== {time.strftime('%H:%M:%S')} start {self.name}\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                self.args,
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.planned_down = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> list[int]:
        """Signal the service and its whole tree; marks it down on purpose."""
        self.planned_down = True
        if self.process is None:
            return []
        pids = kill_tree(self.process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=20)
        if self.process.poll() is None:
            pids = kill_tree(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        return pids

    def stop(self) -> None:
        """SIGTERM the tree, then SIGKILL what is left (the end of the soak)."""
        if self.running():
            self.kill(signal.SIGTERM)
        if self.process is not None:
            kill_tree(self.process.pid, signal.SIGKILL)


def wait_http(url: str, timeout: float, service: Service | None = None) -> bool:
    """Until `url` answers 200 (False after `timeout`, or once `service` has exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service is not None and not service.running():
            return False
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2, trust_env=False).status_code == 200:
                return True
        time.sleep(0.3)
    return False


@dataclass
class PrefectServer:
    """The Prefect server bench/chaos.py started on PostgreSQL, described in `state_file`.

    A restart stops it and starts `prefect server start` again on the same port and database,
    with the environment tests/prefect_postgres.py gives it, then writes the new pid back to
    the file so that chaos.py stops the right process at the end.
    """

    state_file: Path
    prefect: Path  # the project's `prefect` executable

    def _state(self) -> dict[str, object]:
        state: dict[str, object] = json.loads(self.state_file.read_text())
        return state

    @property
    def api_url(self) -> str:
        return str(self._state()["api_url"])

    def healthy(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.api_url}/health", timeout=2, trust_env=False).is_success
        return False

    def stop(self, sig: int) -> None:
        pid = int(str(self._state()["server_pid"]))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not exited(pid):
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)

    def start(self, timeout: float = 180.0) -> bool:
        state = self._state()
        root = Path(str(state["root"]))
        port = str(self.api_url).rsplit(":", 1)[1].split("/", 1)[0]
        env = {
            **os.environ,
            "PREFECT_HOME": str(root / "prefect-home"),
            "PREFECT_API_DATABASE_CONNECTION_URL": str(state["database_url"]),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        }
        env.pop("PREFECT_API_URL", None)
        with (root / "prefect-server.log").open("ab") as out:
            out.write(f"\n==== {time.strftime('%H:%M:%S')} restart by the chaos soak\n".encode())
            out.flush()
            server = subprocess.Popen(
                [str(self.prefect), "server", "start", "--host", "127.0.0.1", "--port", port],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.state_file.write_text(json.dumps({**state, "server_pid": server.pid}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.poll() is not None:
                return False
            if self.healthy():
                return True
            time.sleep(0.5)
        return False

    def log_file(self) -> Path:
        return Path(str(self._state()["root"])) / "prefect-server.log"
