"""What the customers domains share: the caller, authorization, tenant-scoped lookups, enum names, times."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from crm.customers.v1 import customers_pb2 as pb
from crm_kit.context import caller as caller  # re-exported, like authorize
from crm_kit.db import expect_version as expect_version
from crm_kit.db import get_owned as kit_get_owned
from crm_kit.db import utcnow
from crm_kit.errors import PermissionDenied
from crm_kit.policy import Decision, rule_names
from crm_kit.policy import authorize as authorize
from crm_kit.timestamps import ts as ts  # re-exported: domain modules import it from here
from sqlalchemy import and_, or_, true
from sqlalchemy.ext.asyncio import AsyncSession


def visible(decision: Decision, model: Any) -> Any:
    """The data scope as a WHERE clause: own / department / department tree / all. Co-followers (team members)
    of an account see it too."""
    principal = caller()
    clause = decision.row_filter(
        principal, owner_column=model.owner_id, department_column=model.department_id
    )
    if decision.scope != 4 and hasattr(model, "team_member_ids"):  # 4: DATA_SCOPE_ALL
        clause = or_(clause, model.team_member_ids.contains([principal.actor_id]))
    return clause


def may_see(decision: Decision, row: Any) -> bool:
    """The same rule as `visible`, for one loaded row."""
    return decision.sees(caller(), row.owner_id, row.department_id, getattr(row, "team_member_ids", None) or ())


async def get_owned(
    session: AsyncSession,
    model: Any,
    object_type: str,
    object_id: str,
    *,
    decision: Decision | None = None,
    lock: bool = False,
    deleted: bool | None = False,
) -> Any:
    """A row of the caller's tenant by id, inside the caller's data scope when a decision is given. Another
    tenant's id, a malformed id, a missing id and a record outside the scope are the same 404.
    `deleted`: False (default) live rows only, True recycle-bin rows only, None either."""
    clauses = []
    if deleted is not None and hasattr(model, "deleted_at"):
        clauses.append(model.deleted_at.is_not(None) if deleted else model.deleted_at.is_(None))
    if decision is not None:
        clauses.append(visible(decision, model))
    return await kit_get_owned(
        session, model, object_type, object_id, lock=lock, visible=and_(*clauses) if clauses else None
    )


def is_hidden(decision: Decision, field: str) -> bool:
    return decision.is_hidden(field)


def check_hidden(decision: Decision, fields: Any) -> None:
    """Filtering or sorting on a field the caller may not see would reveal its values: refused."""
    for f in fields:
        if is_hidden(decision, f):
            raise PermissionDenied(f"field {f} is hidden from you", reason="field_hidden")


def check_writable(decision: Decision, fields: Any) -> None:
    """Read-only and hidden fields refuse writes (403 field_read_only), custom fields under either name."""
    names: list[str] = []
    for f in fields:
        names.extend(sorted(rule_names(f) - ({"custom_fields"} if f != "custom_fields" else set())))
        if f.startswith("custom_fields.") and "custom_fields" in (decision.read_only | decision.hidden):
            names.append("custom_fields")
    decision.check_writable(names)




def all_rows() -> Any:
    return true()


def both(*clauses: Any) -> Any:
    return and_(*clauses)


# ---------------------------------------------------------------- enums: proto number <-> stored short name


class EnumNames:
    """`LIFECYCLE_STAGE_CUSTOMER` (2) <-> "customer": rows keep the short lower-case name."""

    def __init__(self, enum: Any, prefix: str):
        self.to_name: dict[int, str] = {}
        self.to_number: dict[str, int] = {}
        for value in enum.DESCRIPTOR.values:
            if value.number == 0:
                continue
            short = value.name.removeprefix(prefix).lower()
            self.to_name[value.number] = short
            self.to_number[short] = value.number
        self.prefix = prefix

    def name(self, number: int) -> str:
        return self.to_name.get(number, "")

    def number(self, name: str) -> int:
        return self.to_number.get(name or "", 0)

    def parse(self, text: str) -> str | None:
        """A filter value: "customer", "CUSTOMER" or "LIFECYCLE_STAGE_CUSTOMER" → "customer"."""
        short = text.strip().upper().removeprefix(self.prefix).lower()
        return short if short in self.to_number else None

    @property
    def names(self) -> list[str]:
        return list(self.to_number)


STAGES = EnumNames(pb.LifecycleStage, "LIFECYCLE_STAGE_")
SIZES = EnumNames(pb.CompanySize, "COMPANY_SIZE_")
BUYING_ROLES = EnumNames(pb.BuyingRole, "BUYING_ROLE_")
RECORD_TYPES = EnumNames(pb.RecordType, "RECORD_TYPE_")
INTERACTION_KINDS = EnumNames(pb.InteractionKind, "INTERACTION_KIND_")
PARTICIPANT_KINDS = EnumNames(pb.ParticipantKind, "PARTICIPANT_KIND_")
FIELD_TYPES = EnumNames(pb.CustomFieldType, "CUSTOM_FIELD_TYPE_")


async def soft_delete(
    uow: Any,
    row: Any,
    *,
    before: dict[str, Any],
    event_of: Callable[[Any], Any],
    aggregate_type: str,
    record_deleter: bool = False,
) -> None:
    """Move a row to the recycle bin: mark it deleted, bump its version, record the event with `before`."""
    row.deleted_at = utcnow()
    if record_deleter:
        row.deleted_by = caller().actor_id
    row.version += 1
    await uow.session.flush()
    await uow.session.refresh(row)
    uow.emit(
        event_of(row),
        aggregate_type=aggregate_type,
        aggregate_id=row.id,
        aggregate_version=row.version,
        action="deleted",
        before=before,
    )
