"""Every input has a length bound at the edge, declared here once and derived everywhere else.

Request bodies are bounded as a whole (`CRM_MAX_BODY_BYTES`, 413) and field by field: the models made from
the proto descriptors (`schema.py`) give every string a maxLength, every array maxItems and every map or
object maxProperties, by the field's kind, with the per-field overrides below where the domain needs more.
Query parameters, path parameters and headers are bounded the same way (`routing.py`). A value over its bound
is a 422 problem naming the field, before any service is called; the bounds are in /openapi.json.

The bounds are generous ceilings, not the domain's rules: a service still checks its own (a user's name is
at most 100 characters in identity); what the edge guarantees is that nothing unbounded gets further.
"""

from __future__ import annotations

from crm_kit.context import REQUEST_ID_MAX
from google.protobuf.descriptor import FieldDescriptor

from crm_gateway.settings import GatewaySettings

# Text: names, emails, phone numbers, addresses, codes, tokens, filters…
STRING_MAX_LENGTH = 2_000
# Email addresses (`email`, `*_email`): RFC 5321's longest path.
EMAIL_MAX_LENGTH = 254
# Identifiers (`id`, `*_id`, elements of `*_ids`): UUIDs, and request/trace ids as the kit bounds them.
IDENTIFIER_MAX_LENGTH = REQUEST_ID_MAX
# Free text a person writes at length: notes, descriptions, bodies of interactions, terms of a contract…
LONG_TEXT_MAX_LENGTH = 20_000
LONG_TEXT_FIELDS = frozenset(
    {
        "body",
        "comment",
        "content",
        "description",
        "detail",
        "help_en",
        "help_zh",
        "lost_reason",
        "message",
        "next_step",
        "note",
        "notes",
        "outcome",
        "reason",
        "summary",
        "summary_en",
        "summary_zh",
        "terms",
        "thank_you_message",
        "value",
        "won_reason",
    }
)
# bytes fields (base64): as much as a body may carry by default (CRM_MAX_BODY_BYTES; the body limit is hit first).
BYTES_MAX_LENGTH: int = GatewaySettings.model_fields["max_body_bytes"].default
# Arrays, maps and free-form objects (custom fields: 200 per object at most).
ARRAY_MAX_ITEMS = 1_000
MAP_MAX_PROPERTIES = 200
# Free-form JSON (custom field values): how deep it may nest.
JSON_MAX_DEPTH = 8
# Strings that carry a value of a fixed shape: int64 as digits, timestamps, durations, field masks.
SHAPED_STRING_MAX_LENGTH = 64
FIELD_MASK_MAX_LENGTH = 4_000

PATH_PARAM_MAX_LENGTH = 256
QUERY_PARAM_MAX_LENGTH = 1_024
IF_MATCH_MAX_LENGTH = 64
IDEMPOTENCY_KEY_MAX_LENGTH = 255


def string_max_length(field: FieldDescriptor) -> int:
    """The bound of a string field, by its kind."""
    name = field.name
    if name in LONG_TEXT_FIELDS:
        return LONG_TEXT_MAX_LENGTH
    if name == "email" or name.endswith("_email"):
        return EMAIL_MAX_LENGTH
    if name == "id" or name.endswith("_id") or (field.is_repeated and name.endswith("_ids")):
        return IDENTIFIER_MAX_LENGTH
    return STRING_MAX_LENGTH


def check_json(value: object, depth: int = 0) -> object:
    """Free-form JSON within the bounds above (raises ValueError, which the models report as a 422)."""
    if depth > JSON_MAX_DEPTH:
        raise ValueError(f"nests deeper than {JSON_MAX_DEPTH} levels")
    if isinstance(value, str):
        if len(value) > LONG_TEXT_MAX_LENGTH:
            raise ValueError(f"has a text longer than {LONG_TEXT_MAX_LENGTH} characters")
    elif isinstance(value, dict):
        if len(value) > MAP_MAX_PROPERTIES:
            raise ValueError(f"has more than {MAP_MAX_PROPERTIES} members")
        for key, item in value.items():
            if len(key) > STRING_MAX_LENGTH:
                raise ValueError(f"has a member name longer than {STRING_MAX_LENGTH} characters")
            check_json(item, depth + 1)
    elif isinstance(value, list):
        if len(value) > ARRAY_MAX_ITEMS:
            raise ValueError(f"has more than {ARRAY_MAX_ITEMS} items")
        for item in value:
            check_json(item, depth + 1)
    return value
