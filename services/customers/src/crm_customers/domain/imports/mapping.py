"""Which column fills which field: suggested from the header (Chinese or English), checked when chosen."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from crm_kit.errors import FieldError, InvalidArgument

# Field → header words people use for it (compared folded: NFKC, lower case, no spaces or punctuation).
ACCOUNT_FIELDS: dict[str, tuple[str, ...]] = {
    "name": (
        "name",
        "公司名称",
        "客户名称",
        "企业名称",
        "单位名称",
        "公司",
        "客户",
        "名称",
        "company",
        "companyname",
        "accountname",
        "account",
        "customer",
        "customername",
        "organization",
        "organisation",
    ),
    "alt_name": (
        "alt_name",
        "别名",
        "简称",
        "英文名",
        "英文名称",
        "公司英文名",
        "altname",
        "alias",
        "englishname",
        "shortname",
        "brand",
    ),
    "credit_code": (
        "credit_code",
        "统一社会信用代码",
        "信用代码",
        "社会信用代码",
        "税号",
        "纳税人识别号",
        "uscc",
        "creditcode",
        "unifiedsocialcreditcode",
        "taxid",
        "registrationnumber",
    ),
    "legal_representative": (
        "legal_representative",
        "法定代表人",
        "法人",
        "法人代表",
        "legalrepresentative",
        "legalperson",
    ),
    "registered_capital": ("registered_capital", "注册资本", "注册资金", "registeredcapital", "capital"),
    "registered_capital_currency": ("registered_capital_currency", "币种", "注册资本币种", "currency"),
    "industry": ("industry", "行业", "所属行业", "sector"),
    "size": ("size", "规模", "公司规模", "人员规模", "companysize", "employees"),
    "region": ("region", "区域", "销售区域", "大区", "salesregion"),
    "province": ("province", "省份", "省", "所在省份", "state"),
    "city": ("city", "城市", "市", "所在城市"),
    "district": ("district", "区县", "区", "县"),
    "address": ("address", "地址", "详细地址", "公司地址", "注册地址", "street", "streetaddress"),
    "website": ("website", "网站", "官网", "网址", "url", "web", "homepage"),
    "phones": (
        "phones",
        "电话",
        "联系电话",
        "手机",
        "手机号",
        "手机号码",
        "座机",
        "电话号码",
        "phone",
        "mobile",
        "tel",
        "telephone",
        "phonenumber",
        "mobilephone",
        "cellphone",
    ),
    "emails": ("emails", "邮箱", "电子邮箱", "邮件", "电子邮件", "email", "e-mail", "emailaddress", "mail"),
    "source": ("source", "来源", "客户来源", "leadsource"),
    "tier": ("tier", "等级", "客户等级", "级别", "level", "customertier"),
    "lifecycle_stage": (
        "lifecycle_stage",
        "阶段",
        "客户阶段",
        "生命周期",
        "stage",
        "lifecyclestage",
        "status",
    ),
    "tags": ("tags", "标签", "tag", "labels"),
    "notes": ("notes", "备注", "说明", "需求", "note", "remarks", "comments", "description"),
    "competitors": ("competitors", "竞争对手", "竞品", "competitor"),
    "satisfaction": ("satisfaction", "满意度", "csat"),
    "owner_id": ("owner_id", "负责人id", "ownerid"),
}
CONTACT_FIELDS: dict[str, tuple[str, ...]] = {
    "name": ("name", "姓名", "联系人", "联系人姓名", "名字", "fullname", "contactname", "contact", "person"),
    "name_latin": (
        "name_latin",
        "英文名",
        "拼音",
        "英文姓名",
        "namelatin",
        "englishname",
        "latinname",
        "pinyin",
    ),
    "titles": ("titles", "职位", "职务", "头衔", "title", "jobtitle", "position", "role"),
    "phones": ACCOUNT_FIELDS["phones"],
    "emails": ACCOUNT_FIELDS["emails"],
    "wechat": ("wechat", "微信", "微信号", "weixin", "wechatid"),
    "birthday": ("birthday", "生日", "出生日期", "dateofbirth", "dob", "birthdate"),
    "buying_role": ("buying_role", "采购角色", "决策角色", "角色", "buyingrole"),
    "account": (
        "account",
        "公司",
        "公司名称",
        "客户名称",
        "所属公司",
        "所属客户",
        "单位",
        "企业",
        "company",
        "companyname",
        "accountname",
        "organization",
        "employer",
    ),
    "account_id": ("account_id", "客户id", "公司id", "accountid"),
    "tags": ACCOUNT_FIELDS["tags"],
    "notes": ACCOUNT_FIELDS["notes"],
    "consent_email": ("consent_email", "同意邮件", "邮件许可", "consentemail", "emailoptin"),
    "consent_sms": ("consent_sms", "同意短信", "短信许可", "consentsms", "smsoptin"),
    "consent_phone": ("consent_phone", "同意电话", "电话许可", "consentphone"),
    "consent_wechat": ("consent_wechat", "同意微信", "微信许可", "consentwechat"),
    "owner_id": ACCOUNT_FIELDS["owner_id"],
}
RELATIONSHIP_FIELDS: dict[str, tuple[str, ...]] = {
    "source": ("source", "源", "起点", "来源记录", "from", "sourcerecord", "sourceid"),
    "target": ("target", "目标", "终点", "目标记录", "to", "targetrecord", "targetid"),
    "type": ("type", "关系", "关系类型", "类型", "relationship", "relationshiptype", "kind"),
    "note": ("note", "备注", "说明", "notes", "remarks"),
}
FIELDS = {"accounts": ACCOUNT_FIELDS, "contacts": CONTACT_FIELDS, "relationships": RELATIONSHIP_FIELDS}

_NOISE = re.compile(r"[\s_\-:：/()（）\[\]【】*＊.]+")


def fold(header: str) -> str:
    return _NOISE.sub("", unicodedata.normalize("NFKC", header or "").lower())


def suggest(
    target: str, columns: Iterable[str], custom_keys: Iterable[tuple[str, str, str]] = ()
) -> list[tuple[str, str]]:
    """(column, field) for every column; "" when nothing fits. Each field is suggested once (first column wins).
    `custom_keys`: (key, label_zh, label_en) of the tenant's custom fields → "custom_fields.<key>"."""
    table: dict[str, str] = {}
    for field, words in FIELDS[target].items():
        for w in words:
            table.setdefault(fold(w), field)
    for key, zh, en in custom_keys:
        for w in (key, zh, en, f"custom_fields.{key}"):
            if w:
                table.setdefault(fold(w), f"custom_fields.{key}")
    used: set[str] = set()
    out = []
    for column in columns:
        field = table.get(fold(column), "")
        if field in used:
            field = ""
        if field:
            used.add(field)
        out.append((column, field))
    return out


def check(
    target: str, columns: list[str], mapping: list[tuple[str, str]], custom_keys: Iterable[str] = ()
) -> list[tuple[str, str]]:
    """The chosen mapping, complete (unnamed columns are ignored) and valid, or 422 naming each problem."""
    allowed = set(FIELDS[target]) | {f"custom_fields.{k}" for k in custom_keys}
    chosen = dict(mapping)
    errors = []
    for column, field in mapping:
        if column not in columns:
            errors.append(FieldError(f"mapping.{column}", "is not a column of the file"))
        elif field and field not in allowed:
            errors.append(FieldError(f"mapping.{column}", f"{field} is not a field of {target}"))
    fields = [f for f in chosen.values() if f]
    for f in set(fields):
        if fields.count(f) > 1:
            errors.append(FieldError("mapping", f"{f} is filled by more than one column"))
    required = {"accounts": ("name",), "contacts": ("name",), "relationships": ("source", "target", "type")}[
        target
    ]
    for f in required:
        if f not in fields:
            errors.append(FieldError("mapping", f"no column fills {f}, which is required"))
    if errors:
        detail = "; ".join(f"{e.field}: {e.message}" for e in errors)
        raise InvalidArgument(f"the column mapping is not usable: {detail}", field_errors=errors)
    return [(c, chosen.get(c, "")) for c in columns]
