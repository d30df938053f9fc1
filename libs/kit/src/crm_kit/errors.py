"""Domain errors, and their one mapping to gRPC status (with google.rpc details) and on to HTTP problems.

A domain function raises one of these; the gRPC interceptor turns it into a status with details; the gateway
turns that status into an RFC 9457 problem. Nothing else in the system invents error shapes.
"""

from __future__ import annotations

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
    reason = "invalid_argument"

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
    "from_rpc_error",
    "not_found",
    "to_status",
]
