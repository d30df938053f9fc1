"""Patterns a tenant writes (a custom field's `pattern`): run by RE2, whose matching time grows linearly with the
value whatever the pattern, never by Python's backtracking `re` (`(a+)+` against 40 characters runs for hours).

A pattern is checked when its definition is saved (`check`: RE2 syntax, a length and a compiled-size bound;
look-around and back-references are refused with the reason) and matched against whole values (`fullmatch`).
Compiled patterns are cached per process."""

from __future__ import annotations

import functools

import re2

from crm_kit.normalize import InvalidValue

MAX_PATTERN_CHARS = 500
# What one compiled pattern may take (RE2 refuses larger ones, e.g. nested counted repetitions).
MAX_PATTERN_MEMORY = 1 << 20

_OPTIONS = re2.Options()
_OPTIONS.max_mem = MAX_PATTERN_MEMORY
_OPTIONS.log_errors = False


@functools.lru_cache(maxsize=1024)
def compiled(pattern: str) -> re2._Regexp:
    """The pattern, compiled; InvalidValue with the reason when RE2 cannot run it."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise InvalidValue(f"must be at most {MAX_PATTERN_CHARS} characters")
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode(errors="replace")
        raise InvalidValue(
            f"is not a supported pattern ({reason}); patterns use RE2 syntax, without look-around or "
            "back-references"
        ) from None


def check(pattern: str) -> None:
    """Refuse (InvalidValue) a pattern that cannot be run."""
    compiled(pattern)


def fullmatch(pattern: str, value: str) -> bool:
    """Whether the whole value matches: linear time in the value's length."""
    return compiled(pattern).fullmatch(value) is not None
