"""Export any filtered list of accounts or contacts — the same filters, keyword, sort and saved views as the
lists, within the caller's data scope — as a streamed CSV or XLSX file.

Hidden fields never leave: a field hidden by the caller's "read" or "export" permission is neither a column
nor a value (custom fields too: `custom_fields.<key>`), and asking for one by name is refused (403). Rows are
read in keyset pages of PAGE rows, each in its own short read, so a million-row export holds neither a long
transaction nor the rows in memory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from crm.customers.v1 import data_quality_pb2 as pb
from crm_kit.db import Database
from crm_kit.errors import InvalidArgument, PermissionDenied
from crm_kit.policy import Decision
from google.protobuf import json_format

from crm_customers.domain import accounts, contacts, saved_views
from crm_customers.domain import custom_fields as cf
from crm_customers.domain import query as q
from crm_customers.domain.common import caller, is_hidden
from crm_customers.domain.exports.writers import writer_for

PAGE = 1000
# Columns in this order by default; system and derived fields are not exported.
ACCOUNT_FIELDS = (
    "id",
    "name",
    "alt_name",
    "credit_code",
    "legal_representative",
    "registered_capital",
    "registered_capital_currency",
    "industry",
    "size",
    "region",
    "province",
    "city",
    "district",
    "address",
    "website",
    "phones",
    "emails",
    "source",
    "tier",
    "lifecycle_stage",
    "owner_id",
    "department_id",
    "team_member_ids",
    "tags",
    "notes",
    "satisfaction",
    "competitors",
    "parent_id",
    "created_at",
    "updated_at",
)
CONTACT_FIELDS = (
    "id",
    "name",
    "name_latin",
    "titles",
    "phones",
    "emails",
    "im_handles",
    "birthday",
    "buying_role",
    "consent",
    "account_ids",
    "primary_account_id",
    "owner_id",
    "department_id",
    "tags",
    "notes",
    "created_at",
    "updated_at",
)
LABELS_ZH = {
    "id": "ID",
    "name": "名称",
    "alt_name": "别名",
    "credit_code": "统一社会信用代码",
    "legal_representative": "法定代表人",
    "registered_capital": "注册资本",
    "registered_capital_currency": "币种",
    "industry": "行业",
    "size": "规模",
    "region": "区域",
    "province": "省份",
    "city": "城市",
    "district": "区县",
    "address": "地址",
    "website": "网站",
    "phones": "电话",
    "emails": "邮箱",
    "source": "来源",
    "tier": "等级",
    "lifecycle_stage": "阶段",
    "owner_id": "负责人",
    "department_id": "部门",
    "team_member_ids": "协作人",
    "tags": "标签",
    "notes": "备注",
    "satisfaction": "满意度",
    "competitors": "竞争对手",
    "parent_id": "上级公司",
    "created_at": "创建时间",
    "updated_at": "更新时间",
    "name_latin": "英文名",
    "titles": "职位",
    "im_handles": "即时通讯",
    "birthday": "生日",
    "buying_role": "采购角色",
    "consent": "联系许可",
    "account_ids": "关联客户",
    "primary_account_id": "主要客户",
}
ENUM_PREFIXES = ("LIFECYCLE_STAGE_", "COMPANY_SIZE_", "BUYING_ROLE_")


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list):
        return "; ".join(str(_cell(v)) for v in value)
    if isinstance(value, dict):
        if "kind" in value and "handle" in value:
            return f"{value['kind']}:{value['handle']}"
        return "; ".join(f"{k}={_cell(v)}" for k, v in value.items() if k != "updated_at")
    if isinstance(value, str):
        for prefix in ENUM_PREFIXES:
            if value.startswith(prefix):
                return value[len(prefix) :].lower()
    return value


def columns_for(kind: str, requested: list[str], decision: Decision, defs: dict[str, Any]) -> list[str]:
    base = ACCOUNT_FIELDS if kind == "account" else CONTACT_FIELDS
    known = set(base) | {f"custom_fields.{k}" for k in defs}
    if requested:
        unknown = [f for f in requested if f not in known]
        if unknown:
            raise InvalidArgument.for_field("fields", f"unknown fields: {', '.join(unknown)}")
        blocked = [f for f in requested if is_hidden(decision, f)]
        if blocked:
            raise PermissionDenied(f"fields are hidden from you: {', '.join(blocked)}", reason="field_hidden")
        return list(dict.fromkeys(requested))
    out = [f for f in base if not is_hidden(decision, f)]
    out.extend(f"custom_fields.{k}" for k in defs if not is_hidden(decision, f"custom_fields.{k}"))
    return out


def header_for(columns: list[str], defs: dict[str, Any], locale: str) -> list[str]:
    out = []
    for c in columns:
        if c.startswith("custom_fields."):
            d = defs[c.split(".", 1)[1]]
            out.append((d.label_zh if locale == "zh-CN" else d.label_en) or d.label_en or d.label_zh or d.key)
        else:
            out.append(LABELS_ZH.get(c, c) if locale == "zh-CN" else c)
    return out


async def stream(
    db: Database, *, request: pb.ExportRecordsRequest, kind: str, read: Decision, export: Decision
) -> AsyncIterator[pb.ExportRecordsResponse]:
    decision = dataclasses.replace(read, hidden=read.hidden | export.hidden)
    module: Any = accounts if kind == "account" else contacts
    locale = request.locale if request.locale in ("zh-CN", "en") else "en"
    async with db.read() as session:
        view_request = _ViewRequest(request)
        query, filters, sort = await saved_views.apply(session, view_request, kind)
        defs = await cf.definitions(session, caller().tenant_id, kind)
        columns = columns_for(kind, list(request.fields), decision, defs)
        stmt = module.filtered(decision, defs, query=query, filters=filters, deleted=False)
        ordering = q.parse_sort(module.fields_for(defs), sort, decision, default="-id")
    writer = writer_for(request.format)
    name = f"{kind}s-export.{writer.extension}"
    yield pb.ExportRecordsResponse(header=pb.FileInfo(file_name=name, content_type=writer.content_type))

    async def rows() -> AsyncIterator[list[Any]]:
        yield header_for(columns, defs, locale)
        cursor: list[Any] | None = None
        while True:
            page = q.PageOf(PAGE, cursor)
            async with db.read() as session:
                result = (await session.execute(q.run_page(stmt, ordering, page))).all()
            more = len(result) > PAGE
            result = result[:PAGE]
            for record, *_ in result:
                message = module.redact(decision, _pb(kind, record))
                data = json_format.MessageToDict(message, preserving_proto_field_name=True)
                custom = data.get("custom_fields", {})
                yield [
                    _cell(custom.get(c.split(".", 1)[1]))
                    if c.startswith("custom_fields.")
                    else _cell(data.get(c))
                    for c in columns
                ]
            if not more or not result:
                return
            last = result[-1]
            cursor = [q._encode(v) for v in last[1:]] + [last[0].id]

    async for chunk in writer.stream(rows()):
        yield pb.ExportRecordsResponse(chunk=chunk)


def _pb(kind: str, row: Any) -> Any:
    return accounts.account_pb(row) if kind == "account" else contacts.contact_pb(row)


class _ViewRequest:
    """The parts of an export request `saved_views.apply` reads, named as on a list request."""

    def __init__(self, request: pb.ExportRecordsRequest):
        self.q = request.q
        self.filter = list(request.filter)
        self.sort = request.sort
        self.view_id = request.view_id
