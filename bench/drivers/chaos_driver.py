"""Runs inside a generated project's environment (see bench/chaos.py): the fault soak.

Sets up what a deployment of the project runs (the fake MultiMail behind a fault-injecting
proxy, mailboxes provisioned with the CLI, the Secret blocks, a process work pool with
prefect.yaml's deployments, two process workers, the receiver subscribed through a webhook
proxy), delivers inbound mail to a gated and an autonomous audience while an operator decides
at random moments and the faults hit, then drains and checks every email.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import itertools
import json
import math
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
from chaos_procs import PrefectServer, Service, descendants, flow_run_of, free_port, wait_http
from chaos_proxy import ApiFaults, ApiProxy, WebhookProxy

FAULT_KINDS = ("kill_running", "kill_submitting", "receiver_down", "server_restart", "duplicates")
FINAL_TYPES = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
#: Outbound statuses of a reply still on its way (scan, approval queue, schedule).
PENDING_REPLY = frozenset({"pending_scan", "pending_send_approval", "scheduled"})
#: A run of another deployment (a sweep, the digest) counts as stuck when it stays non-final
#: this long (a scheduled sweep that just started is not stuck).
OTHER_RUN_GRACE_SECONDS = 180.0

STARTED = time.monotonic()


def say(message: str) -> None:
    """A timeline line: seconds since the soak started, then what happened."""
    line = f"[{time.monotonic() - STARTED:7.1f}s] {message}"
    print(line, flush=True)
    if TIMELINE is not None:
        with TIMELINE.open("a") as out:
            out.write(line + "\n")


TIMELINE: Path | None = None


@dataclass
class EmailRecord:
    index: int
    audience: str
    gated: bool
    mailbox_id: str
    address: str
    due: float  # seconds into the load phase
    email_id: str = ""
    thread_id: str = ""
    delivered_at: float = 0.0
    decision: str = ""  # approve / reject, by the operator
    decided_at: float = 0.0
    run_state_at_decision: str = ""
    decided_during: str = ""  # the fault under way when the decision was made, if any


@dataclass
class FaultRecord:
    kind: str
    started: float
    ended: float = 0.0
    injected: bool = False
    detail: str = ""


@dataclass
class Finding:
    """Something the product did that the soak noticed on the way (not a figure)."""

    at: float
    what: str


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)  # noqa: S311 (a repeatable soak, not security)
        self.pkg: str = args.package
        answers = answer_values(Path(".copier-answers.yml").read_text())
        self.slug = answers["project_slug"]
        self.pool = answers["work_pool_name"]
        self.project = Path.cwd()
        self.bin = Path(sys.executable).parent
        self.logs = Path(args.logs)
        self.server = PrefectServer(Path(args.server_state), self.bin / "prefect")
        self.home = Path(tempfile.mkdtemp(prefix="chaos-prefect-home-", dir=self.logs))
        self.fake_url = ""
        self.admin_key = ""
        self.operator_key = ""
        self.signing_secret = ""
        self.emails: list[EmailRecord] = []
        self.faults: list[FaultRecord] = []
        self.findings: list[Finding] = []
        self.services: dict[str, Service] = {}
        self.workers: list[Service] = []
        self.worker_count = 0
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.draining = threading.Event()
        self.current_fault = ""
        self.decide_now = 0  # the operator decides this many pending replies at once
        self.outages_left = 0  # receiver outages still to come: the operator keeps some back
        self.operator_rng = random.Random(args.seed + 2)  # noqa: S311
        self.deployment_ids: dict[str, UUID] = {}
        self.answer_deployment: UUID | None = None
        self.decisions: Counter[str] = Counter()
        self.api_proxy: ApiProxy | None = None
        self.webhook_proxy: WebhookProxy | None = None
        self.servers: list[Any] = []

    # ------------------------------------------------------------------ plumbing

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of the project's processes: Prefect and MultiMail through the proxy,
        no MultiMail secret (deployed runs and the receiver load them from Secret blocks)."""
        env = {
            **os.environ,
            "PREFECT_API_URL": self.server.api_url,
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": str(self.args.worker_poll),
            "PREFECT_LOGGING_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            "MULTIMAIL_API_URL": self.api_url,
        }
        for secret in ("MULTIMAIL_API_KEY", "MULTIMAIL_WEBHOOK_SECRET"):
            env.pop(secret, None)
        if self.args.stuck_run_seconds is not None:
            # A worker's flow runs inherit its environment: reconcile-inbound's bound on a run
            # with no process (settings.toml's stuck_run_seconds), shortened for a brief run.
            env["MULTIMAIL_STUCK_RUN_SECONDS"] = f"{self.args.stuck_run_seconds:g}"
        env.update(extra)
        return env

    @property
    def api_url(self) -> str:
        return self.servers[0].base_url if self.servers else ""

    def fake(self, key: str | None = None) -> httpx.Client:
        """A client of the fake itself (not through the proxy): the harness and the operator."""
        headers = {"Authorization": f"Bearer {key or self.admin_key}"}
        return httpx.Client(base_url=self.fake_url, headers=headers, timeout=30, trust_env=False)

    def cli(self, *args: str, timeout: float = 300, env: dict[str, str] | None = None) -> str:
        """A command of the project or of Prefect, run to completion; output to setup.log."""
        command = [str(self.bin / args[0]), *args[1:]]
        done = subprocess.run(
            command,
            cwd=self.project,
            env=self.env(**(env or {})),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        with (self.logs / "setup.log").open("a") as out:
            out.write(f"$ {' '.join(args)}\n{done.stdout}{done.stderr}\n")
        if done.returncode != 0:
            raise RuntimeError(f"`{' '.join(args)}` exited {done.returncode} (see setup.log)")
        return done.stdout

    def prefect(self, call: Callable[..., Any], default: Any, *args: Any) -> Any:
        """`call(client, *args)` with a sync Prefect client; `default` when the API fails."""
        from prefect.client.orchestration import get_client

        try:
            with get_client(sync_client=True) as client:
                return call(client, *args)
        except Exception:
            return default

    def finding(self, what: str) -> None:
        with self.lock:
            self.findings.append(Finding(time.monotonic() - STARTED, what))
        say(f"FINDING: {what}")

    # ------------------------------------------------------------------ set-up

    def setup(self) -> None:
        fake_port = free_port()
        fake = Service(
            "fake",
            [str(self.bin / self.slug), "fake", "serve", "--port", str(fake_port)],
            self.env(),
            self.logs,
            self.logs / "fake.log",
        )
        fake.start()
        self.services["fake"] = fake
        self.fake_url = f"http://127.0.0.1:{fake_port}"
        if not wait_http(f"{self.fake_url}/_fake/config", 90, fake):
            raise RuntimeError("the fake MultiMail did not start (fake.log)")
        with httpx.Client(base_url=self.fake_url, trust_env=False) as anonymous:
            self.admin_key = anonymous.post(
                "/_fake/keys", json={"scopes": ["read", "send", "admin"], "name": "flows"}
            ).json()["api_key"]
            self.operator_key = anonymous.post(
                "/_fake/keys", json={"scopes": ["oversight"], "name": "operator"}
            ).json()["api_key"]
        serving = importlib.import_module(f"{self.pkg}.fake.background")
        faults = ApiFaults(
            unavailable=self.args.api_fault_rate * 0.4,
            lost_answer=self.args.api_fault_rate * 0.3,
            slow=self.args.api_fault_rate * 0.3,
        )
        self.api_proxy = ApiProxy(self.fake_url, faults, self.args.seed)
        receiver_port = free_port()
        self.webhook_proxy = WebhookProxy(
            f"http://127.0.0.1:{receiver_port}/multimail/webhook", self.args.seed + 1
        )
        for app, name in ((self.api_proxy, "api-proxy"), (self.webhook_proxy, "webhook-proxy")):
            self.servers.append(serving.BackgroundServer(app, name=name).start())
        webhook_url = f"{self.servers[1].base_url}/multimail/webhook"
        say(f"fake {self.fake_url}; API proxy {self.api_url}; webhook proxy {webhook_url}")

        key = {"MULTIMAIL_API_KEY": self.admin_key}
        self.cli(self.slug, "provision", "--request-upgrade", env=key)
        with self.fake() as client:
            mailboxes = {m["id"]: m for m in client.get("/v1/mailboxes").json()["mailboxes"]}
            inbox = client.get("/_fake/operator/inbox").json()["messages"]
        settings = self.settings()
        local_to_audience = {a["mailbox"]: name for name, a in settings.items()}
        codes = [
            f"{local_to_audience[mailboxes[m['mailbox_id']]['address'].split('@')[0]]}={m['code']}"
            for m in inbox
            if m.get("kind") == "upgrade_code" and m.get("mailbox_id") in mailboxes
        ]
        self.cli(self.slug, "provision", *[x for c in codes for x in ("--code", c)], env=key)
        # As prefect.yaml says: the pool first (setup may configure its queues), then setup.
        self.cli("prefect", "work-pool", "create", self.pool, "--type", "process", "--overwrite")
        self.cli(self.slug, "setup", "--no-webhook-secret", env=key)
        self.cli(self.slug, "provision", "--webhook-url", webhook_url, env=key)
        with self.fake() as client:
            listed = client.get("/v1/webhooks").json()
            subscriptions = listed.get("subscriptions") or listed.get("webhooks") or []
            webhook = next(s for s in subscriptions if s["url"] == webhook_url)
            self.signing_secret = client.get(f"/v1/webhooks/{webhook['id']}").json()[
                "signing_secret"
            ]
        assert self.webhook_proxy is not None
        self.webhook_proxy.set_secret(self.signing_secret)
        self.cli("prefect", "--no-prompt", "deploy", "--all", timeout=600)
        self.read_deployments()
        if self.args.sweep_interval:
            self.shorten_sweeps(self.args.sweep_interval)

        with self.fake() as client:
            mailboxes = {m["id"]: m for m in client.get("/v1/mailboxes").json()["mailboxes"]}
        by_local = {m["address"].split("@")[0]: m for m in mailboxes.values()}
        modes = {name: a["oversight_mode"] for name, a in settings.items()}
        gated = [n for n, mode in modes.items() if mode in ("gated_send", "gated_all")]
        ungated = [n for n, mode in modes.items() if mode in ("autonomous", "monitored")]
        if not gated or not ungated:
            raise RuntimeError(f"the soak needs a gated and an ungated audience, got {modes}")
        targets = [gated[0], ungated[0]]
        times = sorted(self.rng.uniform(0, self.args.phase) for _ in range(self.args.emails))
        order = [targets[i % 2] for i in range(self.args.emails)]
        self.rng.shuffle(order)
        for index, (due, audience) in enumerate(zip(times, order, strict=True)):
            mailbox = by_local[settings[audience]["mailbox"]]
            self.emails.append(
                EmailRecord(
                    index=index,
                    audience=audience,
                    gated=audience in gated,
                    mailbox_id=mailbox["id"],
                    address=mailbox["address"],
                    due=due,
                )
            )
        say(
            f"audiences: {gated[0]} ({modes[gated[0]]}) and {ungated[0]} ({modes[ungated[0]]}); "
            f"{self.args.emails} inbound emails over {self.args.phase:.0f} s"
        )

        for _ in range(2):
            self.start_worker()
        receiver = Service(
            "receiver",
            [str(self.bin / self.slug), "receiver", "serve", "--port", str(receiver_port)],
            self.env(),
            self.logs,
            self.logs / "receiver.log",
        )
        self.services["receiver"] = receiver
        if not self.start_receiver():
            raise RuntimeError("the receiver did not start (receiver.log)")

    def settings(self) -> dict[str, dict[str, str]]:
        """The audiences of the project's settings.toml: name -> {mailbox, oversight_mode}."""
        import tomllib

        path = self.project / "src" / self.pkg / "settings.toml"
        audiences: dict[str, dict[str, str]] = tomllib.loads(path.read_text())["audiences"]
        return audiences

    def read_deployments(self) -> None:
        from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName

        deployments = self.prefect(
            lambda c: c.read_deployments(
                work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[self.pool]))
            ),
            [],
        )
        for deployment in deployments:
            flow_name = self.prefect(lambda c, f: c.read_flow(f).name, "?", deployment.flow_id)
            self.deployment_ids[f"{flow_name}/{deployment.name}"] = deployment.id
        namespace = importlib.import_module(f"{self.pkg}.namespace")
        self.answer_deployment = self.deployment_ids.get(
            namespace.deployment_name(namespace.ANSWER_INBOUND)
        )
        if self.answer_deployment is None:
            raise RuntimeError(f"no answer-inbound deployment among {sorted(self.deployment_ids)}")
        say(f"deployed: {', '.join(sorted(self.deployment_ids))}")

    def shorten_sweeps(self, seconds: float) -> None:
        """Every interval schedule longer than `seconds` runs every `seconds` (a brief run)."""
        from datetime import timedelta

        from prefect.client.schemas.schedules import IntervalSchedule

        changed = []
        for name, deployment_id in self.deployment_ids.items():
            schedules = self.prefect(lambda c, d: c.read_deployment_schedules(d), [], deployment_id)
            for schedule in schedules:
                interval = getattr(schedule.schedule, "interval", None)
                if interval is None or interval.total_seconds() <= seconds:
                    continue
                self.prefect(
                    lambda c, d, s, new: c.update_deployment_schedule(d, s, schedule=new),
                    None,
                    deployment_id,
                    schedule.id,
                    IntervalSchedule(interval=timedelta(seconds=seconds)),
                )
                changed.append(f"{name} {interval.total_seconds():.0f}s")
        say(f"interval schedules shortened to {seconds:.0f} s: {', '.join(changed) or 'none'}")

    def start_worker(self) -> Service:
        self.worker_count += 1
        name = f"chaos-worker-{self.worker_count}"
        # The documented command (README), with a name to tell the workers apart.
        command = [str(self.bin / "prefect"), "worker", "start", "--pool", self.pool]
        worker = Service(
            name,
            [*command, "--type", "process", "--name", name],
            self.env(),
            self.logs,  # any directory: the pull step enters the project
            self.logs / f"{name}.log",
        )
        worker.start()
        with self.lock:
            self.workers.append(worker)
        say(f"started {name} (pid {worker.pid})")
        return worker

    def start_receiver(self, timeout: float = 90) -> bool:
        receiver = self.services["receiver"]
        deadline = time.monotonic() + timeout
        port = receiver.args[-1]
        while time.monotonic() < deadline:
            receiver.start()
            if wait_http(f"http://127.0.0.1:{port}/healthz", 60, receiver):
                say(f"receiver up (pid {receiver.pid})")
                return True
            code = receiver.process.poll() if receiver.process else None
            self.finding(f"the receiver exited at start (code {code}); retrying in 3 s")
            receiver.kill()
            time.sleep(3)
        return False

    # ------------------------------------------------------------------ load

    def deliver_all(self) -> None:
        """Deliver each inbound email at its time (directly to the fake, as the outside world)."""
        started = time.monotonic()
        with self.fake() as client:
            for email in self.emails:
                wait = email.due - (time.monotonic() - started)
                if wait > 0 and self.stopping.wait(wait):
                    return
                for _ in range(5):
                    answer = client.post(
                        "/_fake/inbound",
                        json={
                            "to": email.address,
                            "from": f"customer{email.index}@example.com",
                            "subject": f"Chaos soak question #{email.index}",
                            "markdown": f"Hello, this is question {email.index}. Any news?",
                        },
                    )
                    if answer.status_code == 201:
                        break
                    time.sleep(1)
                answer.raise_for_status()
                body = answer.json()
                email.email_id, email.thread_id = body["email_id"], body["thread_id"]
                email.delivered_at = time.monotonic() - STARTED
        say(f"all {len(self.emails)} inbound emails delivered")

    def run_state(self, email_id: str) -> str:
        """The state name of the answer-inbound run of `email_id` (by its idempotency key)."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterIdempotencyKey

        runs = self.prefect(
            lambda c: c.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    idempotency_key=FlowRunFilterIdempotencyKey(any_=[f"answer-inbound:{email_id}"])
                ),
                limit=1,
            ),
            None,
        )
        if runs is None:
            return "unknown (Prefect unreachable)"
        if not runs:
            return "no run"
        state = runs[0].state
        return state.name if state is not None else "no state"

    def operate(self) -> None:
        """The human: decides each pending reply at a random moment (some at once, before the
        run has suspended; some kept for the next receiver outage, decided while nobody
        listens)."""
        by_thread = {}
        plan: dict[str, tuple[float, str]] = {}
        decided: set[str] = set()
        with self.fake(self.operator_key) as operator, self.fake() as admin:
            while not self.stopping.wait(0.5):
                by_thread = {e.thread_id: e for e in self.emails if e.thread_id}
                try:
                    pending = operator.get("/v1/oversight/pending").json()["emails"]
                except (httpx.HTTPError, ValueError, KeyError):
                    continue
                now = time.monotonic()
                for item in pending:
                    if item["id"] in plan or item["id"] in decided:
                        continue
                    rng = self.operator_rng
                    action = "reject" if rng.random() < self.args.reject_share else "approve"
                    roll = rng.random()
                    if roll < 0.3:
                        delay = 0.0  # at once: often before the run has suspended
                    elif roll < 0.45 and self.outages_left > 0:
                        delay = math.inf  # kept for the next receiver outage
                    else:
                        delay = rng.uniform(3.0, self.args.think)
                    plan[item["id"]] = (now + delay, action)
                with self.lock:
                    urgent, self.decide_now = self.decide_now, 0
                if urgent:
                    ordered = sorted(plan, key=lambda i: plan[i][0])
                    kept = [i for i in ordered if plan[i][0] == math.inf]
                    for item_id in kept or ordered[:urgent]:
                        plan[item_id] = (now, plan[item_id][1])
                if self.draining.is_set():
                    plan = {i: (min(d, now + 5), a) for i, (d, a) in plan.items()}
                for item_id, (due, action) in list(plan.items()):
                    if due > now:
                        continue
                    del plan[item_id]
                    decided.add(item_id)
                    self.decide(operator, admin, by_thread, item_id, action)

    def decide(
        self,
        operator: httpx.Client,
        admin: httpx.Client,
        by_thread: dict[str, EmailRecord],
        item_id: str,
        action: str,
    ) -> None:
        email: EmailRecord | None = None
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, StopIteration):
            mailbox = next(e.mailbox_id for e in self.emails if e.gated)
            reply = admin.get(f"/v1/mailboxes/{mailbox}/emails/{item_id}").json()
            email = by_thread.get(reply["thread_id"])
        state = self.run_state(email.email_id) if email is not None else "not a soak email"
        answer = operator.post("/v1/oversight/decide", json={"email_id": item_id, "action": action})
        self.decisions[f"{action} -> {answer.status_code}"] += 1
        if email is not None and answer.is_success:
            email.decision, email.decided_at = action, time.monotonic() - STARTED
            email.run_state_at_decision = state
            email.decided_during = self.current_fault

    # ------------------------------------------------------------------ faults

    def fault_plan(self) -> list[str]:
        """Each kind `repeat` times, shuffled, never the same kind twice in a row."""
        kinds = [k for k in FAULT_KINDS if k in self.args.faults]
        plan: list[str] = []
        for _ in range(1000):
            plan = kinds * self.args.repeat
            self.rng.shuffle(plan)
            if all(a != b for a, b in itertools.pairwise(plan)):
                return plan
        return plan

    def inject(self, kind: str) -> FaultRecord:
        record = FaultRecord(kind, time.monotonic() - STARTED)
        with self.lock:
            self.current_fault = kind
        try:
            getattr(self, f"fault_{kind}")(record)
        finally:
            with self.lock:
                self.current_fault = ""
            record.ended = time.monotonic() - STARTED
        say(f"fault {kind}: {'done' if record.injected else 'NOT INJECTED'}: {record.detail}")
        return record

    def worker_runs(self) -> Iterator[tuple[Service, str]]:
        """(live worker, flow run id) for each flow-run process under a worker."""
        with self.lock:
            workers = [w for w in self.workers if w.running()]
        for worker in workers:
            assert worker.pid is not None
            for pid in descendants(worker.pid):
                run_id = flow_run_of(pid)
                if run_id is not None:
                    yield worker, run_id

    def _kill_worker_in(self, record: FaultRecord, state_type: str, within: float) -> None:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        deadline = time.monotonic() + within
        while time.monotonic() < deadline and not self.stopping.is_set():
            pairs = list(self.worker_runs())
            if pairs:
                ids = [UUID(r) for _, r in pairs]
                by_id = FlowRunFilter(id=FlowRunFilterId(any_=ids))
                runs = self.prefect(lambda c, f: c.read_flow_runs(flow_run_filter=f), [], by_id)
                wanted = {
                    str(r.id): r
                    for r in runs
                    if r.state is not None
                    and r.state.type.value == state_type
                    and r.deployment_id == self.answer_deployment
                }
                victim = next((w for w, r in pairs if r in wanted), None)
                if victim is not None:
                    names = {
                        str(r.id): f"{r.name} {r.state.name if r.state else '-'}" for r in runs
                    }
                    runs_here = sorted({r for w, r in pairs if w is victim})
                    pids = victim.kill(signal.SIGKILL)
                    record.injected = True
                    # Whole ids: Prefect's are time-ordered, so runs made together share a prefix.
                    listed = ", ".join(f"{r} {names.get(r, '?')}" for r in runs_here)
                    record.detail = (
                        f"kill -9 {victim.name} and its {len(pids) - 1} child processes; "
                        f"its flow runs: {listed}"
                    )
                    time.sleep(self.rng.uniform(2, 5))
                    self.wait_api(120)
                    replacement = self.start_worker()
                    record.detail += f"; replaced by {replacement.name}"
                    return
            time.sleep(0.2)
        record.detail = f"no worker had an answer-inbound run {state_type} within {within:.0f} s"

    def fault_kill_running(self, record: FaultRecord) -> None:
        self._kill_worker_in(record, "RUNNING", self.args.fault_wait)

    def fault_kill_submitting(self, record: FaultRecord) -> None:
        self._kill_worker_in(record, "PENDING", self.args.fault_wait)

    def fault_receiver_down(self, record: FaultRecord) -> None:
        receiver = self.services["receiver"]
        receiver.kill(signal.SIGKILL)
        down = self.rng.uniform(12, 20)
        with self.lock:
            self.decide_now += 3  # decisions while nobody listens
            self.outages_left -= 1
        record.injected = True
        time.sleep(down)
        up = self.start_receiver()
        record.detail = f"receiver killed, down {down:.1f} s (MultiMail retries ~7 s)" + (
            "" if up else "; DID NOT COME BACK"
        )

    def fault_server_restart(self, record: FaultRecord) -> None:
        # Rather while answer-inbound runs are in flight.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(True for _ in self.worker_runs()):
            time.sleep(0.5)
        in_flight = len(list(self.worker_runs()))
        graceful = sum(1 for f in self.faults if f.kind == "server_restart") % 2 == 0
        sig = signal.SIGTERM if graceful else signal.SIGKILL
        self.server.stop(sig)
        down = self.rng.uniform(3, 8)
        time.sleep(down)
        started = time.monotonic()
        up = self.server.start()
        record.injected = True
        record.detail = (
            f"Prefect server {'SIGTERM' if graceful else 'SIGKILL'} with {in_flight} flow-run "
            f"processes alive, down {down:.1f} s, back after "
            f"{time.monotonic() - started:.1f} s" + ("" if up else "; DID NOT COME BACK")
        )

    def fault_duplicates(self, record: FaultRecord) -> None:
        proxy = self.webhook_proxy
        assert proxy is not None
        before = Counter(proxy.injected)
        proxy.duplicating = True
        replayed = proxy.replay_earlier(5)
        window = self.rng.uniform(20, 30)
        time.sleep(window)
        proxy.duplicating = False
        time.sleep(16)  # the copies scheduled in the window land
        made = proxy.injected - before
        record.injected = sum(made.values()) > 0
        record.detail = (
            f"{window:.0f} s window ({replayed} earlier deliveries replayed): "
            f"{made['same_id']} copies under the same delivery id, "
            f"{made['new_id']} re-signed under a new id, "
            f"{made['answered_502']} accepted deliveries answered 502 to MultiMail"
        )

    def wait_api(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server.healthy():
                return True
            time.sleep(0.5)
        return False

    def watch(self) -> None:
        """Notice a worker or the receiver that exits by itself; replace it."""
        while not self.stopping.wait(2):
            with self.lock:
                dead = [w for w in self.workers if not w.running() and not w.planned_down]
            for worker in dead:
                code = worker.process.poll() if worker.process else None
                worker.planned_down = True
                self.finding(f"{worker.name} exited by itself (code {code}); replacing it")
                if self.wait_api(120):
                    self.start_worker()
            receiver = self.services["receiver"]
            if not receiver.running() and not receiver.planned_down:
                code = receiver.process.poll() if receiver.process else None
                self.finding(f"the receiver exited by itself (code {code}); restarting it")
                receiver.planned_down = True
                self.wait_api(120)
                self.start_receiver()

    # ------------------------------------------------------------------ drain and checks

    def all_runs(self, deployment_ids: list[UUID]) -> list[Any]:
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        def read(client: Any) -> list[Any]:
            found: list[Any] = []
            while True:
                page = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=deployment_ids)),
                    offset=len(found),
                    limit=200,
                )
                found.extend(page)
                if len(page) < 200:
                    return found

        runs: list[Any] = self.prefect(read, [])
        return runs

    def unfinished_runs(self) -> list[Any]:
        """Runs of the project left non-final: every answer-inbound run that is not final, and
        runs of the other deployments non-final for longer than OTHER_RUN_GRACE_SECONDS (a run
        scheduled for the future is not counted)."""
        from datetime import UTC, datetime

        now = datetime.now(UTC)
        left = []
        for run in self.all_runs(list(self.deployment_ids.values())):
            state = run.state
            if state is None or state.type.value in FINAL_TYPES:
                continue
            if run.deployment_id == self.answer_deployment:
                left.append(run)
                continue
            if state.type.value == "SCHEDULED" and state.name == "Scheduled":
                when = state.state_details.scheduled_time or run.expected_start_time
                if when is not None and when > now:
                    continue
            if (now - state.timestamp).total_seconds() > OTHER_RUN_GRACE_SECONDS:
                left.append(run)
        return left

    def email_status(self, client: httpx.Client, email: EmailRecord) -> dict[str, Any]:
        """What MultiMail holds for one inbound email: its replies and its recorded state."""
        if not email.email_id:
            return {"replies": [], "state": "", "outcome": "not delivered"}
        base = f"/v1/mailboxes/{email.mailbox_id}"
        thread = client.get(f"{base}/threads/{email.thread_id}").json()
        tags = client.get(f"{base}/emails/{email.email_id}/tags").json()["tags"]
        replies = [e for e in thread["emails"] if e["direction"] == "outbound"]
        statuses = [r["status"] for r in replies]
        state = str(tags.get("state", ""))
        if len(replies) > 1:
            outcome = "duplicate"
        elif statuses == ["sent"]:
            outcome = "answered"
        elif statuses == ["rejected"]:
            outcome = "rejected" if state == "reply-rejected" else "rejection not recorded"
        elif not replies:
            outcome = "no reply"
        elif statuses[0] in PENDING_REPLY:
            outcome = "reply " + statuses[0]
        else:
            outcome = "reply " + statuses[0]
        return {"replies": statuses, "state": state, "outcome": outcome}

    def drain(self) -> tuple[float | None, dict[str, dict[str, Any]], list[Any]]:
        """Until every email is answered or rejected and no run is left, or the timeout."""
        assert self.api_proxy is not None
        self.api_proxy.faults.enabled = False
        self.draining.set()
        last_fault = max((f.ended for f in self.faults), default=time.monotonic() - STARTED)
        deadline = time.monotonic() + self.args.drain_timeout
        statuses: dict[str, dict[str, Any]] = {}
        left: list[Any] = []
        next_report = 0.0
        with self.fake() as client:
            while True:
                for email in self.emails:
                    known = statuses.get(email.email_id, {})
                    # Read again until the run has recorded its outcome too: the report shows
                    # the tags as they are at the end, not when MultiMail sent the reply.
                    if known.get("outcome") in ("answered", "rejected") and str(
                        known.get("state", "")
                    ).startswith("reply-"):
                        continue
                    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                        statuses[email.email_id] = self.email_status(client, email)
                outcomes = Counter(s["outcome"] for s in statuses.values())
                resolved = outcomes["answered"] + outcomes["rejected"]
                left = self.unfinished_runs() if self.server.healthy() else left
                now = time.monotonic() - STARTED
                if resolved == len(self.emails) and not left and self.server.healthy():
                    say(f"drained: {resolved} emails resolved, no run left")
                    return max(0.0, now - last_fault), statuses, left
                if time.monotonic() > deadline:
                    say(f"drain timeout ({self.args.drain_timeout:.0f} s)")
                    return None, statuses, left
                if now >= next_report:
                    kinds = Counter(r.state.name for r in left if r.state is not None)
                    say(
                        f"draining: {resolved}/{len(self.emails)} resolved "
                        f"({dict(outcomes)}); runs left {len(left)} {dict(kinds)}"
                    )
                    next_report = now + 30
                self.stopping.wait(self.args.check_every)

    # ------------------------------------------------------------------ report

    def run_details(self) -> dict[str, list[Any]]:
        """email id -> its answer-inbound runs, oldest first."""
        assert self.answer_deployment is not None
        runs: dict[str, list[Any]] = {}
        for run in sorted(self.all_runs([self.answer_deployment]), key=lambda r: r.created):
            runs.setdefault(str(run.parameters.get("email_id")), []).append(run)
        return runs

    def overlapping(self, runs: list[Any]) -> bool:
        """Whether two runs of one email were Running at the same time."""
        from datetime import UTC, datetime

        spans = []
        for run in runs:
            states = self.prefect(lambda c, r: c.read_flow_run_states(r), [], run.id)
            states = sorted(states, key=lambda s: s.timestamp)
            for state, after in zip(states, [*states[1:], None], strict=True):
                if state.type.value == "RUNNING":
                    end = after.timestamp if after is not None else datetime.now(UTC)
                    spans.append((state.timestamp, end, run.id))
        spans.sort()
        return any(
            b[0] < a[1] and a[2] != b[2] for i, a in enumerate(spans) for b in spans[i + 1 :]
        )

    def concurrency_evidence(self) -> list[str]:
        lines = []
        for name, deployment_id in sorted(self.deployment_ids.items()):
            deployment = self.prefect(lambda c, d: c.read_deployment(d), None, deployment_id)
            limit = getattr(deployment, "global_concurrency_limit", None)
            if limit is not None:
                lines.append(
                    f"{name}: deployment concurrency limit {limit.limit}, "
                    f"active slots {limit.active_slots}"
                )
        queues = self.prefect(lambda c: c.read_work_queues(work_pool_name=self.pool), [])
        for queue in queues:
            if queue.concurrency_limit is not None:
                lines.append(f"work queue {queue.name}: limit {queue.concurrency_limit}")
        pool = self.prefect(lambda c: c.read_work_pool(self.pool), None)
        if pool is not None and pool.concurrency_limit is not None:
            lines.append(f"work pool {self.pool}: limit {pool.concurrency_limit}")
        return lines

    def secrets_in_logs(self) -> list[str]:
        secrets = [s for s in (self.admin_key, self.operator_key, self.signing_secret) if s]
        found = []
        files = [p for p in self.logs.rglob("*") if p.is_file() and p.suffix == ".log"]
        files.append(self.server.log_file())
        for path in files:
            with contextlib.suppress(OSError):
                text = path.read_bytes()
                if any(s.encode() in text for s in secrets):
                    found.append(str(path))
        return found

    def report(
        self, drain: float | None, statuses: dict[str, dict[str, Any]], left: list[Any]
    ) -> int:
        runs = self.run_details()
        rows = []
        duplicates = missing = overlaps = 0
        for email in self.emails:
            status = statuses.get(email.email_id, {"replies": [], "state": "", "outcome": "?"})
            email_runs = runs.get(email.email_id, [])
            overlap = len(email_runs) > 1 and self.overlapping(email_runs)
            overlaps += overlap
            outcome = status["outcome"]
            duplicates += outcome == "duplicate" or overlap
            missing += outcome not in ("answered", "rejected", "duplicate")
            rows.append(
                {
                    **{k: v for k, v in asdict(email).items() if k not in ("due",)},
                    "runs": [f"{r.state.name if r.state else '-'}:{r.id}" for r in email_runs],
                    "replies": status["replies"],
                    "recorded": status["state"],
                    "outcome": outcome + (" (overlapping runs)" if overlap else ""),
                }
            )
        (self.logs / "emails.json").write_text(json.dumps(rows, indent=1))
        print("\nper email (id, audience, runs, replies, recorded state, operator, outcome):")
        for row in rows:
            decision = row["decision"] or "-"
            if row["decision"]:
                decision += f" at run state {row['run_state_at_decision'] or '?'}"
                if row["decided_during"]:
                    decision += f" during {row['decided_during']}"
            print(
                f"  #{row['index']:<3} {row['email_id'] or '-':<26} {row['audience']:<10} "
                f"runs {len(row['runs'])} [{' '.join(row['runs'])}] "
                f"replies {row['replies']} state {row['recorded'] or '-'}; "
                f"operator {decision}; {row['outcome']}"
            )
        outcomes = Counter(r["outcome"] for r in rows)
        kinds = Counter(f.kind for f in self.faults if f.injected)
        wanted = [k for k in FAULT_KINDS if k in self.args.faults]
        short = [k for k in wanted if kinds[k] < self.args.repeat]
        early = sum(
            1
            for e in self.emails
            if e.decision and e.run_state_at_decision not in ("Suspended", "Paused")
        )
        assert self.webhook_proxy is not None
        assert self.api_proxy is not None
        answers = self.webhook_proxy.receiver_answers()
        with self.fake() as client:
            deliveries = self.read_deliveries(client)
        gave_up = Counter(d["event_type"] for d in deliveries if d["status"] == "failed")
        leaked = self.concurrency_evidence()
        secrets = self.secrets_in_logs()
        gated = sum(e.gated for e in self.emails)
        print("\nfaults (seconds since start):")
        for fault in self.faults:
            print(
                f"  {fault.started:7.1f}-{fault.ended:7.1f} {fault.kind:<16} "
                f"{'ok ' if fault.injected else 'NOT'} {fault.detail}"
            )
        print("\nruns left non-final after the drain:")
        for run in left:
            state = run.state
            print(
                f"  {run.id} {run.name} ({self.deployment_name(run.deployment_id)}): "
                f"{state.name if state else '-'} since {state.timestamp if state else '-'}"
            )
        if not left:
            print("  none")
        print("\nfindings on the way:")
        for item in self.findings:
            print(f"  {item.at:7.1f}s {item.what}")
        if not self.findings:
            print("  none")
        print("\nsummary")
        ungated = len(self.emails) - gated
        print(f"emails:       {len(self.emails)} ({gated} gated, {ungated} ungated)")
        print(f"answered:     {outcomes['answered']}")
        print(f"rejected:     {outcomes['rejected']}")
        print(f"duplicates:   {duplicates}")
        print(f"missing:      {missing}")
        print(f"stuck runs:   {len(left)}")
        drained = "not drained" if drain is None else f"{drain:.0f} s"
        timeout = f"timeout {self.args.drain_timeout:.0f} s"
        print(f"drain time:   {drained} after the last fault ({timeout})")
        other = {k: v for k, v in outcomes.items() if k not in ("answered", "rejected")}
        print(f"other outcomes: {dict(other) or 'none'}")
        unrecorded = sum(
            1 for r in rows if r["outcome"] == "answered" and r["recorded"] != "reply-sent"
        )
        print(f"answered, 'reply-sent' not recorded on the email: {unrecorded}")
        per_email = [len(runs.get(e.email_id, [])) for e in self.emails]
        print(f"runs per email: {self.spread(per_email)}")
        print(f"overlapping runs of one email: {overlaps}")
        print(
            f"faults injected: {dict(kinds)}; API proxy: {dict(self.api_proxy.counts)}; "
            f"webhook copies: {dict(self.webhook_proxy.injected)}"
        )
        print(
            f"operator decisions: {dict(self.decisions)}; {early} made before the run was suspended"
        )
        print(f"receiver answers (event, status): {dict(sorted(answers.items()))}")
        for error, count in self.webhook_proxy.receiver_errors().most_common(5):
            print(f"receiver error x{count}: {error}")
        print(f"deliveries MultiMail gave up on: {dict(gave_up) or 'none'}")
        for line in leaked:
            print(f"concurrency: {line}")
        print(f"secrets in logs: {secrets or 'none'}")
        failures = []
        if duplicates:
            failures.append(f"{duplicates} duplicated")
        if missing:
            failures.append(f"{missing} without a reply or a recorded rejection")
        if left:
            failures.append(f"{len(left)} runs non-final after the drain")
        if drain is None:
            failures.append("not drained within the timeout")
        if secrets:
            failures.append("a secret in a log")
        if failures:
            print(f"result: FAIL ({'; '.join(failures)})")
            return 1
        if short:
            print(f"result: INCOMPLETE (faults not injected {self.args.repeat}x: {short})")
            return 2
        print("result: PASS")
        return 0

    @staticmethod
    def spread(values: list[int]) -> str:
        if not values:
            return "-"
        return f"min {min(values)}, median {statistics.median(values):g}, max {max(values)}"

    def deployment_name(self, deployment_id: UUID | None) -> str:
        return next((n for n, d in self.deployment_ids.items() if d == deployment_id), "?")

    def read_deliveries(self, client: httpx.Client) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        cursor = None
        for _ in range(1000):
            params: dict[str, Any] = {"limit": 100}
            if cursor:
                params["cursor"] = cursor
            try:
                page = client.get("/v1/webhook-deliveries", params=params).json()
            except (httpx.HTTPError, ValueError):
                break
            found.extend(page.get("deliveries", []))
            cursor = page.get("cursor")
            if not cursor:
                break
        return found

    # ------------------------------------------------------------------ the whole soak

    def run(self) -> int:
        self.setup()
        assert self.api_proxy is not None
        threads = [
            threading.Thread(target=self.watch, name="watch", daemon=True),
            threading.Thread(target=self.operate, name="operator", daemon=True),
        ]
        deliverer = threading.Thread(target=self.deliver_all, name="deliver", daemon=True)
        for thread in [*threads, deliverer]:
            thread.start()
        say(
            f"load phase: workers poll every {self.args.worker_poll} s "
            f"(PREFECT_WORKER_QUERY_SECONDS); API faults "
            f"{self.args.api_fault_rate:.0%} of requests; stuck-run bound "
            + (
                f"{self.args.stuck_run_seconds:g} s (MULTIMAIL_STUCK_RUN_SECONDS)"
                if self.args.stuck_run_seconds is not None
                else "as in settings.toml"
            )
        )
        self.api_proxy.faults.enabled = self.args.api_fault_rate > 0
        time.sleep(self.args.warmup)
        plan = self.fault_plan()
        self.outages_left = plan.count("receiver_down")
        for kind in plan:
            if self.stopping.is_set():
                break
            time.sleep(self.rng.uniform(*self.args.gap))
            self.faults.append(self.inject(kind))
        deliverer.join(timeout=self.args.phase + 600)
        say("faults done; draining")
        drain, statuses, left = self.drain()
        self.stopping.set()
        for thread in threads:
            thread.join(timeout=30)
        return self.report(drain, statuses, left)

    def close(self) -> None:
        self.stopping.set()
        for worker in self.workers:
            worker.stop()
        for service in self.services.values():
            service.stop()
        for server in self.servers:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--package", required=True)
    parser.add_argument("--server-state", required=True, help="JSON of the Prefect server")
    parser.add_argument("--logs", required=True)
    parser.add_argument("--emails", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--phase", type=float, help="seconds over which the emails arrive")
    parser.add_argument("--drain-timeout", type=float, default=900.0)
    parser.add_argument("--repeat", type=int, default=2, help="times each fault is injected")
    parser.add_argument("--faults", default=",".join(FAULT_KINDS))
    parser.add_argument("--gap", type=float, nargs=2, default=(5.0, 20.0))
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--fault-wait", type=float, default=240.0)
    parser.add_argument("--worker-poll", type=float, default=2.0)
    parser.add_argument("--api-fault-rate", type=float, default=0.1)
    parser.add_argument("--reject-share", type=float, default=0.25)
    parser.add_argument("--think", type=float, default=40.0, help="longest operator delay, s")
    parser.add_argument("--sweep-interval", type=float)
    parser.add_argument("--stuck-run-seconds", type=float)
    parser.add_argument("--check-every", type=float, default=10.0)
    args = parser.parse_args()
    args.faults = [k.strip() for k in args.faults.split(",") if k.strip()]
    unknown = set(args.faults) - set(FAULT_KINDS)
    if unknown:
        parser.error(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULT_KINDS)}")
    if args.phase is None:
        args.phase = max(60.0, 3.0 * args.emails)
    global TIMELINE
    TIMELINE = Path(args.logs) / "timeline.log"
    os.environ.update(PREFECT_LOGGING_LEVEL="ERROR", PREFECT_API_URL=_api_url(args.server_state))
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="chaos-harness-home-", dir=args.logs)
    soak = Soak(args)
    try:
        code = soak.run()
    except Exception as error:
        say(f"the soak could not run: {type(error).__name__}: {error}")
        code = 3
    finally:
        soak.close()
    sys.exit(code)


def answer_values(text: str) -> dict[str, str]:
    """The top-level scalar answers of .copier-answers.yml (no YAML library in the project)."""
    found = re.findall(r"^([a-z_]+): *(.+)$", text, flags=re.MULTILINE)
    return {key: value.strip().strip("'\"") for key, value in found}


def _api_url(state_file: str) -> str:
    return str(json.loads(Path(state_file).read_text())["api_url"])


if __name__ == "__main__":
    main()
