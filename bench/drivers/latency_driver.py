"""Runs inside a generated project's environment (see bench/approval_latency.py)."""

from __future__ import annotations

import argparse
import importlib
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from itertools import pairwise
from typing import Any, cast
from uuid import UUID

from _on_fake import provisioned_fake, quiet_prefect


class Operator(threading.Thread):
    """Approves each pending reply `think` seconds after it shows up; records when."""

    def __init__(self, client: Any, think: float) -> None:
        super().__init__(daemon=True)
        self.client, self.think = client, think
        self.seen: dict[str, float] = {}  # email id -> when it showed up as pending
        self.done: set[str] = set()  # email ids decided
        self.decided: dict[str, float] = {}  # inbound subject -> time of decision
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.05):
            now = time.time()
            for item in self.client.list_pending():
                first = self.seen.setdefault(item.id, now)
                if now - first >= self.think and item.id not in self.done:
                    self.client.decide(item.id, "approve")
                    self.done.add(item.id)
                    self.decided[item.subject.removeprefix("Re: ")] = time.time()


def running_seconds(run_id: UUID) -> float:
    """Seconds the flow run spent in Running states (a worker process held for it)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        states = sorted(client.read_flow_run_states(run_id), key=lambda s: s.timestamp)
    held = 0.0
    for state, following in pairwise(states):
        if state.is_running():
            held += (following.timestamp - state.timestamp).total_seconds()
    return held


def summary(name: str, latencies: list[float], held: list[float]) -> None:
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    print(
        f"{name:<8} decision -> flow finished: p50 {statistics.median(ordered):5.2f} s, "
        f"p95 {p95:5.2f} s; Running (worker held) per flow run: "
        f"{statistics.mean(held):5.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--package", required=True)
    parser.add_argument("--flows", type=int, default=5)
    parser.add_argument("--think", type=float, default=3.0)
    parser.add_argument("--runner-poll", type=float, default=10.0)
    args = parser.parse_args()
    quiet_prefect("latency-prefect-home-")
    pkg = args.package

    with provisioned_fake(pkg, webhook_backoff=0.2) as on_fake:
        fake, client = on_fake.fake, on_fake.client
        audience = on_fake.settings.replies.audience
        address = next(s.address for s in on_fake.states if s.audience == audience)
        operator_client = on_fake.operator_client()
        operator = Operator(operator_client, args.think)
        operator.start()

        from prefect.client.schemas.objects import FlowRun
        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL
        from prefect.testing.utilities import prefect_test_harness

        flows = importlib.import_module(f"{pkg}.flows.answer_inbound")
        receiver = importlib.import_module(f"{pkg}.inbound.receiver")
        serving = importlib.import_module(f"{pkg}.fake.background")
        provision = importlib.import_module(f"{pkg}.multimail.provision")
        namespace = importlib.import_module(f"{pkg}.namespace")
        served_answer = namespace.deployment_name(namespace.ANSWER_INBOUND, served=True)

        with prefect_test_harness(server_startup_timeout=120):
            # Poll: the flow run waits in-process.
            poll_latency, poll_held = [], []
            for i in range(args.flows):
                subject = f"poll #{i}"
                inbound = fake.deliver_inbound(
                    to=address, sender="a@example.com", subject=subject, markdown="?"
                )
                state = flows.answer_inbound(inbound, wait="poll", return_state=True)
                finished = time.time()
                poll_latency.append(finished - operator.decided[subject])
                poll_held.append(running_seconds(state.state_details.flow_run_id))

            # Suspend: the flows run as a served deployment; the receiver resumes them.
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            url = f"http://127.0.0.1:{port}/multimail/webhook"
            subscription = provision.subscribe_receiver(client, url)
            app = receiver.create_receiver(subscription.signing_secret, read_tags=client.get_tags)
            env = {
                **os.environ,
                "PREFECT_API_URL": str(PREFECT_API_URL.value()),
                "PREFECT_RUNNER_POLL_FREQUENCY": str(int(args.runner_poll)),
            }
            serve = subprocess.Popen(
                [sys.executable, "-m", f"{pkg}", "serve"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            from prefect.client.orchestration import get_client

            try:
                with (
                    serving.BackgroundServer(app, port=port, name="receiver"),
                    get_client(sync_client=True) as prefect_client,
                ):
                    deadline = time.monotonic() + 60
                    while True:
                        try:
                            prefect_client.read_deployment_by_name(served_answer)
                            break
                        except Exception:
                            if time.monotonic() > deadline:
                                raise
                            time.sleep(0.5)
                    runs = {}
                    for i in range(args.flows):
                        subject = f"suspend #{i}"
                        inbound = fake.deliver_inbound(
                            to=address, sender="a@example.com", subject=subject, markdown="?"
                        )
                        run = cast(
                            FlowRun,
                            run_deployment(
                                served_answer,
                                parameters={"email_id": inbound, "wait": "suspend"},
                                timeout=0,
                            ),
                        )
                        runs[subject] = run.id
                    suspend_latency, suspend_held = [], []
                    for subject, run_id in runs.items():
                        while True:
                            run = prefect_client.read_flow_run(run_id)
                            if run.state is not None and run.state.is_final():
                                break
                            time.sleep(0.2)
                        if not run.state.is_completed():
                            raise SystemExit(f"{subject}: {run.state}")
                        end = run.end_time.timestamp() if run.end_time else time.time()
                        suspend_latency.append(end - operator.decided[subject])
                        suspend_held.append(running_seconds(run_id))
            finally:
                serve.terminate()
                serve.wait(timeout=30)
        operator.stopping.set()

    print(
        f"{args.flows} flow runs each; the human decides {args.think:.1f} s after the reply "
        f"is pending; serve polls every {args.runner_poll:.0f} s"
    )
    summary("poll", poll_latency, poll_held)
    summary("suspend", suspend_latency, suspend_held)


if __name__ == "__main__":
    main()
