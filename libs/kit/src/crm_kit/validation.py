"""Input checks that collect every problem at once, so a client sees all bad fields in one 422."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from email_validator import EmailNotValidError, validate_email

from crm_kit.errors import FieldError, InvalidArgument
from crm_kit.ids import is_uuid

LOCALES = ("zh-CN", "en")


class Check:
    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def fail(self, field: str, message: str) -> None:
        self.errors.append(FieldError(field, message))

    def required(self, field: str, value: Any, message: str = "is required") -> bool:
        if value in (None, "", [], ()) or (isinstance(value, str) and not value.strip()):
            self.fail(field, message)
            return False
        return True

    def length(self, field: str, value: str, *, max_len: int, min_len: int = 0) -> None:
        if value and not (min_len <= len(value) <= max_len):
            self.fail(field, f"must be {min_len} to {max_len} characters")

    def email(self, field: str, value: str) -> str:
        """Returns the normalised address (lower-case domain) when valid."""
        if not self.required(field, value):
            return value
        try:
            return validate_email(value, check_deliverability=False).normalized
        except EmailNotValidError as exc:
            self.fail(field, f"is not a valid email address: {exc}")
            return value

    def uuid(self, field: str, value: str, *, required: bool = False) -> None:
        if not value:
            if required:
                self.fail(field, "is required")
            return
        if not is_uuid(value):
            self.fail(field, "is not a valid id")

    def one_of(self, field: str, value: str, allowed: tuple[str, ...] | list[str]) -> None:
        if value and value not in allowed:
            self.fail(field, f"must be one of: {', '.join(allowed)}")

    def done(self) -> None:
        if self.errors:
            detail = "; ".join(f"{e.field}: {e.message}" for e in self.errors)
            raise InvalidArgument(f"invalid input: {detail}", field_errors=self.errors)


def updatable(paths: Iterable[str], allowed: Iterable[str]) -> list[str]:
    """The update mask's paths, refused at once (every offending path named) if any is not in `allowed`.
    A nested path (`address.city`) is judged by its first part."""
    allowed = set(allowed)
    paths = list(paths)
    unknown = [p for p in paths if p.split(".", 1)[0] not in allowed]
    if unknown:
        raise InvalidArgument(
            f"these fields cannot be changed: {', '.join(unknown)}",
            field_errors=[FieldError(p, "cannot be changed") for p in unknown],
        )
    return paths
