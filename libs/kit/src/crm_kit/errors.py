"""Domain errors, and their one mapping to gRPC status (with google.rpc details) and on to HTTP problems.

A domain function raises one of these; the gRPC interceptor turns it into a status with details; the gateway
turns that status into an RFC 9457 problem. Nothing else in the system invents error shapes.
"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "crm"


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    message: str


class DomainError(Exception):
    """Base of every error a caller may see. `reason` is a stable machine-readable code.

    `extensions` are more members of the problem a client gets (RFC 9457 extension members), JSON values by
    name, e.g. `{"duplicates": [...]}` on a duplicate refused: they travel as a `google.protobuf.Struct` in the
    status details, and the gateway adds them to the problem document beside the standard members."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "internal"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        field_errors: list[FieldError] | None = None,
        extensions: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.message = message
        if reason:
            self.reason = reason
        self.field_errors = field_errors or []
        self.extensions = extensions or {}


class InvalidArgument(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    # The same code as the gateway's own 422s: one code per kind of error (docs/api-style.md).
    reason = "validation_failed"

    @classmethod
    def for_field(cls, field: str, message: str) -> InvalidArgument:
        return cls(f"{field}: {message}", field_errors=[FieldError(field, message)])


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "not_found"


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "already_exists"


class Conflict(DomainError):
    """The request is valid but the object's state forbids it (e.g. delete a department with members)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "conflict"


class VersionMismatch(DomainError):
    """The caller's If-Match / expected_version is stale."""

    code = grpc.StatusCode.ABORTED
    reason = "version_mismatch"


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "permission_denied"


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "unauthenticated"


class TooManyRequests(DomainError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "too_many_requests"


def not_found(object_type: str, object_id: str) -> NotFound:
    return NotFound(f"{object_type} {object_id} not found", reason=f"{object_type}_not_found")


def to_status(error: DomainError) -> grpc.Status:
    """A DomainError as a rich gRPC status: ErrorInfo(reason) plus BadRequest(field violations)."""
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN)
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    status.details.add().Pack(info)
    if error.field_errors:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f.field, description=f.message)
                for f in error.field_errors
            ]
        )
        status.details.add().Pack(bad)
    if error.extensions:
        extra = struct_pb2.Struct()
        extra.update(error.extensions)
        status.details.add().Pack(extra)
    return rpc_status.to_status(status)


@dataclass(frozen=True, slots=True)
class StatusDetails:
    """What a client of a service learns from a failed call."""

    code: grpc.StatusCode
    message: str
    reason: str
    field_errors: list[FieldError]
    # The error's extension members (see DomainError).
    extensions: dict[str, Any] = field(default_factory=dict)


def from_rpc_error(err: grpc.aio.AioRpcError | grpc.RpcError) -> StatusDetails:
    code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
    message = err.details() if callable(getattr(err, "details", None)) else str(err)
    reason = ""
    fields: list[FieldError] = []
    extensions: dict[str, Any] = {}
    status = rpc_status.from_call(err) if hasattr(err, "trailing_metadata") else None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                fields = [FieldError(v.field, v.description) for v in bad.field_violations]
            elif detail.Is(struct_pb2.Struct.DESCRIPTOR):
                extra = struct_pb2.Struct()
                detail.Unpack(extra)
                extensions.update(json_format.MessageToDict(extra))
    return StatusDetails(
        code=code, message=message or "", reason=reason, field_errors=fields, extensions=extensions
    )


# ---------------------------------------------------------------- exceptions described without their data

# A quoted value in a database error's message: `invalid input syntax for type uuid: "x@y"`, or a driver's
# `invalid input for query argument $1: 'x@y'`.
_QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'")
MAX_DESCRIPTION = 1000


def _is_database_error(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] in ("asyncpg", "sqlalchemy")


def _masked(message: str, keep: set[str]) -> str:
    """The message without quoted values, keeping the quoted names of database objects."""
    return _QUOTED.sub(
        lambda m: m.group(0) if m.group(0)[1:-1] in keep else m.group(0)[0] + "..." + m.group(0)[0], message
    )


def describe(exc: BaseException, *, with_type: bool = True) -> str:
    """What an exception is, safe to log or to store where operators look (dead letters, job errors).

    Database errors (SQLAlchemy's and asyncpg's) say their kind, SQLSTATE and the constraint, table and column
    they name, and their message's first line with quoted values masked; never the statement's parameters,
    the DETAIL line (`Key (email)=(x@y) already exists`, `Failing row contains (...)`) or a value echoed in the
    message. Other exceptions are their type and message, quoted parts masked unless it is a DomainError (its
    message is written for the caller) or NATS's (subjects and permissions, which operators need). Use this, not `str(exc)`, wherever an error's text
    leaves the request (crm_kit.logs applies it to every log record). `with_type=False` leaves out the outer
    exception's type where it is recorded apart (a dead letter's error-type header)."""
    orig = getattr(exc, "orig", None)
    if _is_database_error(exc) and isinstance(orig, BaseException):
        # SQLAlchemy's wrapper: its text carries the statement and its parameters; the driver's error is enough.
        inner = describe(orig)
        return (f"{type(exc).__name__}: {inner}" if with_type else inner)[:MAX_DESCRIPTION]
    if _is_database_error(exc):
        names = {
            name: getattr(exc, attr, None)
            for name, attr in (
                ("SQLSTATE", "sqlstate"),
                ("constraint", "constraint_name"),
                ("table", "table_name"),
                ("column", "column_name"),
                ("type", "data_type_name"),
            )
        }
        message = getattr(exc, "message", None) or (str(exc.args[0]) if exc.args else "")
        keep = {str(v) for v in names.values() if v}
        first = _masked(message.splitlines()[0] if message else "", keep)
        where = ", ".join(f"{k} {v}" for k, v in names.items() if v)
        return f"{type(exc).__name__}{f' ({where})' if where else ''}: {first}"[:MAX_DESCRIPTION]
    # Our own errors say what we wrote for the caller; any other may quote a value it failed on (a driver's
    # encoder raising `invalid UUID 'x@y'` under a database error, `int('…')`), so quoted parts are masked.
    # NATS's errors name subjects and permissions, never data, and operators need them whole.
    kept_whole = isinstance(exc, DomainError) or type(exc).__module__.startswith("nats.")
    text = str(exc) if kept_whole else _masked(str(exc), set())
    if not with_type and text:
        return text[:MAX_DESCRIPTION]
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:MAX_DESCRIPTION]


def format_exception(exc: BaseException) -> str:
    """A traceback like Python's, each exception of the chain given by `describe`: the frames tell where, the
    descriptions what, and no statement parameters or echoed values are in it."""
    parts: list[str] = []
    seen: set[int] = set()

    def walk(e: BaseException) -> None:
        seen.add(id(e))
        if e.__cause__ is not None and id(e.__cause__) not in seen:
            walk(e.__cause__)
            parts.append("\nThe above exception was the direct cause of the following exception:\n\n")
        elif e.__context__ is not None and not e.__suppress_context__ and id(e.__context__) not in seen:
            walk(e.__context__)
            parts.append("\nDuring handling of the above exception, another exception occurred:\n\n")
        if e.__traceback__ is not None:
            parts.append("Traceback (most recent call last):\n")
            parts.extend(traceback.format_tb(e.__traceback__))
        parts.append(describe(e) + "\n")

    walk(exc)
    return "".join(parts).rstrip("\n")


__all__ = [
    "AlreadyExists",
    "Conflict",
    "DomainError",
    "FieldError",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "StatusDetails",
    "TooManyRequests",
    "Unauthenticated",
    "VersionMismatch",
    "code_pb2",
    "describe",
    "format_exception",
    "from_rpc_error",
    "not_found",
    "to_status",
]
