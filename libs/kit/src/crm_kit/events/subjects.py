"""Subjects and streams derived from protobuf names, so there is no second table of strings to keep in step.

An event `crm.identity.v1.UserInvited` is published on subject `crm.identity.v1.UserInvited` into the stream
`CRM_IDENTITY`, which holds `crm.identity.>`: one stream per producing service.
"""

from google.protobuf.message import Message

PREFIX = "crm"


def event_type(payload: Message | type[Message]) -> str:
    return payload.DESCRIPTOR.full_name


def subject_for(type_name: str) -> str:
    return type_name


def context_of(type_name: str) -> str:
    """`crm.identity.v1.UserInvited` -> `identity`."""
    parts = type_name.split(".")
    if len(parts) < 4 or parts[0] != PREFIX:
        raise ValueError(f"not a CRM event type: {type_name}")
    return parts[1]


def stream_for_context(context: str) -> str:
    return f"{PREFIX.upper()}_{context.upper()}"


def stream_subjects(context: str) -> list[str]:
    return [f"{PREFIX}.{context}.>"]


def dead_letter_subject(service: str, durable: str) -> str:
    return f"dlq.{service}.{durable}"


DEAD_LETTER_STREAM = "CRM_DEAD_LETTERS"
DEAD_LETTER_SUBJECTS = ["dlq.>"]
