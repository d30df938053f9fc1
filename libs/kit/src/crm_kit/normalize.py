"""Normal forms of phone numbers and e-mail addresses, so the same one matches however it was written: every
service that matches people by phone or e-mail (customers' duplicate rules, leads' import duplicates) uses
these. Pure and cheap (Chinese mobile numbers skip the full parser), as an import runs them for every row."""

from __future__ import annotations

import re
import unicodedata

import phonenumbers

__all__ = ["InvalidValue", "normalize_email", "normalize_phone"]


class InvalidValue(ValueError):
    """A value that cannot be normalised; the message says why, for a person to read."""


_PHONE_NOISE = re.compile(r"[\s\-().\u3000]")
_CN_MOBILE = re.compile(r"^(?:\+?86|0086)?(1[3-9]\d{9})$")
_EXTENSION = re.compile(r"(?:转|分机|ext\.?|x|#)\s*(\d{1,6})\s*$", re.IGNORECASE)


def normalize_phone(raw: str, *, default_region: str = "CN") -> str:
    """E.164 ("+8613800138000", "+861012345678"); an extension ("转123", "ext. 123") is dropped.
    Raises InvalidValue when it is not a valid number."""
    text = unicodedata.normalize("NFKC", raw or "").strip()
    if not text:
        raise InvalidValue("is empty")
    compact = _PHONE_NOISE.sub("", text)
    m = _CN_MOBILE.match(compact)
    if m:  # most numbers in a Chinese CRM: skip the general parser (60 µs each)
        return "+86" + m.group(1)
    text = _EXTENSION.sub("", text)
    try:
        parsed = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidValue("is not a phone number") from exc
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidValue("is not a valid phone number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def normalize_email(raw: str) -> str:
    """Trimmed and lower-cased (full-width ＠ folded). Raises InvalidValue when it is not an address."""
    text = unicodedata.normalize("NFKC", raw or "").strip().lower()
    if text.startswith("mailto:"):
        text = text[7:]
    if not _EMAIL.match(text):
        raise InvalidValue("is not an e-mail address")
    return text
