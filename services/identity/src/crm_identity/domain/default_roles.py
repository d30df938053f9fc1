"""The roles a new company starts with, named in its language: the built-in administrator and the usual
sales-team roles (sales manager, sales rep, marketer, support agent, field engineer). Only the administrator
is built in; the others are ordinary roles an administrator edits, renames or deletes like any other.

Permissions name the objects the services check today (customers: account, contact, interaction,
relationship; sales: lead, opportunity, quote, contract, order, payment, task, and what they are read
against). Data scopes: a manager sees their department and the ones below it, a rep their own records;
marketers, support agents and field engineers read every customer and work on their own leads, interactions
and tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crm.identity.v1 import identity_pb2 as pb
from crm_kit.validation import Check

OWN = pb.DATA_SCOPE_OWN
TREE = pb.DATA_SCOPE_DEPARTMENT_TREE
ALL = pb.DATA_SCOPE_ALL

CUSTOMERS = ("account", "contact", "interaction", "relationship")
DEALS = ("lead", "opportunity", "quote", "contract", "order", "payment", "task")
# What a sales team reads to work: the catalogue, the pipelines, the pools, colleagues and departments (an
# owner's department files a record for the data scopes), relationship types.
REFERENCE = ("pipeline", "lead_pool", "product", "price_book", "relationship_type", "user", "department")


def _p(obj: str, actions: tuple[str, ...], scope: int) -> pb.Permission:
    return pb.Permission(object=obj, actions=list(actions), data_scope=scope)


def _read(objects: tuple[str, ...], scope: int = ALL) -> list[pb.Permission]:
    return [_p(o, ("read",), scope) for o in objects]


MANAGER = [
    *[_p(o, ("create", "read", "update", "delete", "export", "assign"), TREE) for o in CUSTOMERS],
    *[_p(o, ("create", "read", "update", "delete", "export", "assign", "approve"), TREE) for o in DEALS],
    _p("forecast", ("read", "update"), TREE),
    _p("lead_pool", ("read", "update", "assign"), ALL),
    _p("merge", ("read",), TREE),
    _p("duplicate_rule", ("read",), ALL),
    *_read(tuple(o for o in REFERENCE if o != "lead_pool")),
]
REP = [
    *[_p(o, ("create", "read", "update"), OWN) for o in CUSTOMERS],
    *[_p(o, ("create", "read", "update"), OWN) for o in DEALS],
    _p("forecast", ("read",), OWN),
    *_read(REFERENCE),
]
MARKETER = [
    _p("lead", ("create", "read", "update", "import", "export"), OWN),
    _p("web_form", ("create", "read", "update"), ALL),
    _p("task", ("create", "read", "update"), OWN),
    *_read(("account", "contact", "interaction", "relationship")),
    *_read(("lead_pool", "product", "relationship_type", "user", "department")),
]
SUPPORT = [
    _p("interaction", ("create", "read", "update"), ALL),
    _p("task", ("create", "read", "update"), OWN),
    *_read(("account", "contact", "relationship", "contract", "order")),
    *_read(("product", "relationship_type", "user", "department")),
]
FIELD_ENGINEER = [
    _p("interaction", ("create", "read", "update"), OWN),
    _p("task", ("create", "read", "update"), OWN),
    *_read(("account", "contact", "relationship", "order")),
    *_read(("product", "relationship_type", "user", "department")),
]


@dataclass(frozen=True)
class DefaultRole:
    key: str
    zh: tuple[str, str]  # name, description
    en: tuple[str, str]
    permissions: list[pb.Permission]

    def name(self, locale: str) -> str:
        return (self.en if locale == "en" else self.zh)[0]

    def description(self, locale: str) -> str:
        return (self.en if locale == "en" else self.zh)[1]


ADMINISTRATOR = DefaultRole(
    "administrator",
    ("系统管理员", "本公司的一切数据与设置"),
    ("Administrator", "Everything, everywhere in this company"),
    [_p("*", ("*",), ALL)],
)
ROLES = [
    DefaultRole(
        "sales_manager",
        ("销售经理", "本部门及下级部门的客户、线索与商机；审批报价与合同"),
        ("Sales manager", "Customers, leads and deals of their department and the ones below; approves"),
        MANAGER,
    ),
    DefaultRole(
        "sales_rep",
        ("销售代表", "本人的客户、线索、商机、报价与合同"),
        ("Sales rep", "Their own customers, leads, deals, quotes and contracts"),
        REP,
    ),
    DefaultRole(
        "marketer",
        ("市场专员", "本人的线索与网页表单；查看全部客户"),
        ("Marketer", "Their own leads and the web forms; reads every customer"),
        MARKETER,
    ),
    DefaultRole(
        "support_agent",
        ("客服专员", "客户沟通记录与本人的任务；查看全部客户、合同与订单"),
        ("Support agent", "Customer interactions and their own tasks; reads customers, contracts, orders"),
        SUPPORT,
    ),
    DefaultRole(
        "field_engineer",
        ("现场工程师", "本人的拜访记录与任务；查看全部客户与订单"),
        ("Field engineer", "Their own visits and tasks; reads every customer and order"),
        FIELD_ENGINEER,
    ),
]


def permissions_json(role: DefaultRole) -> list[dict[str, Any]]:
    """Stored exactly as CreateRole stores permissions (and checked by the same rules)."""
    from crm_identity.domain.roles import permissions_json as to_json

    check = Check()
    out = to_json(check, role.permissions)
    check.done()
    return out
