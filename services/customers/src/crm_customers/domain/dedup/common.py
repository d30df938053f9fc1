"""What the data-quality domains share: the caller, tenant-owned lookups, enum names, timestamps."""

from __future__ import annotations

import datetime as dt
from typing import Any

from crm.customers.v1 import customers_pb2, data_quality_pb2, duplicates_pb2
from crm_kit.context import caller as caller  # re-exported, like get_owned
from crm_kit.db import expect_version as expect_version
from crm_kit.db import get_owned as get_owned
from crm_kit.timestamps import ts as ts  # re-exported: domain modules import it from here
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




def session_of(uow_or_session: Any) -> AsyncSession:
    return getattr(uow_or_session, "session", uow_or_session)
