"""Subjects and streams derived from protobuf names, so there is no second table of strings to keep in step.

An event `crm.identity.v1.UserInvited` is published on subject `crm.identity.v1.UserInvited` into the stream
`CRM_IDENTITY`, which holds `crm.identity.>`: one stream per producing service.

A namespace (CRM_EVENTS_NAMESPACE, empty by default) goes in front of every subject and stream name, so several
environments or concurrent test runs can share one NATS server without seeing each other's events:
namespace `t1a2b` gives subject `t1a2b.crm.identity.v1.UserInvited` in stream `t1a2b_CRM_IDENTITY`. The outbox
stores the subject without the namespace; the namespace is a deployment fact, applied when publishing.
"""

from __future__ import annotations

import re

from google.protobuf.message import Message

PREFIX = "crm"

# Letters, digits, `_` and `-`: valid both as a subject token and inside a stream name.
_NAMESPACE = re.compile(r"^[A-Za-z0-9_-]*$")


def event_type(payload: Message | type[Message]) -> str:
    return payload.DESCRIPTOR.full_name


def subject_for(type_name: str) -> str:
    return type_name


def context_of(type_name: str) -> str:
    """`crm.identity.v1.UserInvited` -> `identity` (also accepts subjects and wildcards like `crm.identity.>`)."""
    parts = type_name.split(".")
    if len(parts) < 3 or parts[0] != PREFIX or parts[1] in ("*", ">"):
        raise ValueError(f"not a CRM event type: {type_name}")
    return parts[1]


def check_namespace(namespace: str) -> str:
    if not _NAMESPACE.match(namespace):
        raise ValueError(f"events namespace must be letters, digits, '_' or '-': {namespace!r}")
    return namespace


def namespaced(subject: str, namespace: str = "") -> str:
    """The subject as it travels on NATS: `crm.identity.v1.UserInvited` -> `<ns>.crm.identity.v1.UserInvited`."""
    return f"{namespace}.{subject}" if namespace else subject


def strip_namespace(subject: str, namespace: str = "") -> str:
    if namespace and subject.startswith(namespace + "."):
        return subject[len(namespace) + 1 :]
    return subject


def stream_for_context(context: str, namespace: str = "") -> str:
    name = f"{PREFIX.upper()}_{context.upper()}"
    return f"{namespace}_{name}" if namespace else name


def stream_subjects(context: str, namespace: str = "") -> list[str]:
    return [namespaced(f"{PREFIX}.{context}.>", namespace)]


def dead_letter_subject(service: str, durable: str, namespace: str = "") -> str:
    """Where a consumer's undeliverable events go: one subject per consumer, so they can be replayed per consumer."""
    return namespaced(f"dlq.{service}.{durable}", namespace)


DEAD_LETTER_STREAM = "CRM_DEAD_LETTERS"
DEAD_LETTER_SUBJECTS = ["dlq.>"]


def dead_letter_stream(namespace: str = "") -> str:
    return f"{namespace}_{DEAD_LETTER_STREAM}" if namespace else DEAD_LETTER_STREAM


def dead_letter_stream_subjects(namespace: str = "") -> list[str]:
    return [namespaced(s, namespace) for s in DEAD_LETTER_SUBJECTS]


def inbox_prefix(service: str) -> str:
    """The reply inboxes of one service (`_INBOX.<service>.<id>`): JetStream answers, publish acks and the pulled
    events of its consumers arrive there, and only that service's NATS user may subscribe to them."""
    return f"_INBOX.{service}"
