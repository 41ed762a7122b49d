"""The fake's approval page, used by a person in a real browser.

A generated project serves its fake (`<project> fake serve`); headless Chromium (Debian's package,
driven by Playwright) opens the page at a desktop and a phone width, checks what a reviewer would
notice (layout, rendered markdown, a hostile body shown as text, accessibility with axe-core) and
decides: on a reply that a flow in another process waits for, and on a whole queue until it is
empty. Screenshots land in the test's tmp dir; set APPROVAL_PAGE_SCREENSHOTS to a directory
(e.g. docs/images) to keep copies there too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from axe_playwright_python.sync_playwright import Axe  # type: ignore[import-untyped]

from .chromium import CHROMIUM, launched_chromium
from .conftest import project_command

pytestmark = pytest.mark.slow

MAILBOX = "support@demo.multimail.dev"
HOSTILE = "<script>window.pwned = true</script>"
WIDTHS = (1280, 390)


def _env(fake_url: str, key: str, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "MULTIMAIL_API_URL": fake_url,
        "MULTIMAIL_API_KEY": key,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        # A fresh PREFECT_HOME migrates its database first; 2 busy cores can take over 20 s.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    }


def _key(fake_url: str, *scopes: str) -> str:
    created = httpx.post(f"{fake_url}/_fake/keys", json={"scopes": list(scopes)})
    key: str = created.json()["api_key"]
    return key


def _inbound(fake_url: str, subject: str, markdown: str) -> str:
    body = {"to": MAILBOX, "from": "ada@example.com", "subject": subject, "markdown": markdown}
    email_id: str = httpx.post(f"{fake_url}/_fake/inbound", json=body).json()["email_id"]
    return email_id


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("no Chromium here: scripts/test installs Debian's `chromium` package")
    with launched_chromium() as launched:
        yield launched


def _screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    keep = os.environ.get("APPROVAL_PAGE_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)
    return path


def _assert_accessible(page: Any) -> None:
    results = Axe().run(page)
    assert results.violations_count == 0, results.generate_report()


def _card(page: Any, subject: str) -> Any:
    return page.locator("article.card").filter(
        has=page.get_by_role("heading", name=subject, exact=True)
    )


@pytest.mark.parametrize(
    ("button", "outcome", "said"),
    [("Approve and send", "sent", "Approved and sent"), ("Reject", "rejected", "Rejected")],
)
def test_deciding_on_the_page_lets_the_waiting_flow_finish(
    installed_project: Path,
    fake_url: str,
    browser: Any,
    tmp_path: Path,
    button: str,
    outcome: str,
    said: str,
) -> None:
    env = _env(fake_url, _key(fake_url, "read", "send", "admin"), tmp_path)
    subprocess.run(
        project_command(installed_project, "provision"), env=env, check=True, capture_output=True
    )
    subject = f"Page test {outcome}"
    inbound = _inbound(fake_url, subject, "Hello from the browser test")
    package = yaml.safe_load((installed_project / ".copier-answers.yml").read_text())[
        "package_name"
    ]
    flow = subprocess.Popen(
        [
            str(installed_project / ".venv" / "bin" / "python"),
            "-c",
            f"from {package}.flows.answer_inbound import answer_inbound\n"
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
        card = _card(page, f"Re: {subject}")
        deadline = time.monotonic() + 180
        while card.count() == 0:  # the flow needs a moment (its Prefect server starts first)
            assert flow.poll() is None, flow.stdout.read() if flow.stdout else ""
            assert time.monotonic() < deadline, "the reply never showed up on the page"
            time.sleep(0.5)
            page.reload()
        assert "gated_send" in card.inner_text()
        # The card shows the reply; the customer's message it answers sits collapsed above it.
        assert "Hello from the browser test" not in card.locator(".body").inner_text()
        card.locator("details summary").click()
        assert "Hello from the browser test" in card.locator("details").inner_text()
        if button == "Reject":
            card.get_by_label("Reason for rejecting").fill("Wrong tone")
        card.get_by_role("button", name=button, exact=True).click()
        assert page.get_by_role("status").inner_text().startswith(said)
        assert card.count() == 0
        output, _ = flow.communicate(timeout=60)
    finally:
        if flow.poll() is None:
            flow.kill()
    assert f"OUTCOME {outcome}" in output


def _seed_queue(fake_url: str) -> str:
    """A reply to a hostile inbound message, then a new email; returns an upgrade code."""
    agent = httpx.Client(
        base_url=fake_url,
        headers={"Authorization": f"Bearer {_key(fake_url, 'admin', 'send')}"},
    )
    mailbox = agent.post("/v1/mailboxes", json={"address_local": "support"}).json()["id"]
    question = _inbound(
        fake_url,
        "Refund for order 1042",
        f"Hello,\n\nI was charged twice for order **1042**. {HOSTILE}\n\nAda",
    )
    reply = (
        "Hi Ada,\n\nSorry about that: you were charged twice. We refunded **EUR 41** to your "
        "card today; it shows within 3 to 5 business days.\n\n- Order: 1042\n- Refund: EUR 41"
        "\n\nBest regards,  \nSupport"
    )
    agent.post(f"/v1/mailboxes/{mailbox}/reply/{question}", json={"markdown": reply})
    agent.post(
        f"/v1/mailboxes/{mailbox}/send",
        json={
            "to": ["bob@example.com"],
            "cc": ["carol@example.com"],
            "subject": "Your invoice for November",
            "markdown": "Dear Bob,\n\nyour invoice: https://example.com/invoices/2026/11/"
            + "0" * 80
            + "\n\n_Thanks_",
        },
    )
    agent.post(f"/v1/mailboxes/{mailbox}/request-upgrade", json={"target_mode": "autonomous"})
    inbox = httpx.get(f"{fake_url}/_fake/operator/inbox").json()["messages"]
    code: str = next(m["code"] for m in inbox if m["kind"] == "upgrade_code")
    return code


def test_the_page_reads_well_at_desktop_and_phone_width(
    fake_url: str, browser: Any, tmp_path: Path
) -> None:
    code = _seed_queue(fake_url)
    for width in WIDTHS:
        page = browser.new_page(viewport={"width": width, "height": 900})
        page.goto(f"{fake_url}/_fake/approvals")
        assert page.get_by_text("2 emails wait for a decision, oldest first.").is_visible()
        headings = page.locator("article.card h2").all_inner_texts()
        assert headings == ["Re: Refund for order 1042", "Your invoice for November"]
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"the page scrolls sideways at {width} px"
        for card in page.locator("article.card").all():
            body = card.locator(".body")
            assert body.bounding_box()["width"] >= card.bounding_box()["width"] / 2
        reply = _card(page, "Re: Refund for order 1042")
        message = reply.locator(".body")
        assert message.locator("strong").first.inner_text() == "EUR 41"
        assert "**" not in message.inner_text()
        reply.locator("details summary").click()
        answered = reply.locator("details").inner_text()
        assert HOSTILE in answered  # shown as text...
        assert page.evaluate("window.pwned") is None  # ...and never run
        assert page.locator("main script").count() == 0
        _assert_accessible(page)
        _screenshot(page, tmp_path, f"approval-page-{width}")

        page.get_by_role("link", name=re.compile("^Operator inbox")).click()
        assert page.get_by_role("heading", name="Operator inbox", level=1).is_visible()
        assert page.locator("code", has_text=code).is_visible()
        _assert_accessible(page)
        _screenshot(page, tmp_path, f"operator-inbox-{width}")
        page.close()


def test_deciding_the_whole_queue_leaves_an_empty_page_that_says_so(
    fake_url: str, browser: Any, tmp_path: Path
) -> None:
    _seed_queue(fake_url)
    page = browser.new_page(viewport={"width": 390, "height": 900})
    page.goto(f"{fake_url}/_fake/approvals")
    invoice = _card(page, "Your invoice for November")
    invoice.get_by_label("Reason for rejecting").fill("Attach the PDF first")
    invoice.get_by_role("button", name="Reject", exact=True).click()
    assert page.get_by_role("status").inner_text() == (
        "Rejected: Your invoice for November will not be sent."
    )
    assert page.get_by_text("1 email waits for a decision").is_visible()
    _card(page, "Re: Refund for order 1042").get_by_role("button", name="Approve and send").click()
    assert page.get_by_role("status").inner_text() == (
        "Approved and sent: Re: Refund for order 1042 to ada@example.com."
    )
    assert page.locator("article.card").count() == 0
    assert page.get_by_text("Nothing waits for a decision.").is_visible()
    _assert_accessible(page)
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        _screenshot(page, tmp_path, f"approval-page-empty-{width}")
