"""The project's command line: demo, provision, setup, serve, resume, the receiver and the fake."""

from __future__ import annotations

import os
import tempfile
import threading
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
fake_app = typer.Typer(no_args_is_help=True, help="The bundled fake MultiMail.")
app.add_typer(fake_app, name="fake")
receiver_app = typer.Typer(no_args_is_help=True, help="The MultiMail webhook receiver.")
app.add_typer(receiver_app, name="receiver")
drafts_app = typer.Typer(no_args_is_help=True, help="The drafting agent.")
app.add_typer(drafts_app, name="drafts")


@app.command()
def demo(
    verbose: Annotated[bool, typer.Option(help="Show Prefect's own log lines too.")] = False,
) -> None:
    """Run the flows end to end against the bundled fake MultiMail (127.0.0.1 only).

    Prefect's state (its temporary server's database, profiles) goes to a new temporary
    PREFECT_HOME unless you set one: the demo never writes to ~/.prefect.
    """
    if "PREFECT_HOME" not in os.environ:
        os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="prefect-demo-")
    typer.echo(f"Prefect state for this demo: {os.environ['PREFECT_HOME']} (PREFECT_HOME)")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect's temporary server gets 20 s to start by default; a busy laptop may need more.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    typer.echo(
        "The flows start Prefect's temporary server at their first run: up to "
        f"{os.environ['PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS']} s on a busy machine "
        "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)."
    )
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from .demo import run_demo

    if not run_demo(typer.echo):
        raise typer.Exit(1)


@app.command("provision")
def provision_command(
    code: Annotated[
        list[str] | None,
        typer.Option(help="AUDIENCE=CODE: apply an upgrade code the operator received."),
    ] = None,
    request_upgrade: Annotated[
        bool,
        typer.Option(
            help="Where a mode must be loosened and no --code is given, ask MultiMail to mail "
            "the operator a one-time code (at most 3 an hour per mailbox)."
        ),
    ] = False,
    webhook_url: Annotated[
        str | None,
        typer.Option(
            help="Subscribe the webhook receiver at this URL to approval decisions and store "
            "the signing secret in the Prefect Secret block webhook_secret_block."
        ),
    ] = None,
) -> None:
    """Create one mailbox per audience and move each to the mode in settings.toml."""
    from ..mail.connection import current_settings, shared_client
    from ..multimail.provision import provision, subscribe_receiver

    codes = {}
    for item in code or []:
        audience, sep, value = item.partition("=")
        if not sep or not value:
            raise typer.BadParameter(f"expected AUDIENCE=CODE, got {item!r}", param_hint="--code")
        codes[audience] = value
    states = provision(shared_client(), current_settings(), codes, request_upgrades=request_upgrade)
    for state in states:
        mark = "ok" if state.ready else "pending"
        typer.echo(
            f"[{mark}] {state.audience}: {state.address} is {state.mode} "
            f"(wanted {state.target}; {', '.join(state.actions)})"
        )
        if "upgrade_requested" in state.actions:
            typer.echo(
                f"       the operator received a code; run: provision --code {state.audience}=CODE"
            )
        elif "upgrade_needed" in state.actions:
            typer.echo(
                "       loosening needs the operator's code: run provision --request-upgrade"
            )
    if webhook_url:
        subscription = subscribe_receiver(shared_client(), webhook_url)
        block = current_settings().webhook_secret_block
        if subscription.signing_secret is None:
            typer.echo(f"[ok] {webhook_url} was already subscribed (secret in block {block!r})")
        else:
            from prefect.blocks.system import Secret

            Secret(value=subscription.signing_secret).save(block, overwrite=True)
            typer.echo(f"[ok] subscribed {webhook_url}; signing secret saved in block {block!r}")


@app.command()
def setup(
    webhook_secret: Annotated[
        bool, typer.Option(help="Also store the webhook signing secret.")
    ] = True,
) -> None:
    """Create or update the Prefect Secret blocks of the API key and webhook signing secret,
    and the limit of answer-inbound's work queue (answer_concurrency_limit in settings.toml).

    Values come from MULTIMAIL_API_KEY / MULTIMAIL_WEBHOOK_SECRET (or .env), else from a hidden
    prompt; they are never printed. Needs PREFECT_API_URL pointing at your Prefect server.
    """
    from ..mail.connection import current_settings
    from .prefect_setup import SetupError, limit_answer_queue, setup_secrets

    def ask(label: str) -> str:
        try:
            return str(typer.prompt(label, default="", show_default=False, hide_input=True))
        except typer.Abort:  # no terminal and nothing on stdin
            return ""

    try:
        settings = current_settings()
        setup_secrets(settings, ask=ask, echo=typer.echo, webhook_secret=webhook_secret)
        limit_answer_queue(settings, echo=typer.echo)
    except SetupError as error:
        typer.echo(f"setup failed: {error}", err=True)
        raise typer.Exit(1) from None


@app.command()
def serve() -> None:
    """Serve the deployments of prefect.yaml locally (no work pool), with their schedules, as
    `<project>-<flow>/local`: runs, suspends and resumes them, at most answer_concurrency_limit
    answer runs (plus one per other deployment) at a time."""
    from prefect import serve as serve_deployments

    from ..mail.connection import current_settings
    from .serve import served_deployments

    # Heartbeats let reconcile-inbound tell a dead run from a slow one (as in prefect.yaml).
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")
    deployments = served_deployments()
    limit = current_settings().answer_concurrency_limit + len(deployments) - 1
    serve_deployments(*deployments, limit=limit)


@app.command()
def resume(
    email_id: Annotated[str, typer.Argument(help="The outbound email a flow run waits for.")],
    audience: Annotated[
        str | None, typer.Option(help="Audience of its mailbox (default: the replies one).")
    ] = None,
) -> None:
    """Resume the flow run suspended while waiting for a decision on EMAIL_ID.

    Resumed before anyone decided, the run cancels the email and reports timed_out.
    """
    import asyncio

    from ..mail.connection import current_settings, shared_client
    from ..oversight.approvals import FLOW_RUN_TAG, resume_waiters

    settings = current_settings()
    client = shared_client()
    mailbox = client.mailbox_id(settings.audience(audience or settings.replies.audience).mailbox)
    outcomes = asyncio.run(resume_waiters(email_id, client.get_tags(mailbox, email_id)))
    if not outcomes:
        typer.echo(f"no flow run waits for {email_id} (it has no {FLOW_RUN_TAG}-* tag)", err=True)
        raise typer.Exit(1)
    for flow_run_id, outcome in outcomes.items():
        typer.echo(f"{outcome}: flow run {flow_run_id}")
    if any(outcome not in ("resumed", "finished") for outcome in outcomes.values()):
        raise typer.Exit(1)


@app.command("answer-run")
def answer_run(
    email_id: Annotated[str, typer.Argument(help="The inbound email.")],
    wait: Annotated[
        bool,
        typer.Option(
            help="Follow the run until it finishes, through a suspension (until a human decides)."
        ),
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the run to appear, and then to finish.")
    ] = 600,
) -> None:
    """Print the id of the answer-inbound flow run started for inbound email EMAIL_ID.

    Its state and its page in the Prefect UI go to stderr, so RUN_ID=$(... answer-run ID) keeps
    the id alone. Exits 1 if no run appears in time or, with --wait, if it ends other than
    Completed. Use it rather than `prefect flow-run watch`, which in Prefect 3.9 reads the run
    before it subscribes to its events and so misses a run that finishes in between.
    """
    import asyncio

    from prefect.exceptions import FlowRunWaitTimeout
    from prefect.flow_runs import wait_for_flow_run
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.settings import get_current_settings

    from ..inbound.answer_run import AnswerRunNotFound, await_answer_run

    try:
        run = asyncio.run(await_answer_run(email_id, timeout=timeout))
        if wait:
            ensure_logging_setup()  # Prefect's console log, where wait_for_flow_run's states go
            run = asyncio.run(wait_for_flow_run(run.id, timeout=int(timeout), log_states=True))
    except (AnswerRunNotFound, FlowRunWaitTimeout) as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from None
    state = run.state.name if run.state else "no state yet"
    page = f"{get_current_settings().ui_url}/runs/flow-run/{run.id}"
    typer.echo(f"{run.name}: {state}  {page}", err=True)
    typer.echo(run.id)
    if wait and not (run.state and run.state.is_completed()):
        raise typer.Exit(1)


@receiver_app.command("serve")
def receiver_serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8026,
    served: Annotated[
        bool,
        typer.Option(
            "--served",
            help="Start the runs on `serve`'s answer-inbound deployment (<flow>/local) instead "
            "of prefect.yaml's.",
        ),
    ] = False,
    deployment: Annotated[
        str | None,
        typer.Option(help="Another deployment that answers inbound mail, as FLOW/DEPLOYMENT."),
    ] = None,
) -> None:
    """Receive MultiMail webhooks: start one answer-inbound run per inbound email, and resume
    the flow runs that wait for a decision.

    It starts while Prefect or MultiMail is down: the signing secret and the API key (each from
    its environment variable, else its Prefect Secret block) are loaded on the first delivery
    that needs them, and a delivery is answered 503 until they can be, so MultiMail retries it.
    """
    import copy
    import logging.config

    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    from ..inbound.receiver import create_receiver
    from ..inbound.receiver import log as receiver_log
    from ..inbound.starter import InboundStarter, MailboxDirectory
    from ..mail.connection import current_settings, resolve_webhook_secret, shared_client
    from ..multimail.models import Mailbox
    from ..namespace import ANSWER_INBOUND, deployment_name

    settings = current_settings()

    def list_mailboxes() -> list[Mailbox]:
        return shared_client().list_mailboxes()

    def read_tags(mailbox_id: str, email_id: str) -> dict[str, str]:
        return shared_client().get_tags(mailbox_id, email_id)

    deployment = deployment or deployment_name(ANSWER_INBOUND, served=served)
    starter = InboundStarter(MailboxDirectory(settings, list_mailboxes), deployment=deployment)
    app_ = create_receiver(
        lambda: resolve_webhook_secret(settings), read_tags=read_tags, handlers=starter.handlers()
    )
    # The receiver's own lines, in uvicorn's format, beside uvicorn's.
    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["loggers"][receiver_log.name] = {
        "handlers": ["default"],
        "level": "INFO",
        "propagate": False,
    }
    logging.config.dictConfig(log_config)

    def origin(from_env: object, variable: str, block: str) -> str:
        return variable if from_env else f"the Prefect Secret block {block!r}"

    receiver_log.info(
        "the webhook signing secret (from %s) and the MultiMail API key (from %s) are loaded "
        "on the first delivery that needs them: until then such a delivery is answered 503 "
        "and MultiMail retries it",
        origin(settings.webhook_secret, "MULTIMAIL_WEBHOOK_SECRET", settings.webhook_secret_block),
        origin(settings.api_key, "MULTIMAIL_API_KEY", settings.api_key_block),
    )
    uvicorn.run(app_, host=host, port=port, access_log=False, log_config=log_config)


@drafts_app.command("eval")
def drafts_eval(
    audience: Annotated[
        str | None, typer.Option(help="Whose prompt and purpose to draft with (default: replies).")
    ] = None,
) -> None:
    """Draft the emails of drafting/eval_cases.json with the configured model and check each.

    Calls the real model (paid; nothing is sent): run it after changing the model or a prompt.
    Exits 1 when a draft fails a check.
    """
    from ..drafting.agent import DraftingError
    from ..drafting.evaluate import evaluate, load_cases
    from ..mail.connection import current_settings

    settings = current_settings()
    if not settings.drafting.enabled:
        typer.echo(
            "No model to evaluate: set [drafting] model in settings.toml (e.g. "
            '"openai:gpt-5-mini") and its key (e.g. OPENAI_API_KEY).',
            err=True,
        )
        raise typer.Exit(2)
    audience = audience or settings.replies.audience
    try:
        verdicts = evaluate(settings, audience, load_cases())
    except DraftingError as error:
        typer.echo(f"Evaluation stopped: {error}", err=True)
        raise typer.Exit(2) from None
    for verdict in verdicts:
        mark = "ok" if not verdict.failures else "FAILED"
        what = f"escalated: {verdict.draft.escalate}" if verdict.draft.escalate else "replied"
        typer.echo(
            f"[{mark}] {verdict.case}: {what}; {verdict.draft.requests} request(s), "
            f"{verdict.draft.input_tokens + verdict.draft.output_tokens} tokens"
        )
        for failure in verdict.failures:
            typer.echo(f"    {failure}")
    failed = sum(1 for v in verdicts if v.failures)
    typer.echo(
        f"{len(verdicts) - failed} of {len(verdicts)} drafts by {settings.drafting.model} passed."
    )
    if failed:
        raise typer.Exit(1)


@fake_app.command("serve")
def fake_serve(
    host: Annotated[str, typer.Option(help="Address to bind; loopback only by default.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to bind (0 picks a free one).")] = 8025,
    allow_non_loopback: Annotated[
        bool, typer.Option(help="Really bind a non-loopback address (the fake has no security).")
    ] = False,
    tls: Annotated[
        bool,
        typer.Option(
            help="Serve HTTPS with a certificate from a CA made at start; clients trust it "
            "with SSL_CERT_FILE set to the CA file printed."
        ),
    ] = False,
) -> None:
    """Serve the fake MultiMail until interrupted; prints its base URL and operator page."""
    from ..fake import FakeMultiMail

    try:
        server = FakeMultiMail(host=host, port=port, allow_non_loopback=allow_non_loopback, tls=tls)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--host") from None
    with server:
        typer.echo(f"Fake MultiMail: {server.base_url}  (use it as MULTIMAIL_API_URL)")
        if server.ca_file:
            typer.echo(f"Trust its CA:   export SSL_CERT_FILE={server.ca_file}")
        typer.echo(f"Operator page:  {server.base_url}/_fake/approvals")
        typer.echo(f"OpenAPI:        {server.base_url}/v1/openapi.json")
        typer.echo("Get a key (state lives in memory until you stop the server):")
        cacert = f" --cacert {server.ca_file}" if server.ca_file else ""
        typer.echo(
            f"  curl -s{cacert} -X POST {server.base_url}/_fake/keys "
            """-H 'Content-Type: application/json' -d '{"scopes": ["read", "send", "admin"]}'"""
        )
        typer.echo("Press Ctrl+C to stop.")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            typer.echo("Stopped.")
