"""The generated project's tutorial (docs/tutorial.md), run as written.

The test renders the tutorial, extracts its ```shell blocks in order and runs them: the blocks of
the first terminal in one bash (so `cd` and `export` carry over, as they do for a reader), each
block marked `# in another terminal; wait for: TEXT` as a process of its own started from the
tutorial's starting directory with none of the first terminal's exports (as a new terminal
would be), ready once it printed TEXT and its `--port` accepts connections. What the test
changes, and only that: the ports (8025, 4200, 8026 become free ones), `uvx copier copy` runs
this working tree's template with `--defaults --vcs-ref=HEAD`, HOME is a temporary directory
(so Prefect's ~/.prefect is one; uv's cache and interpreters stay the machine's), and output is
unbuffered. The human step (clicking Approve) is the
tutorial's documented alternative, a curl to the page's form; headless Chromium photographs the
approval page and the Prefect UI's flow-run page on the way. Set TUTORIAL_SCREENSHOTS to a
directory (scripts/refresh-tutorial-screenshots uses template/docs/images) to keep them.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from .answers import DEFAULT, THREE_AUDIENCES_DOCKER, Answers
from .chromium import CHROMIUM, launched_chromium
from .conftest import REPO, Render, uv

SHELL_FENCE = re.compile(r"^```shell\n(.*?)^```", re.MULTILINE | re.DOTALL)
BACKGROUND = re.compile(r"\A# in another terminal; wait for: (.+)\n")
#: The ports the tutorial names: the fake, the Prefect server, the receiver.
TUTORIAL_PORTS = (8025, 4200, 8026)
DONE = "__tutorial_block_done__"


@dataclass(frozen=True)
class Block:
    code: str
    ready: str | None  # the text a background block prints once it serves; None: foreground


def shell_blocks(markdown: str) -> list[Block]:
    blocks = []
    for code in SHELL_FENCE.findall(markdown):
        marker = BACKGROUND.match(code)
        blocks.append(Block(code, marker[1].strip() if marker else None))
    return blocks


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Terminal:
    """The reader's first terminal: one bash; each block's output, failing on its first error."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.transcript: list[str] = []  # every block and its output, for a failure's post-mortem
        threading.Thread(target=self._read, daemon=True).start()
        self.send("set -eo pipefail")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def send(self, code: str, timeout: float = 300) -> str:
        assert self.process.stdin is not None
        # Nothing in a block may read the lines that follow it from this shell's stdin.
        self.process.stdin.write(f"{{\n{code}\n}} </dev/null\necho {DONE}\n")
        self.process.stdin.flush()
        output: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            except queue.Empty:
                shown = "".join(output)[-6000:]
                pytest.fail(f"timed out after {timeout}s in:\n{code}\n--- output\n{shown}")
            if line is None:
                pytest.fail(
                    f"this block failed (exit {self.process.wait()}):\n{code}\n--- output\n"
                    + "".join(output)[-6000:]
                )
            if line.strip() == DONE:
                self.transcript.append(f"$ {code}\n{''.join(output)}")
                return "".join(output)
            output.append(line)

    def close(self) -> None:
        stop(self.process)


class Background:
    """A block run in another terminal, until the end of the test."""

    def __init__(self, block: Block, code: str, cwd: Path, env: dict[str, str]) -> None:
        self.block = block
        self.process = subprocess.Popen(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", code],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.output: list[str] = []
        self.seen = threading.Event()
        found = re.search(r"--port (\d+)", code)
        self.port = int(found[1]) if found else None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        assert self.block.ready is not None
        for line in self.process.stdout:
            self.output.append(line)
            if self.block.ready in line:
                self.seen.set()

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not self.seen.wait(0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"`{self.block.code.strip()}` never printed {self.block.ready!r}:\n"
                    + "".join(self.output)[-6000:]
                )
        while self.port is not None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"nothing listens on {self.port}:\n{''.join(self.output)}")
                time.sleep(0.2)


def stop(process: subprocess.Popen[str]) -> None:
    """Ctrl+C, as the tutorial says, to the whole process group; then firmer."""
    if process.poll() is not None:
        return
    for sig, grace in ((signal.SIGINT, 15), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        if os.environ.get("TUTORIAL_SCREENSHOTS"):
            pytest.fail("TUTORIAL_SCREENSHOTS is set but there is no Chromium to take them")
        yield None
        return
    with launched_chromium() as launched:
        yield launched


def screenshot(browser: Any, url: str, path: Path, *wait_for: str) -> None:
    """A 1280 px wide screenshot of `url` once each of `wait_for` shows; kept where asked."""
    if browser is None:
        return
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    try:
        page.goto(url, wait_until="load", timeout=60_000)
        for text in wait_for:
            page.get_by_text(text).first.wait_for(timeout=60_000)
        page.wait_for_timeout(1000)  # let the last pieces render (the UI streams, never idles)
        page.screenshot(path=str(path))
    finally:
        page.close()
    keep = os.environ.get("TUTORIAL_SCREENSHOTS")
    if keep:
        shutil.copy(path, Path(keep) / path.name)


def wait_for_pending_approval(fake_url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while 'action="/_fake/approvals/' not in httpx.get(f"{fake_url}/_fake/approvals").text:
        if time.monotonic() > deadline:
            pytest.fail("no reply reached the approval page")
        time.sleep(0.5)


def tutorial_env(tmp_path: Path, prefect_port: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("MULTIMAIL_", "PREFECT_", "COPIER_", "PYTEST_"))
        # This test's own virtual environment and uv run nesting are no reader's.
        and name not in ("VIRTUAL_ENV", "UV_RUN_RECURSION_DEPTH")
    }
    home = tmp_path / "user-home"  # a reader's ~: Prefect keeps ~/.prefect there
    home.mkdir()
    env.update(
        HOME=str(home),
        # The UI asks the API at the port it serves on only when told (else 4200, the default).
        PREFECT_UI_API_URL=f"http://127.0.0.1:{prefect_port}/api",
        # uv's cache and interpreters stay the machine's: nothing is downloaded again.
        UV_CACHE_DIR=subprocess.run(
            [uv(), "cache", "dir"], capture_output=True, text=True
        ).stdout.strip(),
        UV_PYTHON_INSTALL_DIR=subprocess.run(
            [uv(), "python", "dir"], capture_output=True, text=True
        ).stdout.strip(),
        PATH=f"{Path(uv()).parent}{os.pathsep}{env.get('PATH', '')}",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONUNBUFFERED="1",
        UV_PYTHON_DOWNLOADS="never",
        # The demo's temporary server migrates a fresh database first: slow on 2 busy cores.
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90",
    )
    return env


def test_every_command_of_the_tutorial_is_in_a_block_the_test_runs(render: Render) -> None:
    """Commands go in ```shell blocks (run below); no other fence may hold any."""
    tutorial = (render(DEFAULT) / "docs" / "tutorial.md").read_text()
    fences = re.findall(r"^```(\w*)$", tutorial, re.MULTILINE)
    assert set(fences[::2]) == {"shell"}, fences
    for name in ("approval-page.png", "flow-run.png"):
        assert f"(images/{name})" in tutorial
        assert (REPO / "template" / "docs" / "images" / name).stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.parametrize(
    "answers",
    [
        pytest.param(DEFAULT, id="default"),
        # Replies not gated (the other branch of each step) and a docker pool (served locally).
        pytest.param(THREE_AUDIENCES_DOCKER, id="three-audiences-docker"),
    ],
)
def test_the_tutorial_runs_as_written(
    answers: Answers, render: Render, tmp_path: Path, browser: Any
) -> None:
    rendered = render(answers, "rendered")
    tutorial = (rendered / "docs" / "tutorial.md").read_text()
    answers_file = tmp_path / "answers.yml"
    answers_file.write_text(json.dumps(answers))  # JSON is YAML
    blocks = shell_blocks(tutorial)
    assert len(blocks) >= 15
    ports = {str(port): str(free_port()) for port in TUTORIAL_PORTS}
    fake_url, prefect_url = f"http://127.0.0.1:{ports['8025']}", f"http://127.0.0.1:{ports['4200']}"
    start = tmp_path / "home"
    start.mkdir()
    env = tutorial_env(tmp_path, ports["4200"])
    terminal = Terminal(start, env)
    others: list[Background] = []
    pending: list[Background] = []
    timings: list[str] = []
    try:
        for block in blocks:
            began = time.monotonic()
            code = re.sub(r"\b(8025|4200|8026)\b", lambda m: ports[m[1]], block.code)
            code = code.replace(
                "uvx copier copy",
                f"{sys.executable} -m copier copy --defaults --vcs-ref=HEAD --quiet "
                f"--data-file {answers_file}",
            )
            if block.ready is not None:
                started = Background(block, code, start, env)
                others.append(started)
                pending.append(started)
                continue
            for background in pending:  # servers started together come up together
                background.wait_ready()
            pending.clear()
            if "/_fake/approvals" in code and not (tmp_path / "approval-page.png").exists():
                wait_for_pending_approval(fake_url)
                screenshot(
                    browser,
                    f"{fake_url}/_fake/approvals",
                    tmp_path / "approval-page.png",
                    "Approve and send",
                )
            terminal.send(code)
            if "RUN_ID=$(" in code and not (tmp_path / "flow-run.png").exists():
                run_id = terminal.send('printf "%s\\n" "$RUN_ID"').strip()
                screenshot(
                    browser,
                    f"{prefect_url}/runs/flow-run/{run_id}",
                    tmp_path / "flow-run.png",
                    "Completed",
                    "Finished in state",
                )
            timings.append(f"{time.monotonic() - began:6.1f}s  {code.splitlines()[0][:70]}")
            print(timings[-1], file=sys.stderr, flush=True)
        check_what_the_reader_was_promised(rendered, terminal, fake_url, prefect_url)
    finally:
        (tmp_path / "transcript.txt").write_text("\n".join(terminal.transcript))
        terminal.close()
        for number, background in enumerate(reversed(others)):
            stop(background.process)
            (tmp_path / f"terminal-{len(others) - number}.txt").write_text(
                f"$ {background.block.code}\n{''.join(background.output)}"
            )


def check_what_the_reader_was_promised(
    rendered: Path, terminal: Terminal, fake_url: str, prefect_url: str
) -> None:
    """Both customers got their answer, through the replies audience's mailbox, and its mode
    changed; the audit trail the reader listed holds the replies (and the approval, if the
    reply was gated then)."""
    package = next(rendered.glob("src/*/settings.toml"))
    settings = tomllib.loads(package.read_text())
    replies = settings["replies"]["audience"]
    was = settings["audiences"][replies]["oversight_mode"]
    gated = was in ("gated_send", "gated_all")
    events = next(block for block in terminal.transcript if "/events/filter" in block)
    expected = ["audit.email.reply", "audit.mailbox.upgraded", "reply.decided"]
    if gated:
        expected.append("audit.oversight.decide")
    for event in expected:
        assert f" multimail.{event} " in events, events[-3000:]
    key = terminal.send('printf "%s\\n" "$MULTIMAIL_API_KEY"').strip()
    mail = httpx.Client(base_url=f"{fake_url}/v1", headers={"Authorization": f"Bearer {key}"})
    mailboxes = {m["address"]: m for m in mail.get("/mailboxes").json()["mailboxes"]}
    address = f"{settings['audiences'][replies]['mailbox']}@demo.multimail.dev"
    mailbox = mailboxes[address]
    assert mailbox["oversight_mode"] == ("monitored" if gated else "gated_send")
    emails = mail.get(f"/mailboxes/{mailbox['id']}/emails", params={"direction": "outbound"})
    customers = ("ada@example.com", "grace@example.com")  # (the digest may share the mailbox)
    sent = sorted((e["to"][0], e["status"]) for e in emails.json()["emails"])
    assert [s for s in sent if s[0] in customers] == [(to, "sent") for to in customers]
    # Filtered by name on the server: the sweeps' schedules (every 120 s) keep about a hundred
    # scheduled runs each, which push the answers out of any first page.
    answered = httpx.post(
        f"{prefect_url}/api/flow_runs/filter",
        json={"flow_runs": {"name": {"like_": "answer-"}}, "limit": 50},
    ).json()
    assert all(r["name"].startswith("answer-") for r in answered), answered
    assert sorted(r["state_type"] for r in answered) == ["COMPLETED", "COMPLETED"]
