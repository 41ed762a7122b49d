"""The Prefect events this project emits, named `multimail.<noun>.<verb>`, about ids only.

Every event id is derived from the project and what the event is about (`event_id`), so an
event emitted again (a retried or resumed flow, a re-export of the audit log) is stored once:
Prefect's server keeps the first event with a given id and drops the others, while another
project's event about an equal id is its own. Resources are `multimail.<kind>.<MultiMail id>`,
labelled with the project (`multimail.project`); no event carries a body, a subject, an address
or a key (a drafting model's escalation reason, its own words, is cut to 200 characters).
"""

from __future__ import annotations

from uuid import UUID, uuid5

from prefect.events import Event, emit_event

from ..namespace import EVENT_LABEL, PROJECT

#: Namespace of the uuid5 event ids (fixed: changing it would store every event again).
EVENT_NAMESPACE = UUID("6f1d3c0e-8d7a-5b8e-9a57-0c8f2b1e4d21")


def event_id(*identity: str) -> UUID:
    """The id of this project's event about `identity`, the same on every emission."""
    return uuid5(EVENT_NAMESPACE, "\x1f".join((PROJECT, *identity)))


def resource(kind: str, multimail_id: str, **labels: str) -> dict[str, str]:
    """A Prefect resource for one MultiMail object of this project, e.g. `multimail.email.<id>`."""
    return {
        "prefect.resource.id": f"multimail.{kind}.{multimail_id}",
        EVENT_LABEL: PROJECT,
        **labels,
    }


def related(kind: str, multimail_id: str, role: str) -> dict[str, str]:
    return {**resource(kind, multimail_id), "prefect.resource.role": role}


def reply_queued(audience: str, inbound_id: str, reply_id: str, status: str) -> Event | None:
    """`multimail.reply.queued`: MultiMail accepted the reply to `inbound_id` (it may wait for a
    human: `status` says so). Emit it right after the reply call returns."""
    return emit_event(
        "multimail.reply.queued",
        resource=resource("email", reply_id, **{"multimail.audience": audience}),
        related=[related("email", inbound_id, "inbound")],
        payload={"status": status},
        id=event_id("multimail.reply.queued", reply_id),
    )


def reply_decided(audience: str, reply_id: str, outcome: str) -> Event | None:
    """`multimail.reply.decided`: where the reply ended up (sent, rejected, cancelled,
    timed_out, ...). Emit it once the flow knows the outcome."""
    return emit_event(
        "multimail.reply.decided",
        resource=resource("email", reply_id, **{"multimail.audience": audience}),
        payload={"outcome": outcome},
        id=event_id("multimail.reply.decided", reply_id, outcome),
    )


def reply_drafted(
    audience: str, inbound_id: str, model: str, usage: dict[str, int], reason: str | None
) -> Event | None:
    """`multimail.reply.drafted`: `model` drafted the answer to `inbound_id`, or handed it to a
    human (`reason`), using `usage` (requests, tokens). Emit it once the draft exists."""
    return emit_event(
        "multimail.reply.drafted",
        resource=resource("email", inbound_id, **{"multimail.audience": audience}),
        related=[{"prefect.resource.id": f"model.{model}", "prefect.resource.role": "model"}],
        payload={**usage, "model": model, "escalated": reason is not None, "reason": reason},
        id=event_id("multimail.reply.drafted", inbound_id),
    )
