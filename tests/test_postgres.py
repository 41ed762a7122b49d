"""End to end on a Prefect server backed by a real PostgreSQL, as a user deploys the project.

The generated project's own commands do everything: `provision` the mailboxes on the fake
MultiMail, `setup` the Secret blocks, `prefect deploy` the flows, `prefect worker start` from
a directory outside the project, `receiver serve`. The test then acts as MultiMail and as an
independent client: it delivers inbound mail (the fake signs and posts the webhooks, retrying
failed deliveries), duplicates and forges deliveries, stops the receiver, and counts the flow
runs and the replies. Workers and runners poll every second (PREFECT_WORKER_QUERY_SECONDS,
PREFECT_RUNNER_POLL_FREQUENCY; Prefect's default is 10 s), and no key is in their environment:
deployed runs read the Secret block.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from .conftest import project_command, render_template, run, uv
from .prefect_postgres import (
    TERMINAL,
    PrefectOnPostgres,
    free_port,
    prefect_env,
    prefect_on_postgres,
    start_process,
    stop_process,
)

__all__ = ["prefect_on_postgres"]  # the fixture, imported for pytest

pytestmark = pytest.mark.slow

SIGNATURE_HEADER = "X-MultiMail-Signature"
#: Inbound messages delivered at once while two process workers poll the pool.
BURST = 6


def wait_for(what: str, check: Callable[[], Any], timeout: float = 90.0) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Stack:
    """The deployed project and what runs around it; methods are what a user or MultiMail does."""

    project: Path
    server: PrefectOnPostgres
    fake: str
    key: str
    pool: str
    logs: Path
    mailboxes: dict[str, dict[str, Any]]  # audience -> the fake's mailbox
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @cached_property
    def slug(self) -> str:
        """The project's slug (its answers file is read once; `runs_for` polls with it)."""
        return str(
            yaml.safe_load((self.project / ".copier-answers.yml").read_text())["project_slug"]
        )

    def deployment(self, name: str) -> str:
        """FLOW/DEPLOYMENT of deployment `name` of prefect.yaml: the flows carry the project."""
        return f"{self.slug}-{name}/{name}"

    def env(self, **extra: str) -> dict[str, str]:
        return prefect_env(
            self.server, self.logs / "prefect-home", MULTIMAIL_API_URL=self.fake, **extra
        )

    def cli(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return run(project_command(self.project, *args), self.project, 180, self.env(**extra))

    def mail(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.fake, headers={"Authorization": f"Bearer {self.key}"}, timeout=30
        )

    def prefect(self) -> httpx.Client:
        return httpx.Client(base_url=self.server.api_url, timeout=30)

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        """`<project>/.venv/bin/prefect worker start`, from a directory outside the project."""
        elsewhere = self.logs / f"{name}-cwd"
        elsewhere.mkdir(exist_ok=True)
        prefect = str(self.project / ".venv" / "bin" / "prefect")
        command = [
            prefect,
            "worker",
            "start",
            "--pool",
            self.pool,
            "--type",
            "process",
            "--name",
            name,
        ]
        worker = start_process(command, elsewhere, self.env(), self.logs / f"{name}.log")
        self.processes.append(worker)
        return worker

    def deliver_inbound(self, audience: str, subject: str) -> str:
        """Mail from outside to an audience's mailbox; the fake fires `message.received`."""
        body = {
            "to": self.mailboxes[audience]["address"],
            "from": "alice@example.org",
            "subject": subject,
            "markdown": f"Hello, about {subject}.",
        }
        answer = httpx.post(f"{self.fake}/_fake/inbound", json=body, timeout=30)
        answer.raise_for_status()
        return str(answer.json()["email_id"])

    def runs_for(self, email_id: str) -> list[dict[str, Any]]:
        """Every answer-inbound flow run whose parameters name `email_id`."""
        with self.prefect() as api:
            deployment = api.get(f"/deployments/name/{self.deployment('answer-inbound')}").json()
            runs = api.post(
                "/flow_runs/filter",
                json={"deployments": {"id": {"any_": [deployment["id"]]}}, "limit": 200},
            ).json()
        return [r for r in runs if r["parameters"].get("email_id") == email_id]

    def finished_run(self, email_id: str, timeout: float = 180.0) -> dict[str, Any]:
        """The one run for `email_id`, once it reached a final state."""

        def done() -> dict[str, Any] | None:
            runs = self.runs_for(email_id)
            final = [r for r in runs if r["state_type"] in TERMINAL]
            return final[0] if final and len(final) == len(runs) else None

        finished: dict[str, Any] = wait_for(f"the run answering {email_id}", done, timeout)
        return finished

    def inbound_resources(self) -> set[str]:
        """`multimail.email.<id>` of every inbound email of this stack's account."""
        found = set()
        with self.mail() as mail:
            for mailbox in self.mailboxes.values():
                emails = mail.get(
                    f"/v1/mailboxes/{mailbox['id']}/emails",
                    params={"direction": "inbound", "limit": 100},
                ).json()["emails"]
                found |= {f"multimail.email.{summary['id']}" for summary in emails}
        return found

    def replies_to(self, email_id: str) -> dict[str, list[str]]:
        """Outbound replies to `email_id`, by the audience whose mailbox holds them."""
        found: dict[str, list[str]] = {}
        with self.mail() as mail:
            for audience, mailbox in self.mailboxes.items():
                emails = mail.get(
                    f"/v1/mailboxes/{mailbox['id']}/emails",
                    params={"direction": "outbound", "limit": 100},
                ).json()["emails"]
                for summary in emails:
                    full = mail.get(f"/v1/mailboxes/{mailbox['id']}/emails/{summary['id']}")
                    if full.json().get("in_reply_to") == email_id:
                        found.setdefault(audience, []).append(summary["id"])
        return found


@contextmanager
def stood_up(project: Path, server: PrefectOnPostgres, logs: Path) -> Iterator[Stack]:
    """Fake MultiMail, mailboxes, deployments and one worker of `project`, as a user sets them
    up (each project its own fake: its own MultiMail account)."""
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    fake_log = logs / "fake.log"
    fake = start_process(
        project_command(project, "fake", "serve", "--port", "0"),
        project,
        prefect_env(server, logs / "prefect-home"),
        fake_log,
    )
    url = wait_for(
        "the fake to print its URL",
        lambda: re.search(r"http://127\.0\.0\.1:\d+", fake_log.read_text()),
        60,
    )[0]
    key = httpx.post(
        f"{url}/_fake/keys", json={"scopes": ["read", "send", "admin"], "name": "flows"}
    ).json()["api_key"]
    stack = Stack(
        project,
        server,
        url,
        key,
        answers["work_pool_name"],
        logs,
        mailboxes={},
        processes=[fake],
    )
    try:
        # Mailboxes in the modes of settings.toml; loosening one needs the operator's code.
        stack.cli("provision", "--request-upgrade", MULTIMAIL_API_KEY=key)
        inbox = httpx.get(f"{url}/_fake/operator/inbox").json()["messages"]
        with stack.mail() as mail:
            by_id = {m["id"]: m for m in mail.get("/v1/mailboxes").json()["mailboxes"]}
        codes = [
            f"--code={audience}={message['code']}"
            for message in inbox
            if message.get("kind") == "upgrade_code"
            for audience, settings in answers_audiences(project).items()
            if by_id[message["mailbox_id"]]["address"].split("@")[0] == settings["mailbox"]
        ]
        if codes:
            stack.cli("provision", *codes, MULTIMAIL_API_KEY=key)
        with stack.mail() as mail:
            mailboxes = mail.get("/v1/mailboxes").json()["mailboxes"]
        stack.mailboxes = {
            audience: next(m for m in mailboxes if m["address"].split("@")[0] == a["mailbox"])
            for audience, a in answers_audiences(project).items()
        }
        prefect = str(project / ".venv" / "bin" / "prefect")
        run(
            [prefect, "work-pool", "create", stack.pool, "--type", "process", "--overwrite"],
            project,
            120,
            stack.env(),
        )
        run([prefect, "--no-prompt", "deploy", "--all"], project, 300, stack.env())
        stack.start_worker("worker-1")
        yield stack
    finally:
        for process in reversed(stack.processes):
            stop_process(process)


@pytest.fixture(scope="module")
def stack(
    installed_project: Path,
    prefect_on_postgres: PrefectOnPostgres,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """The default render, deployed and running on the session's server."""
    logs = tmp_path_factory.mktemp("postgres-e2e")
    with stood_up(installed_project, prefect_on_postgres, logs) as stack:
        yield stack


def answers_audiences(project: Path) -> dict[str, dict[str, str]]:
    """settings.toml's audiences (name -> mailbox, mode), read the way the project reads them."""
    package = yaml.safe_load((project / ".copier-answers.yml").read_text())["package_name"]
    settings = tomllib.loads((project / "src" / package / "settings.toml").read_text())
    audiences: dict[str, dict[str, str]] = settings["audiences"]
    return audiences


def audience_in_mode(stack: Stack, *modes: str) -> str:
    """An audience whose oversight mode is one of `modes`."""
    audiences = answers_audiences(stack.project)
    return next(n for n, a in audiences.items() if a["oversight_mode"] in modes)


def logs_of(stack: Stack, *names: str) -> str:
    """The tail of each named log, to explain a failure."""
    return "\n".join(
        f"--- {name}\n" + (stack.logs / f"{name}.log").read_text()[-3000:]
        for name in names
        if (stack.logs / f"{name}.log").exists()
    )


def check_answered_once(stack: Stack, email_id: str, audience: str) -> dict[str, Any]:
    """Exactly one run for the email, completed, and one reply from the audience's mailbox."""
    finished = stack.finished_run(email_id)
    runs = stack.runs_for(email_id)
    assert len(runs) == 1, runs
    assert finished["state_type"] == "COMPLETED", logs_of(stack, "worker-1", "worker-2", "receiver")
    assert finished["idempotency_key"] == f"answer-inbound:{email_id}"
    replies = stack.replies_to(email_id)
    assert list(replies) == [audience]  # through the mailbox of the audience written to
    assert len(replies[audience]) == 1
    return finished


def start_receiver(stack: Stack, port: int) -> subprocess.Popen[bytes]:
    """`<project> receiver serve`: the key and the signing secret from their Secret blocks."""
    command = project_command(stack.project, "receiver", "serve", "--port", str(port))
    receiver = start_process(command, stack.project, stack.env(), stack.logs / "receiver.log")
    stack.processes.append(receiver)

    def healthy() -> bool:
        if receiver.poll() is not None:
            pytest.fail("the receiver exited:\n" + logs_of(stack, "receiver"))
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for("the receiver to answer /healthz", healthy, 60)
    return receiver


def serve_webhooks(stack: Stack) -> tuple[int, str, subprocess.Popen[bytes]]:
    """Subscribe a new receiver to the stack's fake, `setup` its key and signing secret, start it.

    Returns its port, the signing secret and its process."""
    port = free_port()
    with stack.mail() as mail:
        subscription = mail.post(
            "/v1/webhooks",
            json={
                "url": f"http://127.0.0.1:{port}/multimail/webhook",
                "events": ["message.received"],
            },
        )
        subscription.raise_for_status()
    secret = str(subscription.json()["signing_secret"])
    stack.cli("setup", MULTIMAIL_API_KEY=stack.key, MULTIMAIL_WEBHOOK_SECRET=secret)
    return port, secret, start_receiver(stack, port)


def signed_delivery(secret: str, data: dict[str, Any], delivery_id: str) -> tuple[bytes, str]:
    body = json.dumps(
        {
            "event": "message.received",
            "id": delivery_id,
            "timestamp": "2026-01-01T00:00:00Z",
            "data": data,
        },
        separators=(",", ":"),
    ).encode()
    return body, "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_inbound_mail_is_answered_once_per_message_on_postgres(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    autonomous = audience_in_mode(stack, "autonomous", "monitored")
    gated = audience_in_mode(stack, "gated_send", "gated_all")

    # 1. The receiver, subscribed as a user does; `setup` stores the key and signing secret.
    port, secret, receiver = serve_webhooks(stack)
    url = f"http://127.0.0.1:{port}/multimail/webhook"

    # 2. Inbound mail -> signed webhook -> receiver -> run on the worker -> reply, per audience.
    email_id = stack.deliver_inbound(autonomous, "first delivery")
    first_run = check_answered_once(stack, email_id, autonomous)
    # ... on a worker started outside the project, whose pull step found the project there, with
    # the key from the Secret block.
    with stack.prefect() as api:
        logs = api.post(
            "/logs/filter", json={"logs": {"flow_run_id": {"any_": [first_run["id"]]}}}
        ).json()
    assert any("enter_project_directory" in line["message"] for line in logs), logs
    # ... through answer-inbound's own work queue, which `setup` limited (4 by default).
    queue = first_run["work_queue_name"]
    assert queue.endswith("-answer-inbound"), queue
    with stack.prefect() as api:
        limited = api.get(f"/work_pools/{stack.pool}/queues/{queue}").json()
    assert limited["concurrency_limit"] == 4, limited
    worker_log = (stack.logs / "worker-1.log").read_text()
    assert "ModuleNotFoundError" not in worker_log
    assert stack.key not in worker_log
    # Mail to the gated audience: its run replies from that mailbox and suspends (freeing the
    # worker) until a human decides; resuming it is test_suspend's business in the project.
    gated_id = stack.deliver_inbound(gated, "needs a human")
    suspended = wait_for(
        "the gated run to suspend on its reply",
        lambda: [r for r in stack.runs_for(gated_id) if r["state_type"] == "PAUSED"],
    )
    assert len(stack.runs_for(gated_id)) == 1
    assert suspended[0]["parameters"]["audience"] == gated
    replies = stack.replies_to(gated_id)
    assert list(replies) == [gated]
    assert len(replies[gated]) == 1

    # 3. Duplicates: the same delivery again, and another delivery id for the same email.
    data = {
        "email_id": email_id,
        "mailbox_id": stack.mailboxes[autonomous]["id"],
        "direction": "inbound",
        "from": "alice@example.org",
    }
    for delivery_id in ("dup-1", "dup-1", "dup-2"):
        body, signature = signed_delivery(secret, data, delivery_id)
        answer = httpx.post(
            url,
            content=body,
            headers={SIGNATURE_HEADER: signature, "Content-Type": "application/json"},
        )
        assert answer.status_code < 300, answer.text
    time.sleep(3)  # room for a wrong second run to appear
    assert len(stack.runs_for(email_id)) == 1

    # 4. Forged signatures start nothing: for a new email id, and for an answered one.
    for forged in ({**data, "email_id": "em_forged"}, data):
        # Signed with a secret that is not the subscription's.
        body, signature = signed_delivery(secret[::-1], forged, f"forged-{forged['email_id']}")
        answer = httpx.post(url, content=body, headers={SIGNATURE_HEADER: signature})
        assert answer.status_code == 401
    assert stack.runs_for("em_forged") == []
    assert len(stack.runs_for(email_id)) == 1

    # 5. The receiver is down when mail arrives; MultiMail retries once it is back.
    stop_process(receiver)
    stack.processes.remove(receiver)
    # Retries after 5, 15 and 35 s: time for the receiver to come back even on a busy machine.
    httpx.post(f"{stack.fake}/_fake/config", json={"webhook_backoff": 5.0}).raise_for_status()
    late_id = stack.deliver_inbound(autonomous, "while the receiver is down")
    with stack.mail() as mail:
        wait_for(
            "a failed first delivery attempt",
            lambda: any(
                d["attempts"] >= 1 and d["status"] == "pending"
                for d in mail.get("/v1/webhook-deliveries", params={"limit": 20}).json()[
                    "deliveries"
                ]
            ),
            30,
        )
    assert stack.runs_for(late_id) == []
    start_receiver(stack, port)
    check_answered_once(stack, late_id, autonomous)

    # 6. Two workers on the pool, a burst of inbound mail: each message answered once.
    stack.start_worker("worker-2")
    burst = [stack.deliver_inbound(autonomous, f"burst {n}") for n in range(BURST)]
    for burst_id in burst:
        check_answered_once(stack, burst_id, autonomous)

    # 7. A second project deployed to the same server (in this test: a second test of this
    # module could run on another xdist worker, with its own `stack` of the same project).
    check_a_second_project_keeps_to_its_own(stack, tmp_path_factory.mktemp("second-project"))


#: A second project on the same server: other answers (so other names), its own MultiMail
#: account (its own fake), the same audiences.
BILLING = {"project_name": "Billing Mail", "digest_schedule": "0 9 * * 1"}
#: Every deployment of prefect.yaml.
DEPLOYMENTS = (
    "status-digest",
    "answer-inbound",
    "expire-approval-waits",
    "reconcile-inbound",
    "export-audit-log",
)


def own_events(stack: Stack, since: str) -> list[dict[str, Any]]:
    """The `multimail.reply.*` events since `since` labelled with the stack's project."""
    with stack.prefect() as api:
        answer = api.post(
            "/events/filter",
            json={
                "filter": {
                    "occurred": {"since": since},
                    "event": {"prefix": ["multimail.reply."]},
                    "resource": {"labels": {"multimail.project": [stack.slug]}},
                },
                "limit": 50,
            },
        )
        answer.raise_for_status()
    events: list[dict[str, Any]] = answer.json()["events"]
    return events


def check_a_second_project_keeps_to_its_own(stack: Stack, root: Path) -> None:
    """A second project deployed to the same server leaves the first one's deployments, runs,
    Variables and events alone, and each answers its own inbound mail."""
    billing_project = render_template(root / "billing-mail", BILLING)
    run([uv(), "sync", "--quiet"], billing_project, 600)
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 5))
    with stood_up(billing_project, stack.server, root) as billing:
        assert billing.slug != stack.slug
        serve_webhooks(billing)  # the first project's receiver serves since step 1
        # Each project's deployments are its own, after both deployed: code, pool, Secret block.
        with stack.prefect() as api:
            for each in (stack, billing):
                answers = yaml.safe_load((each.project / ".copier-answers.yml").read_text())
                for name in DEPLOYMENTS:
                    found = api.get(f"/deployments/name/{each.deployment(name)}")
                    assert found.status_code == 200, (each.deployment(name), found.text)
                    deployment = found.json()
                    assert deployment["entrypoint"].startswith(answers["package_name"] + ".")
                    assert deployment["work_pool_name"] == each.pool
                    env = deployment["job_variables"]["env"]
                    assert env["MULTIMAIL_API_KEY_BLOCK"] == answers["api_key_block"]
                    assert each.slug in deployment["tags"]
        # One inbound email each, answered once, by its own project's run and mailbox.
        delivered = {
            each.slug: (each, each.deliver_inbound(audience_in_mode(each, "autonomous"), each.slug))
            for each in (stack, billing)
        }
        for each, email_id in delivered.values():
            finished = check_answered_once(each, email_id, audience_in_mode(each, "autonomous"))
            assert each.slug in finished["tags"]
        # ... and no run of either project's deployments for the other's email.
        assert stack.runs_for(delivered[billing.slug][1]) == []
        assert billing.runs_for(delivered[stack.slug][1]) == []
        # Each audit export keeps its own cursor, recording its own account.
        for each in (stack, billing):
            run(
                [
                    str(each.project / ".venv" / "bin" / "prefect"),
                    "deployment",
                    "run",
                    each.deployment("export-audit-log"),
                    "--watch",
                ],
                each.project,
                180,
                each.env(),
            )
        with stack.prefect() as api:
            cursors = {
                each.slug: api.get(f"/variables/name/{each.slug}-audit-export")
                for each in (stack, billing)
            }
        assert all(c.status_code == 200 for c in cursors.values()), cursors
        assert cursors[stack.slug].json()["value"] != cursors[billing.slug].json()["value"]
        # Events: each project's own carry its label and are about its own account's mail only.
        inbound_of = {each.slug: each.inbound_resources() for each in (stack, billing)}
        for each, email_id in delivered.values():
            own = f"multimail.email.{email_id}"

            def related_inbound(each: Stack = each) -> set[str]:
                return {
                    r["prefect.resource.id"]
                    for e in own_events(each, since)
                    for r in e.get("related", [])
                    if r.get("prefect.resource.role") == "inbound"
                }

            def reported(own: str = own) -> bool:
                return own in related_inbound()

            wait_for(f"{each.slug}'s reply event about {email_id}", reported, 60)
            about = related_inbound()
            assert about <= inbound_of[each.slug], about - inbound_of[each.slug]
            others = [inbound_of[slug] for slug in inbound_of if slug != each.slug]
            assert not about & set().union(*others), about
