"""What the sales domains share: the caller, tenancy lookups, versions, exact decimals, proto conversion."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from crm_kit.context import caller as caller  # re-exported, like the two below
from crm_kit.db import get_owned as get_owned
from crm_kit.errors import InvalidArgument
from crm_kit.ids import is_uuid
from crm_kit.policy import authorize as authorize
from crm_kit.timestamps import ts as ts  # re-exported: domain modules import it from here
from crm_kit.validation import Check
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

FD = FieldDescriptor
CENT = Decimal("0.01")
MAX_MONEY = Decimal("1e17")


# ---------------------------------------------------------------- decimals


def parse_decimal(
    check: Check,
    field: str,
    value: str,
    *,
    required: bool = False,
    minimum: Decimal | None = Decimal(0),
    maximum: Decimal = MAX_MONEY,
    places: int = 2,
) -> Decimal | None:
    """An exact decimal from its string form ("1234.50"); never a float. Records a field error when bad."""
    text = (value or "").strip()
    if not text:
        if required:
            check.fail(field, "is required")
        return None
    try:
        d = Decimal(text)
    except InvalidOperation:
        check.fail(field, "is not a decimal number")
        return None
    if not d.is_finite():
        check.fail(field, "is not a decimal number")
        return None
    if minimum is not None and d < minimum:
        check.fail(field, f"must be at least {minimum}")
        return None
    if d > maximum:
        check.fail(field, f"must be at most {maximum}")
        return None
    exponent = d.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > places:
        check.fail(field, f"has more than {places} decimal places")
        return None
    return d


def money(d: Decimal) -> Decimal:
    """Round half up to cents (元/分), the way invoices and quotes round."""
    return d.quantize(CENT, rounding=ROUND_HALF_UP)


def dec_str(d: Decimal | None) -> str:
    return "" if d is None else format(d, "f")


def parse_date(check: Check, field: str, value: str) -> dt.date | None:
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        check.fail(field, "must be a date YYYY-MM-DD")
        return None


def currency_code(check: Check, field: str, value: str, default: str = "CNY") -> str:
    code = (value or default).strip().upper()
    if len(code) != 3 or not (code.isascii() and code.isalpha()):
        check.fail(field, "must be an ISO 4217 code such as CNY or USD")
    return code


# ---------------------------------------------------------------- proto conversion

_ENUM_PREFIX: dict[str, str] = {}


def _prefix(enum_type: Any) -> str:
    prefix = _ENUM_PREFIX.get(enum_type.full_name)
    if prefix is None:
        prefix = _ENUM_PREFIX[enum_type.full_name] = enum_type.values[0].name.removesuffix("UNSPECIFIED")
    return prefix


def enum_value(enum_type: Any, name: str) -> int:
    """ "open" → STAGE_KIND_OPEN's number (0 when unknown or empty)."""
    if not name:
        return 0
    v = enum_type.values_by_name.get(_prefix(enum_type) + name.upper())
    return v.number if v else 0


def enum_name(enum_type: Any, number: int) -> str:
    """STAGE_KIND_OPEN's number → "open" ("" for 0 or unknown)."""
    if not number:
        return ""
    v = enum_type.values_by_number.get(number)
    return v.name.removeprefix(_prefix(enum_type)).lower() if v else ""


def from_ts(value: timestamp_pb2.Timestamp, present: bool) -> dt.datetime | None:
    return value.ToDatetime(tzinfo=dt.UTC) if present else None


def to_message(row: Any, cls: type[Message], **overrides: Any) -> Message:
    """A proto message from a row whose attributes carry the message's field names: strings, exact decimals
    (as strings), dates ("YYYY-MM-DD"), times, enums (stored as their short lower-case names), lists, maps and
    JSON lists of sub-messages. `overrides` give values the row does not have."""
    msg = cls()
    for f in cls.DESCRIPTOR.fields:
        if f.name in overrides:
            value = overrides[f.name]
        else:
            value = getattr(row, f.name, None)
        if value is None:
            continue
        if f.type == FD.TYPE_MESSAGE:
            if f.message_type.GetOptions().map_entry:
                getattr(msg, f.name).update({str(k): str(v) for k, v in value.items()})
            elif f.message_type.full_name == "google.protobuf.Timestamp":
                getattr(msg, f.name).FromDatetime(value)
            elif f.is_repeated:
                target = getattr(msg, f.name)
                for item in value:
                    if isinstance(item, Message):
                        target.add().CopyFrom(item)
                    else:
                        json_format.ParseDict(item, target.add(), ignore_unknown_fields=True)
            elif isinstance(value, Message):
                getattr(msg, f.name).CopyFrom(value)
            else:
                json_format.ParseDict(value, getattr(msg, f.name), ignore_unknown_fields=True)
        elif f.type == FD.TYPE_ENUM:
            if f.is_repeated:
                getattr(msg, f.name).extend(
                    v if isinstance(v, int) else enum_value(f.enum_type, v) for v in value
                )
            else:
                setattr(msg, f.name, value if isinstance(value, int) else enum_value(f.enum_type, value))
        elif f.is_repeated:
            getattr(msg, f.name).extend(value)
        elif f.type == FD.TYPE_STRING:
            if isinstance(value, Decimal):
                value = format(value, "f")
            elif isinstance(value, dt.date | dt.datetime):
                value = value.isoformat()
            setattr(msg, f.name, str(value))
        else:
            setattr(msg, f.name, value)
    return msg


def snapshot(row: Any, fields: Iterable[str]) -> dict[str, Any]:
    """The audited fields of a row (for before/after in events)."""
    out: dict[str, Any] = {}
    for name in fields:
        v = getattr(row, name, None)
        if isinstance(v, Decimal):
            v = format(v, "f")
        elif isinstance(v, dt.date | dt.datetime):
            v = v.isoformat()
        elif isinstance(v, list):
            v = list(v)
        elif isinstance(v, dict):
            v = dict(v)
        out[name] = "" if v is None else v
    return out


async def check_local(
    session: Any, check: Check, field: str, model: Any, record_id: str, *, what: str
) -> None:
    """`record_id` (when given and well formed) names a sales record of `model` in the caller's company, else a
    field error: a reference names something that exists."""
    from sqlalchemy import select

    if not record_id or any(e.field == field for e in check.errors):
        return
    found = await session.scalar(
        select(model.id).where(model.tenant_id == caller().tenant_id, model.id == record_id)
    )
    if not found:
        check.fail(field, f"no such {what}")


class People:
    """Users of the caller's tenant as identity knows them: checks that an owner exists and finds their
    department (records are filed under their owner's department for data scopes). Asked with the caller's
    own credential; answers are cached briefly. With the customers service's channel it also checks that a
    reference to an account or contact names one of the caller's company (`check_records`)."""

    def __init__(self, identity: Any, ttl_seconds: float = 60.0, *, customers: Any = None):
        self.identity = identity
        self.customers = customers
        self.ttl = ttl_seconds
        self._cache: dict[tuple[str, str], tuple[float, str | None]] = {}

    async def _user(self, user_id: str) -> tuple[bool, str | None]:
        """(known, department): known is False for a user the caller's company does not have; True (and no
        department) when the caller may not read users, so nothing can be told."""
        import time

        import grpc
        from crm.identity.v1 import identity_pb2
        from crm_kit import grpc_client

        principal = caller()
        if user_id == principal.actor_id:
            return True, principal.department_id or None
        if not is_uuid(user_id):
            return False, None
        key = (principal.tenant_id, user_id)
        hit = self._cache.get(key)
        if hit and time.monotonic() - hit[0] < self.ttl:
            return True, hit[1]
        try:
            answer = await self.identity.GetUser(
                identity_pb2.GetUserRequest(id=user_id), metadata=grpc_client.outgoing_metadata(), timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return False, None
            if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
                return True, None  # the caller may not read users: file it without a department
            raise
        department = answer.user.department_id or None
        self._cache[key] = (time.monotonic(), department)
        return True, department

    async def department_of(self, field: str, user_id: str) -> str | None:
        """The user's department; an unknown user (or another tenant's) is a 422 on `field`."""
        known, department = await self._user(user_id)
        if not known:
            raise InvalidArgument.for_field(field, "no such user")
        return department

    async def check_users(self, check: Check, field: str, user_ids: Iterable[str]) -> None:
        """Each id names a user of the caller's company; an unknown one is a field error `field[i]`. (A caller
        who may not read users cannot have them checked: identity will not say, and they pass.)"""
        import asyncio

        ids = list(user_ids)
        wanted = [(i, uid) for i, uid in enumerate(ids) if is_uuid(uid) and ids.index(uid) == i]
        limit = asyncio.Semaphore(16)

        async def one(uid: str) -> bool:
            async with limit:
                return (await self._user(uid))[0]

        known = await asyncio.gather(*(one(uid) for _, uid in wanted))
        for (i, _), ok in zip(wanted, known, strict=True):
            if not ok:
                check.fail(f"{field}[{i}]" if field.endswith("_ids") else field, "no such user")

    async def record_exists(self, kind: str, record_id: str) -> bool:
        """Whether the customers service has this account or contact for the caller (asked with the caller's
        credential: a record outside their data scope is no more theirs to name than a missing one). A caller
        who may not read accounts (contacts) cannot name one: 403."""
        import grpc
        from crm.customers.v1 import customers_pb2 as cpb
        from crm.customers.v1 import customers_pb2_grpc
        from crm_kit import grpc_client
        from crm_kit.errors import PermissionDenied

        if not is_uuid(record_id):
            return False
        stub = customers_pb2_grpc.CustomersServiceStub(self.customers)
        md = grpc_client.outgoing_metadata()
        try:
            if kind == "account":
                await stub.GetAccount(cpb.GetAccountRequest(id=record_id), metadata=md, timeout=10)
            else:
                await stub.GetContact(cpb.GetContactRequest(id=record_id), metadata=md, timeout=10)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return False
            if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
                raise PermissionDenied(
                    f"naming a{'n' if kind == 'account' else ''} {kind} needs the permission to read {kind}s",
                    reason="permission_denied",
                ) from None
            raise
        return True

    async def check_record(self, check: Check, field: str, kind: str, record_id: str) -> None:
        """`record_id` (when given) names an account or contact of the caller's company, else a field error."""
        if (
            record_id
            and not any(e.field == field for e in check.errors)
            and not await self.record_exists(kind, record_id)
        ):
            check.fail(field, f"no such {kind}")

    async def active_users_by_email(self, emails: Iterable[str]) -> dict[str, tuple[str, str]]:
        """Active users of the caller's tenant by e-mail (lower case): e-mail → (user id, department id). An
        e-mail no active user has is left out. Refused (403) when the caller may not read users."""
        import grpc
        from crm.identity.v1 import identity_pb2
        from crm_kit import grpc_client
        from crm_kit.errors import PermissionDenied

        found: dict[str, tuple[str, str]] = {}
        for email in sorted(set(emails)):
            try:
                answer = await self.identity.ListUsers(
                    identity_pb2.ListUsersRequest(
                        q=email, status=identity_pb2.USER_STATUS_ACTIVE, page={"limit": 200}
                    ),
                    metadata=grpc_client.outgoing_metadata(),
                    timeout=5,
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
                    raise PermissionDenied(
                        "naming owners by e-mail needs the permission to read users",
                        reason="permission_denied",
                    ) from None
                raise
            for user in answer.items:
                if user.email.strip().lower() == email:
                    found[email] = (user.id, user.department_id)
        return found
