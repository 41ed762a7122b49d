"""Runs inside a generated project's environment (see bench/throughput.py): msg/s per pattern.

One `fake serve` process per transport (plain HTTP, then TLS); the Prefect patterns run on a
throwaway local SQLite server (`prefect_test_harness`). The fake is reset between patterns, so
each starts from an empty mailbox. Each pattern's sends are checked: every message exactly once.

Then, on the first transport, in the same process and without any reset: the patterns in more
than one order (`--orders`), each step timed from inside its flow (the send path's own rate)
and from the flow call (what the next flow run waited for Prefect's server before it started),
and the cost of a task run (`--overhead-rounds`): a mail task against a plain `@task` making the
same HTTP call and against the bare call, and the Prefect server CPU each task run costs.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import logging
import os
import pstats
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

LOCKED = "database is locked"


class Busy503:
    """Counts the Prefect API's 503 answers (a SQLite lock), which Prefect 3.9 never prints.

    The server drops its own 'database is locked' log lines unless
    PREFECT_SERVER_LOG_RETRYABLE_ERRORS is set, and its client retries a 503 after 2, 4, 8, 16 s,
    logging that at DEBUG only: this filter on the client's logger counts those retries and
    keeps the DEBUG records out of the output.
    """

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()
        self.attach()

    def attach(self) -> None:
        """(Again:) Prefect sets its logging up anew, e.g. when `prefect.main` is first imported."""
        client = logging.getLogger("prefect.client")
        client.setLevel(logging.DEBUG)
        if self._filter not in client.filters:
            client.addFilter(self._filter)

    def _filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        if "retryable status code 503" in record.getMessage():
            with self._lock:
                self.count += 1
        return False


class ServerCPU:
    """CPU seconds used so far by the Prefect server subprocess (Linux /proc; 0 elsewhere)."""

    def __init__(self) -> None:
        self.pid = self._find()

    @staticmethod
    def _find() -> int | None:
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == os.getpid() and "uvicorn" in command and "prefect" in command:
                return int(entry.name)
        return None

    def seconds(self) -> float:
        if self.pid is None:
            return 0.0
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def wait_idle(self, limit: float = 180.0) -> float:
        """Wait until the server uses under 5% of a core for a second; returns the seconds."""
        started = time.perf_counter()
        last = self.seconds()
        while time.perf_counter() - started < limit:
            time.sleep(1.0)
            now = self.seconds()
            if now - last < 0.05:
                break
            last = now
        return time.perf_counter() - started


class OutputWatch:
    """Pass this process's stdout and stderr through, counting lines that report a DB lock.

    Installed before the Prefect server starts, so the server (a subprocess inheriting these
    descriptors) is watched too.
    """

    def __init__(self) -> None:
        self.locks = 0
        for fd in (1, 2):
            read, write = os.pipe()
            real = os.dup(fd)
            os.dup2(write, fd)
            os.close(write)
            threading.Thread(target=self._pump, args=(read, real), daemon=True).start()
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)

    def _pump(self, read: int, real: int) -> None:
        with os.fdopen(read, "rb") as lines:
            for line in lines:
                if LOCKED.encode() in line:
                    self.locks += 1
                os.write(real, line)


#: C calls whose own time is a thread blocked, not working.
BLOCKING = {
    "recv": "waiting for the server",
    "recv_into": "waiting for the server",
    "read": "waiting for the server",
    "poll": "waiting for the server",
    "acquire": "waiting for another thread",
    "get": "waiting for another thread",
    "sleep": "sleeping (retry backoff, Prefect's heartbeat)",
}


class ThreadProfiles:
    """cProfile in the calling thread and in every thread started while it is on.

    A pattern's time is spread over threads (task runner workers, send_many's pool), which a
    plain cProfile of the main thread would not see. Own time of C calls shows blocking too:
    `recv_into` of a socket is waiting for the server, `acquire` of a lock waiting for a thread.
    """

    def __init__(self) -> None:
        self.profiles = [cProfile.Profile()]

    def _in_new_thread(self, frame: Any, event: str, arg: Any) -> None:
        sys.setprofile(None)
        profile = cProfile.Profile()
        self.profiles.append(profile)
        profile.enable()

    def __enter__(self) -> ThreadProfiles:
        threading.setprofile(self._in_new_thread)
        self.profiles[0].enable()
        return self

    def __exit__(self, *exc: object) -> None:
        self.profiles[0].disable()
        threading.setprofile(None)

    def summary(self, package: str, top: int = 8) -> list[str]:
        """Blocked time by kind, the CPU hot spots, and the project's own calls (cumulative)."""
        stats = pstats.Stats(self.profiles[0])
        for profile in self.profiles[1:]:
            stats.add(profile)
        table: dict[tuple[str, int, str], Any] = stats.stats  # type: ignore[attr-defined]
        blocked: Counter[str] = Counter()
        working: list[tuple[float, str]] = []
        project: list[tuple[float, str]] = []
        for (path, line, name), (_, _, own, cumulative, _) in table.items():
            call = re.fullmatch(r"<method '(\w+)' of .*>|<built-in method time\.(\w+)>", name)
            kind = BLOCKING.get(next(filter(None, call.groups()), "")) if call else None
            where = self._where(path, line, name)
            if kind:
                blocked[kind] += own
            else:
                working.append((own, where))
            if f"/{package}/" in path:
                project.append((cumulative, where))
        total = sum(blocked.values()) + sum(own for own, _ in working) or 1.0
        lines = [f"{s:7.2f} s {s / total:6.1%}  {kind}" for kind, s in blocked.most_common()]
        lines.append("busy, by own time:")
        lines += [f"{s:7.2f} s {s / total:6.1%}  {w}" for s, w in sorted(working)[::-1][:top]]
        lines.append(f"{package}'s own functions, by cumulative time:")
        lines += [f"{s:7.2f} s           {w}" for s, w in sorted(project)[::-1][:top]]
        return lines

    @staticmethod
    def _where(path: str, line: int, name: str) -> str:
        found = re.search(r"site-packages/(.+)", path)
        place = found[1] if found else Path(path).name if path != "~" else ""
        return f"{name}  {place}:{line}" if place else name


@dataclass
class Fake:
    """One `fake serve` process and a fresh account on it (see `fresh`)."""

    url: str
    process: subprocess.Popen[str]
    ca_file: str | None
    key: str = field(default="", repr=False)

    def post(self, path: str, **body: Any) -> Any:
        response = httpx.post(f"{self.url}{path}", json=body, verify=self.ca_file or True)
        response.raise_for_status()
        return response.json()

    def operator_inbox(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/_fake/operator/inbox", verify=self.ca_file or True)
        response.raise_for_status()
        messages: list[dict[str, Any]] = response.json()["messages"]
        return messages


@contextmanager
def fake_process(package: str, tls: bool) -> Iterator[Fake]:
    """`<project> fake serve` in a process of its own, as a user starts it."""
    command = [sys.executable, "-m", f"{package}", "fake", "serve", "--port", "0"]
    process = subprocess.Popen(
        [*command, *(["--tls"] if tls else [])],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    head = process.stdout.readline() + (process.stdout.readline() if tls else "")
    url = re.search(r"https?://127\.0\.0\.1:\d+", head)
    ca = re.search(r"SSL_CERT_FILE=(\S+)", head)
    if url is None or (tls and ca is None):
        process.kill()
        raise SystemExit(f"`fake serve` did not start: {head}")
    try:
        yield Fake(url[0], process, ca[1] if ca else None)
    finally:
        process.terminate()
        process.wait(timeout=10)


def blocks(messages: list[Message], count: int) -> list[list[Message]]:
    """`messages` cut into `count` blocks in order, the last one shorter if need be."""
    size = -(-len(messages) // count)
    return [messages[n * size : (n + 1) * size] for n in range(count)]


@dataclass(frozen=True)
class Message:
    audience: str
    to: list[str]
    subject: str
    markdown: str
    idempotency_key: str


class Bench:
    """The patterns, each sending a list of messages to the current fake account."""

    def __init__(self, package: str, fake: Fake, args: argparse.Namespace) -> None:
        self.pkg = {
            name: importlib.import_module(f"{package}.{module}")
            for name, module in {
                "credentials": "mail.connection",
                "operator": "fake.operator",
                "client": "multimail.client",
                "tasks": "mail.tasks",
                "bulk": "mail.bulk",
            }.items()
        }
        self.package, self.fake, self.args = package, fake, args
        self.audience = ""
        self.mailbox = ""
        #: perf_counter when the last Prefect pattern's flow body started (see `waited`).
        self.started = 0.0
        #: Blocks of messages for the threads run in turn with send_many's blocks in the same
        #: flow body (`beside`), so that both meet the same conditions (a Prefect server
        #: still recording earlier task runs on the same cores, a fake slower for a moment);
        #: their msg/s over all blocks in `beside_rate`.
        self.beside: list[list[Message]] = []
        self.beside_rate: float | None = None
        self.flows = self._flows()

    def fresh(self) -> None:
        """Reset the fake and provision every audience again: the next pattern starts empty."""
        credentials = self.pkg["credentials"]
        self.fake.post("/_fake/reset")
        self.fake.key = self.fake.post("/_fake/keys", scopes=["read", "send", "admin"])["api_key"]
        os.environ.update(MULTIMAIL_API_URL=self.fake.url, MULTIMAIL_API_KEY=self.fake.key)
        credentials.reset()
        settings = credentials.current_settings()
        client = credentials.shared_client()
        states = self.pkg["operator"].provision_on_fake(self.fake, client, settings)
        # The fastest audience to send from: one whose mail is not held for approval.
        order = ["autonomous", "monitored", "gated_send", "gated_all"]
        ready = [s for s in states if s.ready and s.mode in order]
        best = min(ready, key=lambda s: order.index(s.mode))
        self.audience, self.mailbox = best.audience, best.mailbox_id

    def messages(self, tag: str) -> list[Message]:
        key = self.pkg["tasks"].message_key
        return [
            Message(
                self.audience,
                ["customer@example.com"],
                f"{tag} #{i}",
                f"Hello, this is message {i}.",
                key("throughput", tag, str(i)),
            )
            for i in range(self.args.messages)
        ]

    def newest(self) -> str | None:
        """The id of the newest outbound email (the next `check` looks at those after it)."""
        page = (
            self.pkg["credentials"]
            .shared_client()
            .list_emails(self.mailbox, direction="outbound", limit=1)
        )
        return page.emails[0].id if page.emails else None

    def check(self, sent: list[Message], since: str | None = None) -> str:
        """'' when the account holds each message exactly once, else what is wrong.

        `since`: only the outbound emails after that one (sent by this pattern) are compared.
        """
        client = self.pkg["credentials"].shared_client()
        subjects: Counter[str] = Counter()
        cursor = None
        while True:
            page = client.list_emails(
                self.mailbox, direction="outbound", since_id=since, limit=100, cursor=cursor
            )
            subjects.update(e.subject for e in page.emails)
            cursor = page.cursor
            if cursor is None:
                break
        wanted = {m.subject for m in sent}
        lost = len(wanted - set(subjects))
        duplicates = sum(n - 1 for n in subjects.values())
        extra = len(set(subjects) - wanted)
        return (
            f"{lost} lost, {duplicates} duplicates, {extra} unexpected"
            if (lost or duplicates or extra)
            else ""
        )

    # ------------------------------------------------------------------------ the patterns

    def pooled(self, messages: list[Message]) -> float:
        from pydantic import SecretStr

        client_module = self.pkg["client"]

        started = time.perf_counter()
        with client_module.MultiMailClient(self.fake.url, SecretStr(self.fake.key)) as client:
            for m in messages:
                client.send(
                    self.mailbox,
                    to=m.to,
                    subject=m.subject,
                    markdown=m.markdown,
                    idempotency_key=m.idempotency_key,
                )
        return time.perf_counter() - started

    def per_call(self, messages: list[Message]) -> float:
        """The seed's pattern, `requests.post` per send: a new connection (and TLS handshake)."""
        requests = importlib.import_module("requests")  # comes with Prefect; no stubs needed
        url = f"{self.fake.url}/v1/mailboxes/{self.mailbox}/send"
        headers = {"Authorization": f"Bearer {self.fake.key}"}
        started = time.perf_counter()
        for m in messages:
            body = {
                "to": m.to,
                "subject": m.subject,
                "markdown": m.markdown,
                "idempotency_key": m.idempotency_key,
            }
            verify = self.fake.ca_file or True
            response = requests.post(url, json=body, headers=headers, verify=verify)
            response.raise_for_status()
        return time.perf_counter() - started

    def threads(self, messages: list[Message]) -> float:
        """`--concurrency` threads sharing one pooled client, no Prefect: what send_many does
        without its task run, the reference the issue 19 goals compare send_many with."""
        from pydantic import SecretStr

        client_module = self.pkg["client"]

        def send(client: Any, m: Message) -> None:
            client.send(
                self.mailbox,
                to=m.to,
                subject=m.subject,
                markdown=m.markdown,
                idempotency_key=m.idempotency_key,
            )

        started = time.perf_counter()
        with (
            client_module.MultiMailClient(self.fake.url, SecretStr(self.fake.key)) as client,
            ThreadPoolExecutor(max_workers=self.args.concurrency) as pool,
        ):
            list(pool.map(lambda m: send(client, m), messages))
        return time.perf_counter() - started

    def task_sequential(self, messages: list[Message]) -> float:
        return float(self.flows["sequential"](messages))

    def map_single(self, messages: list[Message]) -> float:
        return self._with_workers("map_single", self.args.map_workers, messages)

    def fanout(self, messages: list[Message]) -> float:
        return self._with_workers("fanout", self.args.fanout_workers, messages)

    def _with_workers(self, name: str, workers: int, *args: Any) -> float:
        from prefect.task_runners import ThreadPoolTaskRunner

        runner: Any = ThreadPoolTaskRunner(max_workers=workers)
        return float(self.flows[name].with_options(task_runner=runner)(*args))

    def bulk(self, messages: list[Message]) -> float:
        return float(self.flows["bulk"](messages, self.args.concurrency))

    def retried_bulk(self, messages: list[Message]) -> float:
        """send_many in the second attempt of a flow run whose first attempt failed."""
        quiet = logging.getLogger("prefect.flow_runs")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)  # the first attempt's failure is on purpose
        try:
            return float(self.flows["retried_bulk"](messages, self.args.concurrency))
        finally:
            quiet.setLevel(level)

    def plain_task(self, messages: list[Message]) -> float:
        """A plain `@task` making send_email's HTTP call, sequential in a flow (point 3)."""
        return float(self.flows["plain_sequential"](messages))

    def waited(self, called: float) -> float:
        """Seconds from calling the last Prefect pattern's flow to its body starting."""
        return max(0.0, self.started - called)

    def _flows(self) -> dict[str, Any]:
        from prefect import flow, task, unmapped
        from prefect.cache_policies import NO_CACHE
        from prefect.runtime import flow_run

        tasks, bulk, credentials = self.pkg["tasks"], self.pkg["bulk"], self.pkg["credentials"]

        def mark() -> float:
            self.started = time.perf_counter()
            return self.started

        def send_many_timed(messages: list[Message], concurrency: int) -> float:
            """send_many's seconds. With `self.beside` set, `messages` go in as many blocks,
            one send_many each, taking turns with the threads (which goes first alternates)."""
            if not self.beside:
                started = time.perf_counter()
                all_sent(bulk.send_many(outgoing(messages), max_concurrency=concurrency))
                return time.perf_counter() - started
            mine = blocks(messages, len(self.beside))
            seconds = threads_seconds = 0.0
            for n, (block, theirs) in enumerate(zip(mine, self.beside, strict=True)):
                if n % 2 == 0:
                    threads_seconds += self.threads(theirs)
                started = time.perf_counter()
                all_sent(bulk.send_many(outgoing(block), max_concurrency=concurrency))
                seconds += time.perf_counter() - started
                if n % 2 == 1:
                    threads_seconds += self.threads(theirs)
            self.beside_rate = sum(map(len, self.beside)) / threads_seconds
            return seconds

        @task(cache_policy=NO_CACHE, persist_result=False)
        def plain_send(
            audience: str, to: list[str], subject: str, markdown: str, idempotency_key: str
        ) -> None:
            client = credentials.shared_client()
            mailbox = credentials.current_settings().audience(audience).mailbox
            client.send(
                client.mailbox_id(mailbox),
                to=to,
                subject=subject,
                markdown=markdown,
                idempotency_key=idempotency_key,
            )

        @flow
        def plain_sequential(messages: list[Message]) -> float:
            started = mark()
            for m in messages:
                plain_send(m.audience, m.to, m.subject, m.markdown, m.idempotency_key)
            return time.perf_counter() - started

        @flow
        def sequential(messages: list[Message]) -> float:
            started = mark()
            for m in messages:
                tasks.send_email(m.audience, m.to, m.subject, m.markdown, m.idempotency_key)
            return time.perf_counter() - started

        def outgoing(messages: list[Message]) -> list[Any]:
            return [bulk.OutgoingEmail(**vars(m)) for m in messages]

        def all_sent(outcomes: list[Any]) -> None:
            failed = [o.error for o in outcomes if not o.sent]
            if failed:
                raise RuntimeError(f"send_many did not send {len(failed)}: {failed[:3]}")

        @flow
        def map_single(messages: list[Message]) -> float:
            started = mark()
            futures = tasks.send_email.map(
                unmapped(messages[0].audience),
                [m.to for m in messages],
                [m.subject for m in messages],
                [m.markdown for m in messages],
                [m.idempotency_key for m in messages],
            )
            futures.result()
            return time.perf_counter() - started

        @flow
        def fanout(messages: list[Message]) -> float:
            """The recommended fan-out: chunks of messages, one send_many task run each."""
            started = mark()
            size = self.args.chunk
            chunks = [outgoing(messages[i : i + size]) for i in range(0, len(messages), size)]
            concurrency = max(1, self.args.concurrency // self.args.fanout_workers)
            futures = bulk.send_many.map(chunks, max_concurrency=unmapped(concurrency))
            all_sent([outcome for outcomes in futures.result() for outcome in outcomes])
            return time.perf_counter() - started

        @flow
        def bulk_send(messages: list[Message], concurrency: int) -> float:
            mark()
            return send_many_timed(messages, concurrency)

        @flow(retries=1, retry_delay_seconds=0)
        def retried_bulk(messages: list[Message], concurrency: int) -> float:
            if flow_run.run_count == 1:
                raise RuntimeError("the first attempt fails before sending anything")
            mark()
            return send_many_timed(messages, concurrency)

        return {
            "plain_sequential": plain_sequential,
            "sequential": sequential,
            "map_single": map_single,
            "fanout": fanout,
            "bulk": bulk_send,
            "retried_bulk": retried_bulk,
        }


PATTERNS = {
    "pooled": "pooled httpx client, sequential (the limit)",
    "per_call": "requests.post per call (the seed's pattern)",
    "task_sequential": "send_email task, sequential in a flow",
    "map_single": "send_email.map, {map_workers} task runs at a time",
    "fanout": "send_many.map over chunks of {chunk}, {fanout_workers} at a time",
    "bulk": "send_many task, max_concurrency={concurrency}",
}


@dataclass
class Figures:
    rates: dict[str, list[float]] = field(default_factory=dict)
    locks: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def rate(self, pattern: str) -> float:
        return statistics.median(self.rates[pattern]) if self.rates.get(pattern) else 0.0


def measure(
    bench: Bench,
    watch: OutputWatch,
    busy: Busy503,
    server: ServerCPU,
    patterns: list[str],
    label: str,
) -> Figures:
    """Each pattern's own rate: before each, the Prefect server has recorded the pattern
    before it (else a pattern pays for the task runs of the one before; the orders below
    measure that on purpose)."""
    figures = Figures()
    busy.attach()
    for round_ in range(bench.args.rounds):
        for pattern in patterns:
            bench.fresh()
            server.wait_idle()
            messages = bench.messages(f"{label} {pattern} r{round_}")
            locks = watch.locks + busy.count
            seconds = getattr(bench, pattern)(messages)
            time.sleep(0.2)  # let the server's log catch up before counting its lines
            figures.locks[pattern] += watch.locks + busy.count - locks
            problem = bench.check(messages)
            if problem:
                figures.errors.append(f"{label} {pattern} round {round_}: {problem}")
            figures.rates.setdefault(pattern, []).append(len(messages) / seconds)
    return figures


def report(bench: Bench, figures: Figures, label: str) -> list[tuple[str, str]]:
    """Print the table; return the goals missed, as (pattern, what)."""
    args = bench.args
    pooled = figures.rate("pooled")  # 0.0 when the pooled loop was not among the patterns
    print(f"\n{label}: {args.messages} messages per run, median of {args.rounds} round(s)")
    for pattern, rates in figures.rates.items():
        name = PATTERNS[pattern].format(**vars(args))
        spread = f"{min(rates):.0f}-{max(rates):.0f}"
        ratio = f" {figures.rate(pattern) / pooled:5.2f}x pooled" if pooled else ""
        locks = f", {figures.locks[pattern]} DB lock(s)" if pattern in PREFECT_PATTERNS else ""
        print(f"  {name:<52} {figures.rate(pattern):7.0f} msg/s ({spread}){ratio}{locks}")
    missed = []
    rate = figures.rate
    sequential = rate("task_sequential")
    if "map_single" in figures.rates and sequential:
        print(f"  send_email.map / sequential: {rate('map_single') / sequential:.2f}x")
    if "bulk" in figures.rates and rate("bulk") < 0.9 * pooled:
        missed.append(("bulk", f"{label}: bulk below 0.9x the pooled loop"))
    tls_pair = label == "tls" and {"bulk", "per_call"} <= set(figures.rates)
    if tls_pair and rate("bulk") < 3 * rate("per_call"):
        missed.append(("bulk", f"{label}: bulk below 3x the per-call pattern"))
    if "fanout" in figures.rates:
        if rate("fanout") < 0.5 * pooled:
            missed.append(("fanout", f"{label}: fan-out below 0.5x the pooled loop"))
        if "task_sequential" in figures.rates and rate("fanout") < rate("task_sequential"):
            missed.append(("fanout", f"{label}: fan-out slower than the sequential task"))
    if "map_single" in figures.rates and sequential and rate("map_single") < 0.95 * sequential:
        missed.append(("map_single", f"{label}: send_email.map below 0.95x the sequential task"))
    for pattern in PREFECT_PATTERNS:
        if figures.locks[pattern]:
            missed.append((pattern, f"{label}: {pattern} met '{LOCKED}' (a 503 and a retry)"))
    return missed


PREFECT_PATTERNS = ("task_sequential", "map_single", "fanout", "bulk")

#: Patterns that run a flow of their own (their `waited` is the wait for the flow to start).
FLOW_PATTERNS = {*PREFECT_PATTERNS, "retried_bulk", "plain_task"}

#: What `--orders default` runs, one order after the other in the same process, nothing reset:
#: send_many after a .map, after the sequential task, after send_many, in and after a retried
#: flow run, with the pooled threads (the reference) at the start, the middle and the end.
ORDERS = [
    "threads,bulk,map_single,bulk,threads,task_sequential,bulk,retried_bulk,bulk,threads",
    "threads,retried_bulk,bulk,task_sequential,threads,fanout,bulk,map_single,bulk,threads",
]

STEPS = {
    **PATTERNS,
    "threads": "{concurrency} threads on one pooled client, no Prefect",
    "retried_bulk": "send_many in a flow's retry (1st attempt failed)",
    "plain_task": "plain @task with the same HTTP call, sequential",
}


@dataclass
class Step:
    pattern: str
    rate: float
    #: msg/s of the threads run just before and just after it in its flow (send_many only).
    beside: float | None
    #: Seconds from the flow call to its body (None: no flow of its own).
    waited: float | None
    #: 503s ('database is locked') Prefect's client met and retried during the step.
    locks: int
    #: CPU seconds the Prefect server used during the step.
    server_cpu: float
    #: Seconds waited before the step for the Prefect server to finish recording what the
    #: steps before it did (None: not waited, the step met whatever was left).
    settled: float | None = None


def run_order(
    bench: Bench, busy: Busy503, server: ServerCPU, steps: list[str], tag: str, settle: bool
) -> tuple[list[Step], list[str]]:
    """Each step in turn, nothing reset in between; returns the steps and what went wrong.

    `settle`: before each step, wait until the Prefect server has recorded what the steps
    before it did (its CPU idle). The process keeps everything; only the server's backlog,
    which competes for the same cores, is out of the way.
    """
    done: list[Step] = []
    errors: list[str] = []
    busy.attach()
    for i, pattern in enumerate(steps, 1):
        settled = server.wait_idle() if settle else None
        messages = bench.messages(f"{tag} step {i} {pattern}")
        paired = pattern in ("bulk", "retried_bulk")
        pairs = bench.args.pairs if paired else 0
        bench.beside = blocks(bench.messages(f"{tag} step {i} threads"), pairs) if pairs else []
        bench.beside_rate = None
        since = bench.newest()
        locks, cpu = busy.count, server.seconds()
        called = time.perf_counter()
        seconds = getattr(bench, pattern)(messages)
        waited = bench.waited(called) if pattern in FLOW_PATTERNS else None
        beside = bench.beside_rate
        step = Step(pattern, len(messages) / seconds, beside, waited, busy.count - locks, 0.0)
        step.server_cpu = server.seconds() - cpu
        step.settled = settled
        done.append(step)
        problem = bench.check([*messages, *(m for side in bench.beside for m in side)], since)
        bench.beside = []
        if problem:
            errors.append(f"{tag} step {i} {pattern}: {problem}")
    return done, errors


def report_order(bench: Bench, steps: list[Step], title: str, tag: str) -> list[str]:
    """Print one order as a table; return the goals it missed."""
    reference = [s.rate for s in steps if s.pattern == "threads"]
    threads = statistics.median(reference) if reference else 0.0
    print(f"\n{title}")
    print(
        "| # | pattern | msg/s in its flow | x threads (order's median) | x threads beside it "
        "| flow start waited | 503s | server CPU | server settled before |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    missed = []
    for i, step in enumerate(steps, 1):
        ratio = f"{step.rate / threads:.2f}x" if threads else "-"
        beside = f"{step.rate / step.beside:.2f}x" if step.beside else "-"
        waited = f"{step.waited:.1f} s" if step.waited is not None else "-"
        name = STEPS[step.pattern].format(**vars(bench.args))
        settled = f"{step.settled:.1f} s" if step.settled is not None else "-"
        print(
            f"| {i} | {name} | {step.rate:.0f} | {ratio} | {beside} | {waited} | {step.locks} "
            f"| {step.server_cpu:.1f} s | {settled} |"
        )
        if step.beside and step.rate < 0.9 * step.beside:
            ratio = f"{step.rate / step.beside:.2f}x"
            missed.append(f"{tag}, step {i}: send_many at {ratio} the threads beside it")
    waits = [s.waited for s in steps if s.waited is not None]
    if waits:
        print(
            f"flow start: median {statistics.median(waits):.1f} s, longest {max(waits):.1f} s; "
            f"{sum(s.locks for s in steps)} 503 answer(s) retried by Prefect's client"
        )
    return missed


def overhead(bench: Bench, server: ServerCPU, rounds: int) -> list[str]:
    """A mail task against a plain `@task` making the same HTTP call and the bare call, in
    rotating order, each once the server has recorded the one before; prints ms per message
    and the server CPU per task run. Returns misses."""
    idle = server.wait_idle()
    kinds = ["pooled", "plain_task", "task_sequential"]
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    cpu = server.seconds()
    task_runs = 0
    for round_ in range(rounds):
        for kind in kinds[round_ % 3 :] + kinds[: round_ % 3]:
            messages = bench.messages(f"overhead r{round_} {kind}")
            server.wait_idle()
            times[kind].append(getattr(bench, kind)(messages) / len(messages) * 1000)
            task_runs += len(messages) if kind != "pooled" else 0
    drained = server.wait_idle()
    server_ms = (server.seconds() - cpu) / max(task_runs, 1) * 1000
    ms = {kind: statistics.median(values) for kind, values in times.items()}
    mail = ms["task_sequential"] / ms["plain_task"] - 1
    print(
        f"\ntask overhead: {bench.args.messages} messages each, {rounds} round(s), median ms per "
        f"message (server idle first: waited {idle:.0f} s)"
    )
    print("| way of sending one message | ms |")
    print("|---|---:|")
    print(f"| pooled client, no task | {ms['pooled']:.2f} |")
    print(f"| plain `@task` with the same HTTP call | {ms['plain_task']:.2f} |")
    print(f"| `send_email` (mail task) | {ms['task_sequential']:.2f} |")
    print(
        f"mail task over the plain task: {mail:+.0%}; Prefect per task run, in the flow's "
        f"process: {ms['plain_task'] - ms['pooled']:.2f} ms; in the Prefect server "
        f"(recording it): {server_ms:.1f} ms of CPU, {drained:.0f} s to drain after the last one"
    )
    return [f"task overhead: the mail task {mail:+.0%} over a plain task"] if mail > 0.2 else []


def profile(bench: Bench, pattern: str, label: str) -> None:
    """Run `pattern` once more under cProfile (every thread) and print where its time went."""
    bench.fresh()
    with ThreadProfiles() as profiles:
        seconds: float = getattr(bench, pattern)(bench.messages(f"{label} {pattern} profiled"))
    print(
        f"\nprofile of {label} {pattern} ({seconds:.2f} s under the profiler; times summed over "
        "its threads):"
    )
    for line in profiles.summary(bench.package):
        print(f"  {line}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--package", required=True)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8, help="send_many's max_concurrency")
    parser.add_argument("--map-workers", type=int, default=4, help="send_email.map's pool")
    parser.add_argument("--chunk", type=int, default=50, help="messages per send_many (fan-out)")
    parser.add_argument("--fanout-workers", type=int, default=2, help="send_many runs at a time")
    parser.add_argument("--transports", default="plain,tls")
    parser.add_argument("--patterns", default=",".join(PATTERNS))
    parser.add_argument(
        "--orders",
        default="default",
        help="';'-separated orders of steps run in one process without reset (from: "
        f"{', '.join(STEPS)}), 'default' for {len(ORDERS)} built-in ones, or 'none'",
    )
    parser.add_argument(
        "--pairs",
        type=int,
        default=4,
        help="blocks in which a send_many step takes turns with the threads beside it",
    )
    parser.add_argument(
        "--settle",
        choices=["both", "no", "yes"],
        default="both",
        help="run each order as is, and again waiting before each step until the Prefect "
        "server has recorded the earlier steps (both), or only one way",
    )
    parser.add_argument(
        "--overhead-rounds", type=int, default=3, help="rounds of the task overhead (0: none)"
    )
    parser.add_argument(
        "--profile",
        choices=["missed", "always", "never"],
        default="missed",
        help="which to profile",
    )
    args = parser.parse_args()
    patterns = [p for p in args.patterns.split(",") if p]
    unknown = set(patterns) - set(PATTERNS)
    if unknown:
        raise SystemExit(f"unknown patterns {sorted(unknown)}; choose from {list(PATTERNS)}")
    orders = {"default": ORDERS, "none": []}.get(args.orders, args.orders.split(";"))
    orders = [[step for step in order.split(",") if step] for order in orders]
    unknown = {step for order in orders for step in order} - set(STEPS)
    if unknown:
        raise SystemExit(f"unknown steps {sorted(unknown)}; choose from {list(STEPS)}")

    os.environ.update(
        PREFECT_LOGGING_LEVEL="WARNING",
        PREFECT_SERVER_LOGGING_LEVEL="WARNING",  # the server's 'database is locked' errors
        PREFECT_HOME=tempfile.mkdtemp(prefix="throughput-prefect-home-"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    watch = OutputWatch()
    from prefect.testing.utilities import prefect_test_harness

    missed: list[str] = []
    errors: list[str] = []
    with prefect_test_harness(server_startup_timeout=120):
        busy = Busy503()  # after the harness, which sets Prefect's logging up again
        server = ServerCPU()
        transports = [t for t in args.transports.split(",") if t]
        for label in transports:
            with fake_process(args.package, tls=label == "tls") as fake:
                if fake.ca_file:
                    os.environ["SSL_CERT_FILE"] = fake.ca_file
                bench = Bench(args.package, fake, args)
                figures = measure(bench, watch, busy, server, patterns, label)
                errors += figures.errors
                misses = report(bench, figures, label)
                missed += [what for _, what in misses]
                profiled = [pattern for pattern, _ in misses]
                if args.profile == "always":
                    profiled = [p for p in patterns if p not in ("pooled", "per_call")]
                if args.profile != "never":
                    for pattern in dict.fromkeys(profiled):
                        profile(bench, pattern, label)
                if label == transports[0]:
                    settles = {"both": [False, True], "no": [False], "yes": [True]}[args.settle]
                    for n, order in enumerate(orders, 1):
                        for settle in settles:
                            # A new account per order (the fake's quota is 10,000 sends a
                            # month); within the order nothing is reset.
                            bench.fresh()
                            tag = f"{label} order {n}" + (", server settled" if settle else "")
                            steps, wrong = run_order(bench, busy, server, order, tag, settle)
                            errors += wrong
                            title = (
                                f"{tag}: {args.messages} messages a step, in the process that "
                                "ran everything above, nothing reset between steps"
                                + (
                                    "; before each step, the Prefect server finished recording "
                                    "the earlier ones"
                                    if settle
                                    else ""
                                )
                            )
                            missed += report_order(bench, steps, title, tag)
                    if args.overhead_rounds:
                        bench.fresh()
                        missed += overhead(bench, server, args.overhead_rounds)
                os.environ.pop("SSL_CERT_FILE", None)
    print()
    for line in missed:
        print(f"goal missed: {line}")
    for line in errors:
        print(f"WRONG: {line}")
    print(f"exactly once: {'yes' if not errors else 'NO'} (every message once, in every run)")
    sys.stdout.flush()
    raise SystemExit(1 if errors else 0)


if __name__ == "__main__":
    main()
