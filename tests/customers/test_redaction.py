"""The leaks of issue 10, item 5, one test each: timelines showed every interaction (and its subject and body
in the title and summary) to whoever read the record; sales entries showed amounts the sales rules hide; the
merge answer kept hidden custom fields; the relationship import's dry run found records outside the caller's
scope. Every answer now goes through `crm_kit.policy` (Decision.reveal / redact_message / Text)."""

from __future__ import annotations

import uuid

from crm.customers.v1 import customers_pb2 as pb
from crm.customers.v1 import data_quality_pb2 as dq
from crm.sales.v1 import events_pb2, pipelines_pb2
from google.protobuf import json_format

from tests.customers.helpers import auth, invite_and_join, new_account, role, sign_up
from tests.customers.test_import import csv_bytes, upload
from tests.customers.test_merge import data, now  # noqa: F401
from tests.customers.test_sales_timeline import deliver, envelope

SUBJECT, BODY, OUTCOME = "机密报价-SUBJ7781", "底价 7781 万，勿外传-BODY", "客户同意-OUT7781"


async def user(identity, company, *permissions: dict):
    """A member with one role of these permissions; returns their metadata."""
    rid = await role(identity, company, f"role-{uuid.uuid4().hex[:12]}", list(permissions))
    _, token = await invite_and_join(identity, company, role_ids=[rid])
    return auth(token.access_token)


def grant(obj: str, scope: str = "DATA_SCOPE_ALL", *hidden: str, actions=("read",)) -> dict:
    return {
        "object": obj,
        "actions": list(actions),
        "data_scope": scope,
        "field_rules": [{"field": f, "access": "FIELD_ACCESS_HIDDEN"} for f in hidden],
    }


def text_of(message) -> str:
    return json_format.MessageToJson(message, ensure_ascii=False)


async def both_timelines(customers, account_id, contact_id, md) -> list[pb.TimelineItem]:
    a = await customers.ListAccountTimeline(pb.ListAccountTimelineRequest(id=account_id), metadata=md)
    c = await customers.ListContactTimeline(pb.ListContactTimelineRequest(id=contact_id), metadata=md)
    return [*a.items, *c.items]


async def test_timelines_show_interactions_only_by_the_interaction_permission_and_its_fields(
    identity, customers
):
    company = await sign_up(identity)
    account = await new_account(customers, company, "比亚迪股份有限公司")
    person = (
        await customers.CreateContact(
            pb.CreateContactRequest(contact=pb.Contact(name="王传福", account_ids=[account.id])),
            metadata=company.md,
        )
    ).contact
    for outcome in ("", OUTCOME):
        await customers.CreateInteraction(
            pb.CreateInteractionRequest(
                interaction=pb.Interaction(
                    kind=pb.INTERACTION_KIND_VISIT,
                    subject=SUBJECT,
                    body=BODY,
                    outcome=outcome,
                    occurred_at=now(),
                    account_ids=[account.id],
                    contact_ids=[person.id],
                )
            ),
            metadata=company.md,
        )
    records = (grant("account"), grant("contact"))
    # The admin sees both visits on both timelines, subject in the title, outcome or body in the summary.
    full = await both_timelines(customers, account.id, person.id, company.md)
    assert len(full) == 4 and all(i.title == f"拜访: {SUBJECT}" for i in full)
    assert {i.summary for i in full} == {BODY, OUTCOME}

    no_permission = await user(identity, company, *records)
    assert await both_timelines(customers, account.id, person.id, no_permission) == []
    own_scope = await user(identity, company, *records, grant("interaction", "DATA_SCOPE_OWN"))
    assert await both_timelines(customers, account.id, person.id, own_scope) == []

    hidden = await user(
        identity, company, *records, grant("interaction", "DATA_SCOPE_ALL", "subject", "body", "outcome")
    )
    items = await both_timelines(customers, account.id, person.id, hidden)
    assert len(items) == 4
    assert {i.title for i in items} == {"拜访"} and {i.summary for i in items} == {""}
    for i in items:
        assert SUBJECT not in text_of(i) and BODY[:10] not in text_of(i) and OUTCOME not in text_of(i)
    # Only the outcome hidden: the summary falls back to the body the reader sees, never the outcome.
    no_outcome = await user(identity, company, *records, grant("interaction", "DATA_SCOPE_ALL", "outcome"))
    items = await both_timelines(customers, account.id, person.id, no_outcome)
    assert {i.summary for i in items} == {BODY} and all(OUTCOME not in text_of(i) for i in items)


async def test_sales_entries_show_only_what_the_sales_objects_rules_let_through(
    identity, customers, customers_service
):
    company = await sign_up(identity)
    account = await new_account(customers, company, "蔚来汽车")
    deal = pipelines_pb2.Opportunity(
        id="o-redact",
        name="ERP 升级",
        account_id=account.id,
        amount="98765.43",
        currency="CNY",
        owner_id=company.admin.id,
        won_reason="价格-REASON-5521",
    )
    await deliver(customers_service, envelope(events_pb2.OpportunityWon(opportunity=deal), company.tenant.id))
    reader = await user(identity, company, grant("account"), grant("opportunity"))
    shown = (
        await customers.ListAccountTimeline(pb.ListAccountTimelineRequest(id=account.id), metadata=reader)
    ).items
    assert [i.summary for i in shown] == ["98765.43 CNY；原因：价格-REASON-5521"]  # the rules matter

    blind = await user(
        identity, company, grant("account"), grant("opportunity", "DATA_SCOPE_ALL", "amount", "won_reason")
    )
    for locale in ("zh-CN", "en"):
        request = pb.ListAccountTimelineRequest(id=account.id, locale=locale)
        items = (await customers.ListAccountTimeline(request, metadata=blind)).items
        assert len(items) == 1
        out = text_of(items[0])
        assert "98765" not in out and "REASON-5521" not in out
        assert "ERP 升级" in items[0].title and items[0].sales_event.amount == ""
    nameless = await user(identity, company, grant("account"), grant("opportunity", "DATA_SCOPE_ALL", "name"))
    items = (
        await customers.ListAccountTimeline(pb.ListAccountTimelineRequest(id=account.id), metadata=nameless)
    ).items
    assert items[0].title == "赢单：" and "ERP" not in text_of(items[0])


async def test_the_merge_answer_leaves_out_hidden_custom_fields(identity, customers, data):  # noqa: F811
    company = await sign_up(identity)
    await customers.CreateCustomField(
        pb.CreateCustomFieldRequest(
            custom_field=pb.CustomField(
                record_type=pb.RECORD_TYPE_ACCOUNT,
                key="budget",
                label_zh="预算",
                label_en="Budget",
                type=pb.CUSTOM_FIELD_TYPE_TEXT,
            )
        ),
        metadata=company.md,
    )
    keep = await new_account(customers, company, "理想汽车", custom_fields={"budget": "BUDGET-3141"})
    fold = await new_account(customers, company, "理想汽车有限公司", custom_fields={"budget": "BUDGET-2718"})
    merger = await user(
        identity, company, grant("account", "DATA_SCOPE_ALL", "custom_budget", actions=("read", "merge"))
    )
    answer = await data.CreateMerge(
        dq.CreateMergeRequest(record_type=pb.RECORD_TYPE_ACCOUNT, survivor_id=keep.id, merged_ids=[fold.id]),
        metadata=merger,
    )
    assert answer.account.id == keep.id and answer.account.name == "理想汽车"
    assert "budget" not in answer.account.custom_fields.fields
    assert "BUDGET-" not in text_of(answer)


async def test_the_relationship_dry_run_finds_no_record_outside_the_callers_scope(
    identity,
    customers,
    data,  # noqa: F811
):
    company = await sign_up(identity)
    secret = await customers.CreateContact(
        pb.CreateContactRequest(contact=pb.Contact(name="保密联系人", emails=["secret.ceo@rival.cn"])),
        metadata=company.md,
    )
    assert secret.contact.id
    importer = await user(
        identity,
        company,
        grant("contact", "DATA_SCOPE_OWN", actions=("read", "create", "import")),
        grant("account", "DATA_SCOPE_OWN", actions=("read",)),
        grant("relationship", "DATA_SCOPE_OWN", actions=("create", "read")),
    )
    mine = await customers.CreateContact(
        pb.CreateContactRequest(contact=pb.Contact(name="自己的联系人", emails=["mine@example.cn"])),
        metadata=importer,
    )
    other = await customers.CreateContact(
        pb.CreateContactRequest(contact=pb.Contact(name="同事", emails=["colleague@example.cn"])),
        metadata=importer,
    )
    assert mine.contact.id and other.contact.id
    content = csv_bytes(
        [
            ["源", "目标", "关系类型"],
            ["mine@example.cn", "colleague@example.cn", "reports_to"],
            ["mine@example.cn", "secret.ceo@rival.cn", "reports_to"],
        ]
    )

    class Caller:
        md = importer

    job = await upload(data, Caller, content, target=dq.IMPORT_TARGET_RELATIONSHIPS, name="relations.csv")
    dry = await data.DryRunImport(dq.DryRunImportRequest(id=job.id), metadata=importer)
    assert [(e.row, e.column, e.value) for e in dry.errors] == [(3, "目标", "secret.ceo@rival.cn")]
    assert "保密联系人" not in text_of(dry) and secret.contact.id not in text_of(dry)


async def test_a_write_answers_the_record_without_what_is_hidden_from_the_writer(identity, customers):
    from google.protobuf import field_mask_pb2

    company = await sign_up(identity)
    account = await new_account(customers, company, "小鹏汽车")
    made = await customers.CreateInteraction(
        pb.CreateInteractionRequest(
            interaction=pb.Interaction(
                kind=pb.INTERACTION_KIND_CALL,
                subject="回访",
                body=BODY,
                occurred_at=now(),
                account_ids=[account.id],
            )
        ),
        metadata=company.md,
    )
    writer = await user(
        identity,
        company,
        grant("account"),
        grant("interaction", "DATA_SCOPE_ALL", "body", actions=("read", "update")),
    )
    answer = await customers.UpdateInteraction(
        pb.UpdateInteractionRequest(
            id=made.interaction.id,
            interaction=pb.Interaction(outcome="已回访"),
            update_mask=field_mask_pb2.FieldMask(paths=["outcome"]),
        ),
        metadata=writer,
    )
    assert answer.interaction.outcome == "已回访" and answer.interaction.body == ""
    assert BODY[:10] not in text_of(answer)
