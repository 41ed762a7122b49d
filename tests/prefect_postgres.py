"""A Prefect server backed by a real PostgreSQL, started and stopped by the test session.

Debian's `postgresql` package provides the binaries (scripts/lib.sh installs it); the suite
makes a throwaway cluster in a temporary directory on a free loopback port, runs the generated
project's `prefect server start` against it, and stops both at the end. pytest-xdist workers
share the one server: the first to need it starts it, the last to finish stops it (a file lock
and a reference count in the session's shared temporary directory).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

STARTUP_TIMEOUT = 180.0


@dataclass(frozen=True)
class PrefectOnPostgres:
    """Where the server answers, and what to stop at the end."""

    api_url: str
    database_url: str
    root: str
    data_dir: str
    server_pid: int
    pg_bin: str


def postgres_bin() -> Path | None:
    """The directory of initdb/pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<v>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _postgres_tool(pg_bin: Path, tool: str, *args: object) -> list[str]:
    """A PostgreSQL command line; as root, run as the `postgres` user (PostgreSQL refuses root)."""
    command = [str(pg_bin / tool), *map(str, args)]
    return ["runuser", "-u", "postgres", "--", *command] if os.getuid() == 0 else command


def _run(args: list[str], log: Path) -> None:
    with log.open("a") as out:
        done = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, check=False, timeout=120)
    if done.returncode:
        raise RuntimeError(f"`{' '.join(args)}` failed:\n{log.read_text()[-3000:]}")


def start(prefect: Path) -> PrefectOnPostgres:
    """initdb + pg_ctl start + createdb, then `prefect server start` on PostgreSQL."""
    pg_bin = postgres_bin()
    assert pg_bin is not None
    root = Path(tempfile.mkdtemp(prefix="prefect-postgres-"))
    # Our commands' output (written as root) and the server's own log (written by postgres).
    data, log, server_log = root / "data", root / "setup.log", root / "postgres.log"
    if os.getuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    pg_port = free_port()
    tool = functools.partial(_postgres_tool, pg_bin)
    options = f"-p {pg_port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    options += " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    try:
        _run(tool("initdb", "-D", data, "-U", "prefect", "-A", "trust", "-E", "UTF8", "-N"), log)
        _run(tool("pg_ctl", "-D", data, "-o", options, "-l", server_log, "-w", "start"), log)
        _run(tool("createdb", "-h", "127.0.0.1", "-p", pg_port, "-U", "prefect", "prefect"), log)
    except BaseException:
        subprocess.run(tool("pg_ctl", "-D", data, "-m", "immediate", "stop"), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
        raise
    database_url = f"postgresql+asyncpg://prefect@127.0.0.1:{pg_port}/prefect"
    api_port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(root / "prefect-home"),
        "PREFECT_API_DATABASE_CONNECTION_URL": database_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    }
    env.pop("PREFECT_API_URL", None)
    with (root / "prefect-server.log").open("w") as out:
        server = subprocess.Popen(
            [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(api_port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives the xdist worker that started it
        )
    started = PrefectOnPostgres(
        api_url=f"http://127.0.0.1:{api_port}/api",
        database_url=database_url,
        root=str(root),
        data_dir=str(data),
        server_pid=server.pid,
        pg_bin=str(pg_bin),
    )
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            stop(started)
            raise RuntimeError(
                "prefect server exited:\n" + (root / "prefect-server.log").read_text()[-4000:]
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{started.api_url}/health", timeout=2).status_code == 200:
                return started
        time.sleep(0.5)
    stop(started)
    raise RuntimeError(f"prefect server on PostgreSQL did not answer in {STARTUP_TIMEOUT} s")


def _exited(pid: int) -> bool:
    """Whether process `pid` has ended: reaped if this process started it, or a zombie of the
    xdist worker that did (which does not wait for it)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def stop(server: PrefectOnPostgres) -> None:
    """Stop the Prefect server, then PostgreSQL, and remove the cluster."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.server_pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not _exited(server.server_pid):
            time.sleep(0.2)
        os.killpg(server.server_pid, signal.SIGKILL)
    root = Path(server.root)
    stop_postgres = _postgres_tool(Path(server.pg_bin), "pg_ctl", "-D", server.data_dir, "stop")
    subprocess.run(
        [*stop_postgres, "-m", "fast", "-w"], capture_output=True, check=False, timeout=60
    )
    shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def shared_server(shared_dir: Path, prefect: Path) -> Iterator[PrefectOnPostgres]:
    """One server for all xdist workers of this run: started by the first, stopped by the last."""
    state_file, lock = shared_dir / "prefect-postgres.json", shared_dir / "prefect-postgres.lock"
    with _locked(lock):
        state: dict[str, Any] = (
            json.loads(state_file.read_text()) if state_file.exists() else {"users": 0}
        )
        if state["users"] == 0:
            state["server"] = asdict(start(prefect))
        state["users"] += 1
        state_file.write_text(json.dumps(state))
    try:
        yield PrefectOnPostgres(**state["server"])
    finally:
        with _locked(lock):
            state = json.loads(state_file.read_text())
            state["users"] -= 1
            if state["users"] == 0:
                stop(PrefectOnPostgres(**state.pop("server")))
            state_file.write_text(json.dumps(state))


def require_postgres() -> None:
    if postgres_bin() is None:
        pytest.skip(
            "PostgreSQL's binaries (initdb, pg_ctl) are not installed: scripts/test installs "
            "Debian's postgresql package (apt-get install postgresql)"
        )
    if os.getuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: PostgreSQL refuses to run as root")


@pytest.fixture(scope="session")
def prefect_on_postgres(
    installed_project: Path, tmp_path_factory: pytest.TempPathFactory, worker_id: str
) -> Iterator[PrefectOnPostgres]:
    """The session's PostgreSQL-backed Prefect server (import this fixture to use it)."""
    require_postgres()
    base = tmp_path_factory.getbasetemp()
    shared = base if worker_id == "master" else base.parent  # xdist: gw0, gw1 share the parent
    with shared_server(shared, installed_project / ".venv" / "bin" / "prefect") as server:
        yield server


#: Flow run state types after which a run changes no more (the API's `state_type`).
TERMINAL = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})

#: Worker and runner poll intervals in the tests (Prefect's defaults are 10 s each): a new run
#: is picked up within ~1 s instead of ~10 s.
POLL_SECONDS = "1"


def prefect_env(server: PrefectOnPostgres, home: Path, **extra: str) -> dict[str, str]:
    """The environment of a Prefect client (CLI, worker, receiver) of `server`."""
    env = {
        **os.environ,
        "PREFECT_API_URL": server.api_url,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": POLL_SECONDS,
        "PREFECT_RUNNER_POLL_FREQUENCY": POLL_SECONDS,
        "PREFECT_WORKER_PREFETCH_SECONDS": "2",
        "PYTHONUNBUFFERED": "1",
    }
    for secret in ("MULTIMAIL_API_KEY", "MULTIMAIL_WEBHOOK_SECRET"):
        env.pop(secret, None)  # deployed runs read the Secret blocks; a test may set them
    env.update(extra)
    return env


def start_process(
    args: list[str], cwd: Path, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    """A long-running command (a worker, a receiver) in its own process group, output to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGINT the group (a worker cancels its runs), then SIGKILL what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
