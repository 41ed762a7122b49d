"""The fake's approval page, used by a person in a real browser, decides a waiting flow.

A generated project serves its fake (`<project> fake serve`), a flow waits for approval of its
reply in another process, and headless Chromium (Debian's package, driven by Playwright) clicks
Approve, or types a reason and clicks Reject, on the page.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from .conftest import project_command

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _env(fake_url: str, key: str, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "MULTIMAIL_API_URL": fake_url,
        "MULTIMAIL_API_KEY": key,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("no Chromium here: scripts/test installs Debian's `chromium` package")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-background-networking",
                "--disable-gpu",
                "--disable-dev-shm-usage",  # containers often give /dev/shm only 64 MB
            ],
        )
        yield browser
        browser.close()


@pytest.mark.parametrize(("button", "outcome"), [("Approve", "sent"), ("Reject", "rejected")])
def test_deciding_on_the_page_lets_the_waiting_flow_finish(
    installed_project: Path,
    fake_url: str,
    browser: Any,
    tmp_path: Path,
    button: str,
    outcome: str,
) -> None:
    key = httpx.post(f"{fake_url}/_fake/keys", json={"scopes": ["read", "send", "admin"]}).json()[
        "api_key"
    ]
    env = _env(fake_url, key, tmp_path)
    subprocess.run(
        project_command(installed_project, "provision"), env=env, check=True, capture_output=True
    )
    subject = f"Page test {button}"
    inbound = httpx.post(
        f"{fake_url}/_fake/inbound",
        json={
            "to": "support@demo.multimail.dev",
            "from": "ada@example.com",
            "subject": subject,
            "markdown": "Hello from the browser test",
        },
    ).json()["email_id"]
    package = yaml.safe_load((installed_project / ".copier-answers.yml").read_text())[
        "package_name"
    ]
    flow = subprocess.Popen(
        [
            str(installed_project / ".venv" / "bin" / "python"),
            "-c",
            f"from {package}.flows import answer_inbound\n"
            f"print('OUTCOME', answer_inbound({inbound!r}, wait='poll').outcome)",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        page = browser.new_page()
        page.goto(f"{fake_url}/_fake/approvals")
        row = page.locator("tr", has_text=f"Re: {subject}")
        deadline = time.monotonic() + 90
        while row.count() == 0:  # the flow needs a moment (its Prefect server starts first)
            assert flow.poll() is None, flow.stdout.read() if flow.stdout else ""
            assert time.monotonic() < deadline, "the reply never showed up on the page"
            time.sleep(0.5)
            page.reload()
        assert "gated_send" in row.inner_text()
        # The row shows the reply waiting for approval, not the customer's inbound message.
        assert "Hello from the browser test" not in row.inner_text()
        if button == "Reject":
            row.get_by_label("Reason").fill("Wrong tone")
        row.get_by_role("button", name=button).click()
        expected = "approved and sent" if button == "Approve" else "rejected"
        assert expected in page.get_by_role("status").inner_text()
        page.screenshot(path=str(tmp_path / "approval-page.png"))
        output, _ = flow.communicate(timeout=60)
    finally:
        if flow.poll() is None:
            flow.kill()
    assert f"OUTCOME {outcome}" in output
