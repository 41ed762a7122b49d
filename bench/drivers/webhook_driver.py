"""Runs inside a generated project's environment (see bench/webhook_latency.py).

The fake MultiMail delivers inbound mail; its signed webhooks go to the project's receiver,
which records one answer-inbound run per email; `serve` (a runner) or a process worker runs
them. Measures, per email: inbound delivery -> run created -> run finished.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any
from uuid import UUID

from _on_fake import provisioned_fake, quiet_prefect

POOL = "webhook-bench"


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    if not ordered:
        return "no data"
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(ordered):6.2f} s, p95 {p95:6.2f} s"


class Bench:
    """Delivers inbound mail and follows each email's run by its idempotency key."""

    def __init__(self, fake: Any, address: str, deployment_id: UUID) -> None:
        self.fake, self.address, self.deployment_id = fake, address, deployment_id
        self.delivered: dict[str, float] = {}  # email id -> when MultiMail accepted it

    def deliver(self, label: str) -> str:
        started = time.time()
        email_id: str = self.fake.deliver_inbound(
            to=self.address, sender="customer@example.com", subject=label, markdown="Hello?"
        )
        self.delivered[email_id] = started
        return email_id

    def runs(self) -> list[Any]:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        found: list[Any] = []
        with get_client(sync_client=True) as client:
            while True:
                page = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(
                        id=DeploymentFilterId(any_=[self.deployment_id])
                    ),
                    offset=len(found),
                    limit=200,
                )
                found.extend(page)
                if len(page) < 200:
                    return found

    def wait(self, email_ids: list[str], timeout: float) -> dict[str, Any]:
        """The run of each email once every one is final (or the timeout passed)."""
        deadline = time.monotonic() + timeout
        while True:
            by_email = {r.parameters.get("email_id"): r for r in self.runs()}
            mine = {e: by_email[e] for e in email_ids if e in by_email}
            final = [r for r in mine.values() if r.state is not None and r.state.is_final()]
            if len(final) == len(email_ids) or time.monotonic() > deadline:
                return mine
            time.sleep(0.25)

    def report(self, name: str, email_ids: list[str], runs: dict[str, Any]) -> None:
        created = [runs[e].created.timestamp() - self.delivered[e] for e in runs]
        finished = [
            runs[e].end_time.timestamp() - self.delivered[e]
            for e in runs
            if runs[e].end_time is not None and runs[e].state.is_completed()
        ]
        print(f"{name} ({len(email_ids)} inbound emails)")
        print(f"  delivery -> run created:  {percentiles(created)}")
        print(f"  delivery -> run finished: {percentiles(finished)}")


def start_executor(args: argparse.Namespace, pkg: str, env: dict[str, str]) -> Any:
    """`serve` (runs the deployments of prefect.yaml as `local`) or a process worker."""
    logs = Path(tempfile.mkdtemp(prefix="webhook-bench-logs-"))
    out = (logs / f"{args.executor}.log").open("w")
    if args.executor == "serve":
        command = [sys.executable, "-m", f"{pkg}", "serve"]
    else:
        prefect = str(Path(sys.executable).with_name("prefect"))
        command = [prefect, "worker", "start", "--pool", POOL, "--type", "process"]
        command += ["--limit", str(args.limit)]
    print(f"executor log: {out.name}")
    return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def deploy_for_worker(pkg: str, limit: int, env: dict[str, str]) -> None:
    """answer-inbound on a process pool, as `prefect deploy` would register it."""
    from prefect.deployments.runner import RunnerDeployment
    from prefect.types.entrypoint import EntrypointType

    flows = importlib.import_module(f"{pkg}.flows.answer_inbound")
    prefect = str(Path(sys.executable).with_name("prefect"))
    create = [prefect, "work-pool", "create", POOL, "--type", "process", "--overwrite"]
    subprocess.run(create, env=env, check=True, stdout=subprocess.DEVNULL)
    RunnerDeployment.from_flow(
        flows.answer_inbound,
        name="answer-inbound",
        concurrency_limit=limit,
        entrypoint_type=EntrypointType.MODULE_PATH,
    ).apply(work_pool_name=POOL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--package", required=True)
    parser.add_argument("--single", type=int, default=10)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--executor", choices=["serve", "worker"], default="serve")
    parser.add_argument("--poll", type=float, default=2.0)
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--api-url", help="a running Prefect server (else a SQLite test server)")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args()
    quiet_prefect("webhook-bench-prefect-home-")
    if args.api_url:
        os.environ["PREFECT_API_URL"] = args.api_url
    pkg = args.package

    with provisioned_fake(pkg, webhook_backoff=0.2) as on_fake:
        fake, client = on_fake.fake, on_fake.client
        # An audience that sends without a human, if there is one; else a human approves.
        quick = [s for s in on_fake.states if s.mode in ("autonomous", "monitored")]
        state = quick[0] if quick else next(s for s in on_fake.states if s.mode != "read_only")
        operator = None
        if not quick:
            demo = on_fake.module("fake.operator")
            operator = demo.Operator(
                on_fake.operator_client(), lambda _: ("approve", None), lambda _: None
            )
            operator.start()

        from contextlib import nullcontext

        from prefect.testing.utilities import prefect_test_harness

        server = nullcontext() if args.api_url else prefect_test_harness(server_startup_timeout=120)
        with server:
            measure(args, pkg, fake, client, state.address, state.audience)
        if operator is not None:
            operator.stop()


def measure(
    args: argparse.Namespace, pkg: str, fake: Any, client: Any, address: str, audience: str
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    inbound = importlib.import_module(f"{pkg}.inbound.starter")
    receiver = importlib.import_module(f"{pkg}.inbound.receiver")
    serving = importlib.import_module(f"{pkg}.fake.background")
    provision = importlib.import_module(f"{pkg}.multimail.provision")
    api_url = str(PREFECT_API_URL.value())
    env = {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PREFECT_RUNNER_POLL_FREQUENCY": str(int(max(1, args.poll))),
        "PREFECT_WORKER_QUERY_SECONDS": str(args.poll),
    }
    namespace = importlib.import_module(f"{pkg}.namespace")
    if args.executor == "worker":
        deploy_for_worker(pkg, args.limit, env)
        deployment = namespace.deployment_name(namespace.ANSWER_INBOUND)
    else:
        deployment = namespace.deployment_name(namespace.ANSWER_INBOUND, served=True)
    executor = start_executor(args, pkg, env)
    try:
        with get_client(sync_client=True) as prefect_client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    deployment_id = prefect_client.read_deployment_by_name(deployment).id
                    break
                except Exception:
                    if time.monotonic() > deadline or executor.poll() is not None:
                        raise
                    time.sleep(0.5)
        late = LateApp()
        with serving.BackgroundServer(late, name="receiver") as server:
            url = f"{server.base_url}/multimail/webhook"
            subscription = provision.subscribe_receiver(client, url)
            starter = inbound.InboundStarter(
                inbound.MailboxDirectory(credentials_settings(pkg), client.list_mailboxes),
                deployment=deployment,
            )
            late.app = receiver.create_receiver(
                subscription.signing_secret,
                read_tags=client.get_tags,
                handlers=starter.handlers(),
            )
            bench = Bench(fake, address, deployment_id)
            started = time.monotonic()
            singles = []
            for i in range(args.single):
                singles.append(bench.deliver(f"single #{i}"))
                bench.wait(singles[-1:], args.timeout)
            bench.report("single", singles, bench.wait(singles, args.timeout))
            burst = [bench.deliver(f"burst #{i}") for i in range(args.burst)]
            burst_runs = bench.wait(burst, args.timeout)
            bench.report("burst", burst, burst_runs)
            elapsed = time.monotonic() - started
            counts = Counter(r.parameters.get("email_id") for r in bench.runs())
            emails = [*singles, *burst]
            final = bench.wait(emails, 0)
            completed = [e for e, r in final.items() if r.state and r.state.is_completed()]
    finally:
        executor.terminate()
        executor.wait(timeout=60)
    print(f"audience: {audience}; server: {api_url}")
    print(
        f"executor: {args.executor}"
        + (
            f" (process worker, PREFECT_WORKER_QUERY_SECONDS={args.poll}, --limit {args.limit})"
            if args.executor == "worker"
            else f" (runner, PREFECT_RUNNER_POLL_FREQUENCY={int(max(1, args.poll))}, "
            "answer-inbound concurrency from prefect.yaml)"
        )
    )
    print(f"runs started: {sum(1 for e in emails if counts[e] >= 1)}")
    print(f"duplicates:   {sum(max(0, counts[e] - 1) for e in emails)}")
    print(f"lost:         {sum(1 for e in emails if counts[e] == 0)}")
    print(f"not completed: {len(emails) - len(completed)}")
    print(f"wall time:    {elapsed:.1f} s")


def credentials_settings(pkg: str) -> Any:
    return importlib.import_module(f"{pkg}.mail.connection").current_settings()


class LateApp:
    """An ASGI app set once the receiver's signing secret is known (after subscribing)."""

    def __init__(self) -> None:
        self.app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


if __name__ == "__main__":
    main()
