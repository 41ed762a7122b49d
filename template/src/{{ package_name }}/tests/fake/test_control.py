"""The fake's `/_fake/` control surface, fault injection and server lifecycle.

The approval page and the operator inbox page are tested in `test_approval_page.py`.
"""

from __future__ import annotations

import time
from datetime import datetime

import httpx
import pytest

from ...fake import FakeMultiMail


@pytest.fixture
def mailbox(agent: httpx.Client) -> str:
    mailbox_id: str = agent.post("/v1/mailboxes", json={"address_local": "agent"}).json()["id"]
    return mailbox_id


def send(agent: httpx.Client, mailbox_id: str, subject: str = "Hello") -> httpx.Response:
    body = {"to": ["alice@example.com"], "subject": subject, "markdown": "Hi"}
    return agent.post(f"/v1/mailboxes/{mailbox_id}/send", json=body)


def count_emails(agent: httpx.Client, mailbox_id: str) -> int:
    return len(agent.get(f"/v1/mailboxes/{mailbox_id}/emails").json()["emails"])


# ---------------------------------------------------------------- keys, inbound, inbox


def test_fake_keys_have_the_requested_scopes(control: httpx.Client) -> None:
    created = control.post("/_fake/keys", json={"scopes": ["read"], "name": "ro"})
    assert created.status_code == 201
    body = created.json()
    assert body["scopes"] == ["read"]
    assert body["api_key"].startswith("mm_live_")
    headers = {"Authorization": f"Bearer {body['api_key']}"}
    assert control.get("/v1/account", headers=headers).status_code == 200
    assert (
        control.post("/v1/mailboxes", headers=headers, json={"address_local": "x"}).status_code
        == 403
    )
    assert control.post("/_fake/keys", json={"scopes": ["root"]}).status_code == 400


def test_fake_inbound_creates_an_unread_email(
    control: httpx.Client, agent: httpx.Client, mailbox: str
) -> None:
    response = control.post(
        "/_fake/inbound",
        json={
            "to": "agent@demo.multimail.dev",
            "from": "bob@example.com",
            "subject": "Hi",
            "markdown": "Hello",
        },
    )
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "unread"
    assert set(body) == {"email_id", "thread_id", "status"}
    read = agent.get(f"/v1/mailboxes/{mailbox}/emails/{body['email_id']}").json()
    assert (read["from"], read["markdown"], read["direction"]) == (
        "bob@example.com",
        "Hello",
        "inbound",
    )
    missing = control.post(
        "/_fake/inbound",
        json={"to": "nobody", "from": "b@example.com", "subject": "", "markdown": ""},
    )
    assert missing.status_code == 404
    bad_sender = control.post(
        "/_fake/inbound", json={"to": mailbox, "from": "nope", "subject": "", "markdown": ""}
    )
    assert bad_sender.status_code == 400


def test_operator_inbox_over_http(control: httpx.Client, agent: httpx.Client, mailbox: str) -> None:
    send(agent, mailbox)
    agent.post(f"/v1/mailboxes/{mailbox}/request-upgrade", json={"target_mode": "monitored"})
    messages = control.get("/_fake/operator/inbox").json()["messages"]
    assert [m["kind"] for m in messages] == ["approval_notice", "upgrade_code"]
    notice, code = messages
    assert "code" not in notice
    assert code["code"].isdigit()
    for message in messages:
        assert {"id", "kind", "mailbox_id", "subject", "body", "created_at"} <= set(message)
        assert message["mailbox_id"] == mailbox


def test_reset_wipes_everything(
    fake: FakeMultiMail, control: httpx.Client, agent: httpx.Client, mailbox: str
) -> None:
    send(agent, mailbox)
    control.post("/_fake/clock/advance", json={"seconds": 3600})
    assert control.post("/_fake/reset").json() == {"status": "reset"}
    assert agent.get("/v1/mailboxes").status_code == 401  # keys are gone too
    assert fake.operator_inbox() == []
    key = fake.create_key(["read"])
    response = control.get("/v1/mailboxes", headers={"Authorization": f"Bearer {key}"})
    assert response.json() == {"mailboxes": []}


def test_clock_advance(control: httpx.Client) -> None:
    before = datetime.fromisoformat(
        control.get("/_fake/clock").json()["now"].replace("Z", "+00:00")
    )
    after = control.post("/_fake/clock/advance", json={"seconds": 7200}).json()["now"]
    moved = datetime.fromisoformat(after.replace("Z", "+00:00")) - before
    assert 7200 <= moved.total_seconds() < 7260
    assert control.post("/_fake/clock/advance", json={"seconds": -1}).status_code == 400


# ---------------------------------------------------------------- faults


def test_fixed_status_fault_with_count_limit(
    control: httpx.Client, agent: httpx.Client, mailbox: str
) -> None:
    rule = control.post(
        "/_fake/faults", json={"status": 503, "count": 2, "path_prefix": "/v1/mailboxes"}
    )
    assert rule.status_code == 201
    assert [send(agent, mailbox).status_code for _ in range(2)] == [503, 503]
    assert count_emails(agent, mailbox) == 0  # faulted requests were not applied
    assert send(agent, mailbox).status_code == 202


def test_fault_matches_method_and_prefix_only(
    control: httpx.Client, agent: httpx.Client, mailbox: str
) -> None:
    control.post("/_fake/faults", json={"status": 500, "method": "post", "path_prefix": "/v1/mail"})
    assert agent.get("/v1/account").status_code == 200
    assert agent.get("/v1/mailboxes").status_code == 200
    response = send(agent, mailbox)
    assert response.status_code == 500
    assert set(response.json()) == {"error"}
    assert count_emails(agent, mailbox) == 0  # a status fault does not apply the request
    assert control.delete("/_fake/faults").status_code == 200
    assert send(agent, mailbox).status_code == 202


def test_429_fault_carries_retry_after(control: httpx.Client, agent: httpx.Client) -> None:
    control.post("/_fake/faults", json={"status": 429, "retry_after": 7})
    response = agent.get("/v1/account")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"


def test_error_rate_is_repeatable_with_a_seed(control: httpx.Client, agent: httpx.Client) -> None:
    def pattern() -> list[int]:
        control.delete("/_fake/faults")
        control.post("/_fake/faults", json={"status": 502, "error_rate": 0.5, "seed": 7})
        return [agent.get("/v1/account").status_code for _ in range(20)]

    first = pattern()
    assert set(first) == {200, 502}
    assert pattern() == first


def test_latency_fault_delays_the_response(control: httpx.Client, agent: httpx.Client) -> None:
    control.post("/_fake/faults", json={"latency": 0.3, "count": 1})
    started = time.monotonic()
    assert agent.get("/v1/account").status_code == 200
    assert time.monotonic() - started >= 0.3


def test_drop_response_applies_the_request_then_breaks_the_connection(
    control: httpx.Client, agent: httpx.Client, mailbox: str
) -> None:
    control.post("/_fake/faults", json={"drop_response": True, "count": 1, "method": "POST"})
    body = {"to": ["a@example.com"], "subject": "S", "markdown": "M", "idempotency_key": "k"}
    with pytest.raises(httpx.TransportError):
        agent.post(f"/v1/mailboxes/{mailbox}/send", json=body)
    assert count_emails(agent, mailbox) == 1  # it was applied
    retry = agent.post(f"/v1/mailboxes/{mailbox}/send", json=body)
    assert retry.status_code == 200
    assert retry.json()["idempotent"] is True


def test_faults_never_touch_the_control_surface(control: httpx.Client) -> None:
    control.post("/_fake/faults", json={"status": 500})
    assert control.get("/_fake/operator/inbox").status_code == 200
    assert control.get("/_fake/faults").json()["faults"][0]["status"] == 500
    assert control.post("/_fake/faults", json={"status": 200}).status_code == 400


# ---------------------------------------------------------------- server lifecycle


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.com"])  # noqa: S104
def test_non_loopback_bind_is_refused(host: str) -> None:
    with pytest.raises(ValueError, match="local"):
        FakeMultiMail(host=host)
    FakeMultiMail(host=host, allow_non_loopback=True)  # allowed on request (not started)


def test_server_starts_on_a_free_port_and_stops() -> None:
    with FakeMultiMail(host="localhost") as server:
        assert server.base_url == f"http://127.0.0.1:{server.port}"
        assert server.port > 0
        response = httpx.get(f"{server.base_url}/_fake/clock", trust_env=False)
        assert response.status_code == 200
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.base_url}/_fake/clock", trust_env=False, timeout=1)


def test_the_fake_fixture_starts_clean(fake: FakeMultiMail) -> None:
    assert fake.state.list_mailboxes() == {"mailboxes": []}
    assert fake.operator_inbox() == []
    assert fake.state.list_faults() == {"faults": []}


# ---------------------------------------------------------------- OpenAPI


def test_openapi_describes_v1_only(control: httpx.Client) -> None:
    response = control.get("/v1/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    paths = schema["paths"]
    assert not [p for p in paths if p.startswith("/_fake")]
    send_op = paths["/v1/mailboxes/{mailbox_id}/send"]["post"]
    assert "requestBody" in send_op
    assert "202" in send_op["responses"]
    assert send_op["security"]  # the bearer key is described
    assert schema["components"]["securitySchemes"]
