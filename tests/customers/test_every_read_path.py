"""Every way out of customers goes through the one read step (crm_kit.policy: reveal / redact): the class test of
issue 10, item 5.

The read RPCs are derived from the service descriptors (`crm_kit.policy.read_methods`, plus the merge, whose
answer is the merged record); `PATHS` says how to call each. A read RPC without a case fails
`test_the_table_covers_every_read_rpc`, so a new read path cannot be forgotten.

For each marked object (account, contact, interaction) two users are made: one with every permission of the
service except any on that object, and one with every permission but that object's marked fields hidden; and one
user has every permission on every object with data scope "own" (本人) and owns none of the marked records (the
admin owns them and the import behind the reports). Every path is called as the admin (who must see the markers
the table says the path shows: the check can fail) and as each user: an answer may be refused, but nothing it
carries (message, stream, file) may hold a marker of an object that user may not read (for the own-scope user:
any marker). The seeded world and its users are shared by the module's tests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from crm.customers.v1 import customers_pb2 as pb
from crm.customers.v1 import customers_pb2_grpc, data_quality_pb2_grpc, duplicates_pb2
from crm.customers.v1 import data_quality_pb2 as dq
from crm_kit.policy import read_methods
from google.protobuf import field_mask_pb2

from tests.customers.helpers import (
    auth,
    credit_code,
    invite_and_join,
    new_account,
    role,
    sign_up,
    without_default_rules,
)
from tests.customers.test_import import csv_bytes, run_to_end, upload
from tests.customers.test_merge import now
from tests.read_paths import answered, check_read_paths, check_write_answers

SERVICES = (
    pb.DESCRIPTOR.services_by_name["CustomersService"],
    dq.DESCRIPTOR.services_by_name["CustomersDataService"],
)
# Writes whose answer is a record as it now is: they take the same step.
ANSWERING_WRITES = {"CustomersDataService/CreateMerge"}
READS = read_methods(*SERVICES) | ANSWERING_WRITES

# Every permission object of customers (a user "without" one has all the others).
OBJECTS = (
    "account",
    "contact",
    "interaction",
    "relationship",
    "relationship_type",
    "custom_field",
    "duplicate_rule",
    "recycle_bin",
    "tier_rules",
    "saved_view",
)
TAG = "mk7781"
OWN = "*"  # the own-scope user's key: every marked object is outside their scope
# Per marked object: the fields hidden from the second user, and the values the admin gave them.
MARKED = {
    "account": (("notes", "phones", "custom_budget"), (f"acctnotes{TAG}", "13911117781", f"budget{TAG}")),
    "contact": (
        ("notes", "emails", "custom_secret"),
        (f"cnotes{TAG}", f"contact{TAG}@example.cn", f"secret{TAG}", f"bad{TAG}@@example"),
    ),
    "interaction": (("subject", "body", "outcome"), (f"subject{TAG}", f"body{TAG}", f"outcome{TAG}")),
}


@dataclass
class World:
    customers: Any
    data: Any
    admin: Any
    ids: dict[str, str] = field(default_factory=dict)
    # (marked object or OWN, how) → the metadata of a user who may not see it.
    users: dict[tuple[str, str], Any] = field(default_factory=dict)


Call = Callable[[World, Any], Awaitable[Any]]


@dataclass(frozen=True)
class Path:
    call: Call
    # The marked objects whose values the admin's answer holds (checked, so the path is really exercised).
    shows: tuple[str, ...] = ()


def by_id(method: str, request_cls: Any, key: str, **extra: Any) -> Call:
    async def call(w: World, md: Any) -> Any:
        service = w.data if hasattr(w.data, method) else w.customers
        return await getattr(service, method)(request_cls(id=w.ids[key], **extra), metadata=md)

    return call


def plain(method: str, request: Any) -> Call:
    async def call(w: World, md: Any) -> Any:
        service = w.data if hasattr(w.data, method) else w.customers
        return await getattr(service, method)(request, metadata=md)

    return call


def streamed(method: str, make: Callable[[World], Any]) -> Call:
    async def call(w: World, md: Any) -> Any:
        return [part async for part in getattr(w.data, method)(make(w), metadata=md)]

    return call


async def _merge(w: World, md: Any) -> Any:
    keep = await new_account(
        w.customers,
        w.admin,
        f"保留{uuid.uuid4().hex[:6]}",
        notes=f"acctnotes{TAG}",
        custom_fields={"budget": f"budget{TAG}"},
    )
    fold = await new_account(w.customers, w.admin, f"并入{uuid.uuid4().hex[:6]}", phones=["13911117781"])
    return await w.data.CreateMerge(
        dq.CreateMergeRequest(record_type=pb.RECORD_TYPE_ACCOUNT, survivor_id=keep.id, merged_ids=[fold.id]),
        metadata=md,
    )


async def _own_view(w: World, md: Any) -> Any:
    """A view is its owner's (or their department's): the caller reads one of their own."""
    view = pb.SavedView(record_type=ACCOUNT, name=f"v{uuid.uuid4().hex[:6]}", query="远景", columns=["notes"])
    made = await w.customers.CreateSavedView(pb.CreateSavedViewRequest(saved_view=view), metadata=md)
    return await w.customers.GetSavedView(pb.GetSavedViewRequest(id=made.saved_view.id), metadata=md)


async def _dry_run(w: World, md: Any) -> Any:
    """A relationship import of the caller's own file naming the admin's records (by code and phone)."""

    class Caller:
        pass

    Caller.md = md
    content = csv_bytes([["源", "目标", "关系类型"], [credit_code(77), "13700007781", "partner_of"]])
    job = await upload(w.data, Caller, content, target=dq.IMPORT_TARGET_RELATIONSHIPS, name="r.csv")
    return await w.data.DryRunImport(dq.DryRunImportRequest(id=job.id), metadata=md)


ACCOUNT, CONTACT = pb.RECORD_TYPE_ACCOUNT, pb.RECORD_TYPE_CONTACT
CSV = dq.FILE_FORMAT_CSV
PATHS: dict[str, Path] = {
    "CustomersService/GetAccount": Path(by_id("GetAccount", pb.GetAccountRequest, "account"), ("account",)),
    "CustomersService/ListAccounts": Path(plain("ListAccounts", pb.ListAccountsRequest()), ("account",)),
    "CustomersService/CountAccounts": Path(plain("CountAccounts", pb.CountAccountsRequest())),
    "CustomersService/ListAccountStageChanges": Path(
        by_id("ListAccountStageChanges", pb.ListAccountStageChangesRequest, "account")
    ),
    "CustomersService/GetAccountTree": Path(by_id("GetAccountTree", pb.GetAccountTreeRequest, "parent")),
    "CustomersService/GetTierRules": Path(plain("GetTierRules", pb.GetTierRulesRequest())),
    "CustomersService/GetContact": Path(by_id("GetContact", pb.GetContactRequest, "contact"), ("contact",)),
    "CustomersService/ListContacts": Path(plain("ListContacts", pb.ListContactsRequest()), ("contact",)),
    "CustomersService/CountContacts": Path(plain("CountContacts", pb.CountContactsRequest())),
    "CustomersService/GetInteraction": Path(
        by_id("GetInteraction", pb.GetInteractionRequest, "interaction"), ("interaction",)
    ),
    "CustomersService/ListInteractions": Path(
        plain("ListInteractions", pb.ListInteractionsRequest()), ("interaction",)
    ),
    "CustomersService/ListAccountTimeline": Path(
        by_id("ListAccountTimeline", pb.ListAccountTimelineRequest, "account", include_contacts=True),
        ("interaction",),
    ),
    "CustomersService/ListContactTimeline": Path(
        by_id("ListContactTimeline", pb.ListContactTimelineRequest, "contact"), ("interaction",)
    ),
    "CustomersService/ListRelationshipTypes": Path(
        plain("ListRelationshipTypes", pb.ListRelationshipTypesRequest())
    ),
    "CustomersService/GetRelationship": Path(
        by_id("GetRelationship", pb.GetRelationshipRequest, "relationship")
    ),
    "CustomersService/ListRelationships": Path(plain("ListRelationships", pb.ListRelationshipsRequest())),
    "CustomersService/GetAccountGraph": Path(by_id("GetAccountGraph", pb.GetAccountGraphRequest, "account")),
    "CustomersService/GetContactGraph": Path(by_id("GetContactGraph", pb.GetContactGraphRequest, "contact")),
    "CustomersService/FindPath": Path(
        lambda w, md: w.customers.FindPath(
            pb.FindPathRequest(
                from_type=CONTACT, from_id=w.ids["contact"], to_type=ACCOUNT, to_id=w.ids["partner"]
            ),
            metadata=md,
        )
    ),
    "CustomersService/GetCustomField": Path(
        by_id("GetCustomField", pb.GetCustomFieldRequest, "custom_field")
    ),
    "CustomersService/ListCustomFields": Path(plain("ListCustomFields", pb.ListCustomFieldsRequest())),
    "CustomersService/GetCustomFieldSchemas": Path(
        plain("GetCustomFieldSchemas", pb.GetCustomFieldSchemasRequest())
    ),
    "CustomersService/GetSavedView": Path(_own_view),
    "CustomersService/ListSavedViews": Path(plain("ListSavedViews", pb.ListSavedViewsRequest())),
    "CustomersService/Search": Path(plain("Search", pb.SearchRequest(q="远景"))),
    "CustomersService/GetRecycleBinSettings": Path(
        plain("GetRecycleBinSettings", pb.GetRecycleBinSettingsRequest())
    ),
    "CustomersDataService/GetDuplicateRule": Path(
        by_id("GetDuplicateRule", dq.GetDuplicateRuleRequest, "duplicate_rule")
    ),
    "CustomersDataService/ListDuplicateRules": Path(
        plain("ListDuplicateRules", dq.ListDuplicateRulesRequest())
    ),
    "CustomersDataService/CheckDuplicates": Path(
        plain(
            "CheckDuplicates",
            dq.CheckDuplicatesRequest(record_type=ACCOUNT, account=pb.Account(name="上海远景能源有限公司")),
        )
    ),
    "CustomersDataService/GetDuplicateScan": Path(
        by_id("GetDuplicateScan", dq.GetDuplicateScanRequest, "scan")
    ),
    "CustomersDataService/ListDuplicateScans": Path(
        plain("ListDuplicateScans", dq.ListDuplicateScansRequest())
    ),
    "CustomersDataService/ListDuplicateGroups": Path(
        lambda w, md: w.data.ListDuplicateGroups(
            dq.ListDuplicateGroupsRequest(scan_id=w.ids["scan"]), metadata=md
        ),
        ("account",),
    ),
    "CustomersDataService/GetMerge": Path(by_id("GetMerge", dq.GetMergeRequest, "merge")),
    "CustomersDataService/ListMerges": Path(plain("ListMerges", dq.ListMergesRequest())),
    "CustomersDataService/CreateMerge": Path(_merge, ("account",)),
    "CustomersDataService/GetImport": Path(by_id("GetImport", dq.GetImportRequest, "import")),
    "CustomersDataService/ListImports": Path(plain("ListImports", dq.ListImportsRequest())),
    "CustomersDataService/DryRunImport": Path(_dry_run),
    "CustomersDataService/ListImportErrors": Path(
        by_id("ListImportErrors", dq.ListImportErrorsRequest, "import"), ("contact",)
    ),
    "CustomersDataService/DownloadImportErrors": Path(
        streamed("DownloadImportErrors", lambda w: dq.DownloadImportErrorsRequest(id=w.ids["import"])),
        ("contact",),
    ),
    "CustomersDataService/ExportRecords": Path(
        streamed("ExportRecords", lambda w: dq.ExportRecordsRequest(record_type=ACCOUNT, format=CSV)),
        ("account",),
    ),
}


def test_the_table_covers_every_read_rpc():
    """A new read RPC (or a renamed one) needs its case here: the read paths come from the descriptors."""
    assert sorted(READS - PATHS.keys()) == []
    assert sorted(PATHS.keys() - READS) == []


async def seed(identity, customers, data) -> World:
    company = await sign_up(identity)
    w = World(customers, data, company)
    md = company.md
    for record_type, key in ((ACCOUNT, "budget"), (CONTACT, "secret")):
        made = await customers.CreateCustomField(
            pb.CreateCustomFieldRequest(
                custom_field=pb.CustomField(
                    record_type=record_type,
                    key=key,
                    label_zh=key,
                    label_en=key,
                    type=pb.CUSTOM_FIELD_TYPE_TEXT,
                )
            ),
            metadata=md,
        )
        w.ids["custom_field"] = made.custom_field.id
    # The world's duplicate rule is its own phone rule, alone: the company's default rules are removed.
    await without_default_rules(data, company.tenant.id, md)
    w.ids["duplicate_rule"] = (
        await data.CreateDuplicateRule(
            dq.CreateDuplicateRuleRequest(
                duplicate_rule=dq.DuplicateRule(
                    name="电话", record_type=ACCOUNT, match=duplicates_pb2.DUPLICATE_MATCH_PHONE, active=True
                )
            ),
            metadata=md,
        )
    ).duplicate_rule.id
    notes, phone, budget = MARKED["account"][1]
    parent = await new_account(customers, company, f"远景集团{TAG}", credit_code=credit_code(76))
    account = await new_account(
        customers,
        company,
        f"上海远景能源有限公司{TAG}",
        credit_code=credit_code(77),
        notes=notes,
        phones=[phone],
        custom_fields={"budget": budget},
        parent_id=parent.id,
    )
    twin = await new_account(customers, company, "远景能源（上海）", phones=[phone], notes=notes)
    partner = await new_account(customers, company, f"远景合作伙伴{TAG}", notes=notes)
    w.ids.update(account=account.id, parent=parent.id, partner=partner.id, twin=twin.id)
    cnotes, email, secret, imported = MARKED["contact"][1]
    contact = await customers.CreateContact(
        pb.CreateContactRequest(
            contact=pb.Contact(
                name=f"张远景{TAG}",
                emails=[email],
                phones=["13700007781"],
                notes=cnotes,
                custom_fields={"secret": secret},
                account_ids=[account.id],
            )
        ),
        metadata=md,
    )
    w.ids["contact"] = contact.contact.id
    subject, body, outcome = MARKED["interaction"][1]
    interaction = await customers.CreateInteraction(
        pb.CreateInteractionRequest(
            interaction=pb.Interaction(
                kind=pb.INTERACTION_KIND_MEETING,
                subject=subject,
                body=body,
                outcome=outcome,
                occurred_at=now(),
                account_ids=[account.id],
                contact_ids=[contact.contact.id],
            )
        ),
        metadata=md,
    )
    w.ids["interaction"] = interaction.interaction.id
    relation = await customers.CreateRelationship(
        pb.CreateRelationshipRequest(
            type="partner_of",
            source=pb.RecordRef(type=ACCOUNT, id=account.id),
            target=pb.RecordRef(type=ACCOUNT, id=partner.id),
            note=f"合作{TAG}",
        ),
        metadata=md,
    )
    w.ids["relationship"] = relation.relationship.id
    view = await customers.CreateSavedView(
        pb.CreateSavedViewRequest(
            saved_view=pb.SavedView(record_type=ACCOUNT, name="远景", query="远景", shared=True)
        ),
        metadata=md,
    )
    w.ids["saved_view"] = view.saved_view.id
    scan = await data.StartDuplicateScan(dq.StartDuplicateScanRequest(record_type=ACCOUNT), metadata=md)
    w.ids["scan"] = scan.duplicate_scan.id
    for _ in range(400):
        got = await data.GetDuplicateScan(dq.GetDuplicateScanRequest(id=w.ids["scan"]), metadata=md)
        if got.duplicate_scan.finished_at.seconds:
            break
        await asyncio.sleep(0.05)
    folded = await new_account(customers, company, f"待合并的远景{TAG}", notes=notes)
    merged = await data.CreateMerge(
        dq.CreateMergeRequest(record_type=ACCOUNT, survivor_id=partner.id, merged_ids=[folded.id]),
        metadata=md,
    )
    w.ids["merge"] = merged.merge.id
    # An import of contacts whose failing row carries a value of a field hidden from some: its report.
    content = csv_bytes([["姓名", "邮箱", "电话"], ["王五", imported, ""]])
    job = await upload(data, company, content)
    await data.StartImport(dq.StartImportRequest(id=job.id), metadata=md)
    await run_to_end(data, company, job.id)
    w.ids["import"] = job.id
    return w


def grants(
    *, without: str = "", hiding: tuple[str, ...] = (), on: str = "", scope: str = "DATA_SCOPE_ALL"
) -> list[dict]:
    return [
        {
            "object": obj,
            "actions": ["*"],
            "data_scope": scope,
            "field_rules": [
                {"field": f, "access": "FIELD_ACCESS_HIDDEN"} for f in (hiding if obj == on else ())
            ],
        }
        for obj in OBJECTS
        if obj != without
    ]


async def member(identity, company, permissions: list[dict]) -> Any:
    rid = await role(identity, company, f"role-{uuid.uuid4().hex[:12]}", permissions)
    _, token = await invite_and_join(identity, company, role_ids=[rid])
    return auth(token.access_token)


@pytest.fixture(scope="module")
async def world(identity, customers_service) -> World:
    """One seeded company for the module, and its users: per marked object one without any permission on it
    and one with its marked fields hidden; and one with every permission on every object but data scope
    "own" (本人), who owns none of the marked records (the admin does)."""
    async with grpc.aio.insecure_channel(customers_service.address) as channel:
        w = await seed(
            identity,
            customers_pb2_grpc.CustomersServiceStub(channel),
            data_quality_pb2_grpc.CustomersDataServiceStub(channel),
        )
        for obj, (hidden, _) in MARKED.items():
            w.users[(obj, "without permission")] = await member(identity, w.admin, grants(without=obj))
            w.users[(obj, "fields hidden")] = await member(identity, w.admin, grants(hiding=hidden, on=obj))
        w.users[(OWN, "own scope")] = await member(identity, w.admin, grants(scope="DATA_SCOPE_OWN"))
        yield w


# The admin's records (and records about them: a merge, an import) that no own-scope user may learn of.
OWNED = ("account", "parent", "partner", "twin", "contact", "interaction", "relationship", "merge", "import")


def markers(obj: str, w: World, *, ids: bool = True) -> tuple[str, ...]:
    """The values `obj`'s user may not see: the marked object's; for the own-scope user every marked one, and
    anything of the admin's records: their names and notes (they carry the tag) and their ids."""
    if obj == OWN:
        owned = (w.ids[k] for k in OWNED) if ids else ()
        return (TAG, *(v for _, values in MARKED.values() for v in values), *owned)
    return MARKED[obj][1]


async def test_no_read_path_shows_what_the_caller_may_not_read(world):
    await check_read_paths(PATHS, world, MARKED, markers)


# ---------------------------------------------------------------- write answers
#
# A write that answers the record (created, updated, restored) answers it through the same read step: a user
# allowed the write (changing another field) never gets a hidden value back. The writes come from the
# descriptors too: every write whose answer carries a marked object's message needs a case in `WRITES`, which
# makes a fresh record with the markers as the admin and then writes it as the caller.

# The message of each marked object (the answer of a write carrying one of them answers that object).
RECORDS = {"account": (pb.Account,), "contact": (pb.Contact,), "interaction": (pb.Interaction,)}


WRITE_ANSWERS = answered(SERVICES, RECORDS, READS)


async def _marked_account(w: World) -> pb.Account:
    notes, phone, budget = MARKED["account"][1]
    return await new_account(
        w.customers,
        w.admin,
        f"远景{uuid.uuid4().hex[:6]}",
        notes=notes,
        phones=[phone],
        custom_fields={"budget": budget},
    )


async def _marked_contact(w: World) -> pb.Contact:
    cnotes, email, secret, _ = MARKED["contact"][1]
    made = await w.customers.CreateContact(
        pb.CreateContactRequest(
            contact=pb.Contact(
                name=f"张{uuid.uuid4().hex[:4]}",
                emails=[email],
                notes=cnotes,
                custom_fields={"secret": secret},
                account_ids=[w.ids["account"]],
            )
        ),
        metadata=w.admin.md,
    )
    return made.contact


async def _marked_interaction(w: World) -> pb.Interaction:
    subject, body, outcome = MARKED["interaction"][1]
    made = await w.customers.CreateInteraction(
        pb.CreateInteractionRequest(
            interaction=pb.Interaction(
                kind=pb.INTERACTION_KIND_CALL,
                subject=subject,
                body=body,
                outcome=outcome,
                occurred_at=now(),
                account_ids=[w.ids["account"]],
                contact_ids=[w.ids["contact"]],
            )
        ),
        metadata=w.admin.md,
    )
    return made.interaction


def _mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


async def _update_account(w: World, md: Any) -> Any:
    a = await _marked_account(w)
    return await w.customers.UpdateAccount(
        pb.UpdateAccountRequest(id=a.id, account=pb.Account(name=f"{a.name}改"), update_mask=_mask("name")),
        metadata=md,
    )


async def _restore_account(w: World, md: Any) -> Any:
    a = await _marked_account(w)
    await w.customers.DeleteAccount(pb.DeleteAccountRequest(id=a.id), metadata=w.admin.md)
    return await w.customers.RestoreAccount(pb.RestoreAccountRequest(id=a.id), metadata=md)


async def _create_account(w: World, md: Any) -> Any:
    """Named like the marked account and in its group: the answer (and its duplicate warnings) quote nothing
    hidden of the records it resembles."""
    return await w.customers.CreateAccount(
        pb.CreateAccountRequest(account=pb.Account(name="上海远景能源有限公司", parent_id=w.ids["parent"])),
        metadata=md,
    )


async def _update_contact(w: World, md: Any) -> Any:
    c = await _marked_contact(w)
    return await w.customers.UpdateContact(
        pb.UpdateContactRequest(id=c.id, contact=pb.Contact(name=f"{c.name}改"), update_mask=_mask("name")),
        metadata=md,
    )


async def _restore_contact(w: World, md: Any) -> Any:
    c = await _marked_contact(w)
    await w.customers.DeleteContact(pb.DeleteContactRequest(id=c.id), metadata=w.admin.md)
    return await w.customers.RestoreContact(pb.RestoreContactRequest(id=c.id), metadata=md)


async def _create_contact(w: World, md: Any) -> Any:
    return await w.customers.CreateContact(
        pb.CreateContactRequest(
            contact=pb.Contact(name="张远景", phones=["13700007781"], account_ids=[w.ids["account"]])
        ),
        metadata=md,
    )


async def _update_interaction(w: World, md: Any) -> Any:
    i = await _marked_interaction(w)
    return await w.customers.UpdateInteraction(
        pb.UpdateInteractionRequest(
            id=i.id, interaction=pb.Interaction(kind=pb.INTERACTION_KIND_MEETING), update_mask=_mask("kind")
        ),
        metadata=md,
    )


async def _create_interaction(w: World, md: Any) -> Any:
    return await w.customers.CreateInteraction(
        pb.CreateInteractionRequest(
            interaction=pb.Interaction(
                kind=pb.INTERACTION_KIND_CALL, occurred_at=now(), account_ids=[w.ids["account"]]
            )
        ),
        metadata=md,
    )


# Per write: the call, and the marked objects whose values the admin's answer holds (the check can fail).
WRITES: dict[str, Path] = {
    "CustomersService/CreateAccount": Path(_create_account),
    "CustomersService/UpdateAccount": Path(_update_account, ("account",)),
    "CustomersService/RestoreAccount": Path(_restore_account, ("account",)),
    "CustomersService/CreateContact": Path(_create_contact),
    "CustomersService/UpdateContact": Path(_update_contact, ("contact",)),
    "CustomersService/RestoreContact": Path(_restore_contact, ("contact",)),
    "CustomersService/CreateInteraction": Path(_create_interaction),
    "CustomersService/UpdateInteraction": Path(_update_interaction, ("interaction",)),
}


def test_the_table_covers_every_write_that_answers_a_record():
    assert sorted(WRITE_ANSWERS.keys() - WRITES.keys()) == []
    assert sorted(WRITES.keys() - WRITE_ANSWERS.keys()) == []


async def test_no_write_answer_shows_a_hidden_field(world):
    """Each write, as the admin (their answer must hold the markers the table says) and as the user from whom
    the answered object's marked fields are hidden, who is allowed the write: their answer comes (a refusal
    would mean the case tests nothing) and holds none of those values; and as the own-scope user, whose answer
    (if any) holds nothing of the admin's records."""
    w = world
    await check_write_answers(WRITES, WRITE_ANSWERS, w, MARKED, markers, OWN)
