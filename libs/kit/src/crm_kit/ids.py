"""Identifiers: UUIDv7 strings everywhere, so ids sort by creation time and keyset pages stay cheap."""

import uuid

import uuid_utils


def new_id() -> str:
    return str(uuid_utils.uuid7())


def is_uuid(value: str, *, canonical: bool = False) -> bool:
    """Whether `value` is a UUID; with `canonical`, only in the form `new_id` writes (lower-case, hyphenated)."""
    try:
        parsed = uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return False
    return not canonical or str(parsed) == value
