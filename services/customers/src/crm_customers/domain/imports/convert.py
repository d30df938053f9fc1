"""One file row → the column values of one account or contact row, or the reasons it cannot be one.

Runs for every row of a million-row file, so it is plain Python over strings: the normal forms come from
`crm_customers.normalize`, the search columns from `crm_customers.domain.search`, custom field values from
`crm_customers.domain.custom_fields.canonical` — the same rules as a create through the API.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlparse

from crm_kit.imports import importer

from crm_customers import normalize
from crm_customers.domain import custom_fields as cf
from crm_customers.domain import search
from crm_customers.domain.common import BUYING_ROLES, SIZES, STAGES

LIST_SPLIT = re.compile(r"\s*[;,，；、|\n]\s*")
TRUE = {"true", "yes", "y", "1", "是", "对", "√", "✓", "同意", "x"}
FALSE = {"false", "no", "n", "0", "否", "不", "不同意", ""}
MAX_LIST = 50
TEXT_LIMITS = {
    "name": 300,
    "alt_name": 300,
    "name_latin": 200,
    "legal_representative": 100,
    "industry": 100,
    "region": 100,
    "province": 50,
    "city": 50,
    "district": 50,
    "address": 500,
    "website": 300,
    "source": 50,
    "tier": 50,
    "notes": 10_000,
}
DATE_FORMATS = ("%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d", "%Y年%m月%d日", "%Y%m%d")
# Chinese and English names of the enum values people write in cells.
STAGE_WORDS = {
    "潜在客户": "prospect",
    "潜在": "prospect",
    "客户": "customer",
    "成交客户": "customer",
    "忠诚客户": "loyal",
    "忠诚": "loyal",
    "风险": "at_risk",
    "有流失风险": "at_risk",
    "流失": "churned",
    "已流失": "churned",
    "at risk": "at_risk",
}
ROLE_WORDS = {
    "决策者": "decision_maker",
    "决策人": "decision_maker",
    "影响者": "influencer",
    "使用者": "user",
    "用户": "user",
    "把关者": "gatekeeper",
    "守门人": "gatekeeper",
    "其他": "other",
    "decision maker": "decision_maker",
}
SIZE_WORDS: dict[str, str] = {}

# What a converter needs of a custom field definition (sent to the child process as plain values).
CUSTOM_FIELD_ATTRIBUTES = (
    "key",
    "record_type",
    "label_zh",
    "label_en",
    "type",
    "required",
    "unique",
    "searchable",
    "options",
    "pattern",
    "min",
    "max",
    "max_length",
)


class RowError(Exception):
    pass


@dataclass
class Converted(importer.Converted):
    """A row's values by column name of the table, and (column, value, reason) of each problem."""

    # Contacts: the company named in the row (resolved to account ids per batch).
    account_ref: str = ""
    account_ref_column: str = ""


def split_list(raw: str) -> list[str]:
    out: list[str] = []
    for part in LIST_SPLIT.split(raw.strip()):
        if part and part not in out:
            out.append(part)
    return out


def parse_bool(raw: str) -> bool:
    v = raw.strip().lower()
    if v in TRUE:
        return True
    if v in FALSE:
        return False
    raise normalize.InvalidValue("must be yes/no (是/否, true/false, 1/0)")


def parse_date(raw: str) -> dt.date:
    v = raw.strip()
    for f in DATE_FORMATS:
        try:
            return dt.datetime.strptime(v, f).date()
        except ValueError:
            continue
    try:
        return dt.datetime.fromisoformat(v).date()
    except ValueError:
        raise normalize.InvalidValue('is not a date (e.g. "1990-05-20" or "1990年5月20日")') from None


def _enum(names: Any, words: dict[str, str], raw: str, label: str) -> str:
    v = raw.strip()
    if not v:
        return ""
    short = words.get(v) or words.get(v.lower()) or names.parse(v.replace(" ", "_"))
    if not short:
        raise normalize.InvalidValue(f"is not a {label}: use one of {', '.join(names.names)}")
    return short


def _custom(definition: Any, raw: str) -> Any:
    t = definition.type
    v = raw.strip()
    if t == "number":
        try:
            number = float(v.replace(",", ""))
        except ValueError:
            raise normalize.InvalidValue("must be a number") from None
        return cf.canonical(definition, int(number) if number.is_integer() else number)
    if t == "boolean":
        return cf.canonical(definition, parse_bool(v))
    if t == "multi_select":
        return cf.canonical(definition, split_list(v))
    if t == "date":
        return cf.canonical(definition, parse_date(v).isoformat())
    return cf.canonical(definition, v)


class Converter:
    """Converts rows of one import: knows the mapping, the custom fields and the new records' owner."""

    def __init__(
        self,
        *,
        target: str,
        columns: list[str],
        mapping: list[tuple[str, str]],
        defs: dict[str, Any],
        tenant_id: str,
        owner_id: str,
        department_id: str,
        created_by: str,
        read_only: frozenset[str] = frozenset(),
    ):
        self.target = target
        self.columns = list(columns)
        self.mapping = list(mapping)
        self.defs = defs
        self.tenant_id = tenant_id
        self.owner_id = owner_id
        self.department_id = department_id
        self.created_by = created_by
        # (cell index, column name, field) of every mapped column.
        self.cells = [(i, c, f) for i, (c, f) in enumerate(mapping) if f and i < len(columns)]
        self.read_only = read_only

    def spec(self) -> dict[str, Any]:
        """What a child process needs to make the same converter (plain values; see `batch_converter`)."""
        return {
            "target": self.target,
            "columns": self.columns,
            "mapping": [list(m) for m in self.mapping],
            "defs": {k: {a: getattr(d, a) for a in CUSTOM_FIELD_ATTRIBUTES} for k, d in self.defs.items()},
            "tenant_id": self.tenant_id,
            "owner_id": self.owner_id,
            "department_id": self.department_id,
            "created_by": self.created_by,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Converter:
        return cls(
            target=spec["target"],
            columns=spec["columns"],
            mapping=[tuple(m) for m in spec["mapping"]],
            defs={k: SimpleNamespace(**v) for k, v in spec["defs"].items()},
            tenant_id=spec["tenant_id"],
            owner_id=spec["owner_id"],
            department_id=spec["department_id"],
            created_by=spec["created_by"],
        )

    def convert(self, row: list[str]) -> Converted:
        out = Converted()
        given: dict[str, tuple[str, str]] = {}
        for i, column, f in self.cells:
            raw = row[i] if i < len(row) else ""
            if len(raw) > 10_000:
                out.errors.append((column, raw[:100], "is longer than 10000 characters"))
                continue
            if "\x00" in raw:
                out.errors.append((column, raw.replace("\x00", ""), "contains a NUL character"))
                continue
            given[f] = (column, raw)
        for f, (column, raw) in given.items():
            if raw.strip() and (f in self.read_only or f.split(".", 1)[0] in self.read_only):
                out.errors.append((column, raw, "is a read-only field for you"))
                continue
            try:
                self._set(out, f, column, raw)
            except normalize.InvalidValue as exc:
                out.errors.append((column, raw, str(exc)))
        if self.target in ("accounts", "contacts"):
            self._finish(out, given)
        return out

    def _set(self, out: Converted, f: str, column: str, raw: str) -> None:
        v = out.values
        text = raw.strip()
        if f.startswith("custom_fields."):
            key = f.split(".", 1)[1]
            if text:
                v.setdefault("custom_fields", {})[key] = _custom(self.defs[key], text)
            return
        if f in TEXT_LIMITS:
            if len(text) > TEXT_LIMITS[f]:
                raise normalize.InvalidValue(f"must be at most {TEXT_LIMITS[f]} characters")
            if f == "website" and text:
                url = text if "://" in text else "https://" + text
                parsed = urlparse(url)
                if parsed.scheme not in ("http", "https") or "." not in parsed.netloc:
                    raise normalize.InvalidValue("is not a web address")
                text = url
            v[f] = text
            if f == "tier" and text:
                v["tier_manual"] = True  # a tier a person gave stays (tier rules leave it alone)
        elif f == "phones":
            phones = split_list(text)[:MAX_LIST]
            v["phones"] = phones
            v["phones_normalized"] = list(dict.fromkeys(normalize.normalize_phone(p) for p in phones))
        elif f == "emails":
            emails = split_list(text)[:MAX_LIST]
            v["emails"] = emails
            v["emails_normalized"] = list(dict.fromkeys(normalize.normalize_email(e) for e in emails))
        elif f == "credit_code":
            v["credit_code"] = normalize.normalize_credit_code(text) if text else None
        elif f == "registered_capital":
            if text:
                try:
                    amount = Decimal(text.replace(",", "").replace("，", ""))
                except InvalidOperation:
                    raise normalize.InvalidValue('is not an amount, e.g. "5000000.00"') from None
                if (
                    not amount.is_finite()
                    or amount < 0
                    or amount.as_tuple().exponent < -2
                    or amount >= 10**18
                ):
                    raise normalize.InvalidValue("must be a non-negative amount with at most 2 decimals")
                v["registered_capital"] = amount
        elif f == "registered_capital_currency":
            code = text.upper() or "CNY"
            if not re.fullmatch(r"[A-Z]{3}", code):
                raise normalize.InvalidValue("must be an ISO 4217 code such as CNY or USD")
            v[f] = code
        elif f == "size":
            v["size"] = _enum(SIZES, SIZE_WORDS, text, "company size")
        elif f == "lifecycle_stage":
            v["lifecycle_stage"] = _enum(STAGES, STAGE_WORDS, text, "lifecycle stage")
        elif f == "buying_role":
            v["buying_role"] = _enum(BUYING_ROLES, ROLE_WORDS, text, "buying role")
        elif f == "satisfaction":
            if text:
                if not text.isdigit() or not 0 <= int(text) <= 5:
                    raise normalize.InvalidValue("must be 1 to 5 (0: not rated)")
                v["satisfaction"] = int(text)
        elif f in ("tags", "competitors", "titles"):
            v[f] = split_list(text)[:MAX_LIST]
        elif f == "wechat":
            if text:
                v["im_handles"] = [{"kind": "wechat", "handle": text}]
        elif f == "birthday":
            v["birthday"] = parse_date(text) if text else None
        elif f.startswith("consent_"):
            v[f] = parse_bool(text)
        elif f == "account":
            out.account_ref, out.account_ref_column = text, column
        elif f == "account_id":
            if text:
                from crm_kit.ids import is_uuid

                if not is_uuid(text):
                    raise normalize.InvalidValue("is not an id")
                v["account_ids"] = [text]
                v["primary_account_id"] = text
        elif f == "owner_id":
            from crm_kit.ids import is_uuid

            if text and not is_uuid(text):
                raise normalize.InvalidValue("is not a user id")
            if text:
                v["owner_id"] = text
        elif f in ("source", "target", "type", "note"):
            v[f] = text
        else:  # pragma: no cover - mapping.check allows only known fields
            raise normalize.InvalidValue("is not a field that can be imported")

    def _finish(self, out: Converted, given: dict[str, tuple[str, str]]) -> None:
        v = out.values
        if not v.get("name"):
            column, raw = given.get("name", ("name", ""))
            if not any(c == column for c, _, _ in out.errors):
                out.errors.append((column, raw, "is required"))
            return
        for key, definition in self.defs.items():
            if definition.required and key not in v.get("custom_fields", {}):
                column = given.get(f"custom_fields.{key}", (f"custom_fields.{key}", ""))[0]
                out.errors.append((column, "", "is required"))
        if out.errors:
            return
        values = v.get("custom_fields", {})
        if self.target == "accounts":
            v["name_key"] = normalize.company_name_key(v["name"])
            names = (v["name"], v.get("alt_name", ""))
        else:
            v["name_key"] = normalize.person_name_key(v["name"])
            names = (v["name"], v.get("name_latin", ""))
        v["search_name"] = search.name_text(*names)
        v["search_grams"] = search.name_grams(*names)
        v["search_extra"] = search.extra_text(
            v.get("phones_normalized", []),
            v.get("emails_normalized", []),
            cf.searchable_values(self.defs, values),
        )
        v.setdefault("owner_id", self.owner_id)
        v["department_id"] = self.department_id if v["owner_id"] == self.owner_id else ""
        v["created_by"] = self.created_by
        v["tenant_id"] = self.tenant_id


def batch_converter(params: dict[str, Any]) -> Any:
    """The converter of a child process (`crm_kit.imports.converter_process`), from `Converter.spec()` and the
    record's COPY columns: rows → Rows, as `RecordBatcher.convert` makes them."""
    from crm_customers.domain.imports.pipeline import convert_rows

    converter, columns = Converter.from_spec(params), tuple(params["record_columns"])
    return lambda rows: convert_rows(converter, columns, rows)
