"""What the data-quality domains share: the caller, tenant-owned lookups, enum names, timestamps."""

from __future__ import annotations

import datetime as dt
from typing import Any

from crm.customers.v1 import customers_pb2, data_quality_pb2, duplicates_pb2
from crm_kit import context
from crm_kit.context import Principal
from crm_kit.db import expect_version as expect_version
from crm_kit.errors import Unauthenticated, not_found
from crm_kit.ids import is_uuid
from crm_kit.timestamps import ts as ts  # re-exported: domain modules import it from here
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

RECORD_TYPES = {customers_pb2.RECORD_TYPE_ACCOUNT: "account", customers_pb2.RECORD_TYPE_CONTACT: "contact"}
RECORD_TYPE_PB = {v: k for k, v in RECORD_TYPES.items()}

MATCHES = {
    duplicates_pb2.DUPLICATE_MATCH_PHONE: "phone",
    duplicates_pb2.DUPLICATE_MATCH_EMAIL: "email",
    duplicates_pb2.DUPLICATE_MATCH_CREDIT_CODE: "credit_code",
    duplicates_pb2.DUPLICATE_MATCH_COMPANY_NAME: "company_name",
    duplicates_pb2.DUPLICATE_MATCH_PERSON_NAME_AND_COMPANY: "person_name_and_company",
}
MATCH_PB = {v: k for k, v in MATCHES.items()}
ACTIONS = {
    duplicates_pb2.DUPLICATE_ACTION_BLOCK: "block",
    duplicates_pb2.DUPLICATE_ACTION_WARN: "warn",
    duplicates_pb2.DUPLICATE_ACTION_ALLOW: "allow",
}
ACTION_PB = {v: k for k, v in ACTIONS.items()}
IMPORT_ACTIONS = {
    data_quality_pb2.IMPORT_DUPLICATE_ACTION_SKIP: "skip",
    data_quality_pb2.IMPORT_DUPLICATE_ACTION_UPDATE: "update",
    data_quality_pb2.IMPORT_DUPLICATE_ACTION_CREATE: "create",
}
IMPORT_ACTION_PB = {v: k for k, v in IMPORT_ACTIONS.items()}
JOB_STATUS_PB = {
    "uploaded": data_quality_pb2.JOB_STATUS_UPLOADED,
    "queued": data_quality_pb2.JOB_STATUS_QUEUED,
    "running": data_quality_pb2.JOB_STATUS_RUNNING,
    "succeeded": data_quality_pb2.JOB_STATUS_SUCCEEDED,
    "failed": data_quality_pb2.JOB_STATUS_FAILED,
    "cancelled": data_quality_pb2.JOB_STATUS_CANCELLED,
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)




def caller() -> Principal:
    principal = context.current().principal
    if principal is None:
        raise Unauthenticated("a credential is required", reason="missing_credential")
    return principal


async def get_owned(
    session: AsyncSession, model: Any, object_type: str, object_id: str, *, lock: bool = False
) -> Any:
    """A row of the caller's tenant by id; another tenant's id, a malformed id and a missing id are one 404."""
    if not is_uuid(object_id):
        raise not_found(object_type, object_id)
    stmt = select(model).where(model.id == object_id, model.tenant_id == caller().tenant_id)
    if lock:
        stmt = stmt.with_for_update()
    row = (await session.execute(stmt)).scalar_one_or_none()
    if row is None:
        raise not_found(object_type, object_id)
    return row


def session_of(uow_or_session: Any) -> AsyncSession:
    return getattr(uow_or_session, "session", uow_or_session)
