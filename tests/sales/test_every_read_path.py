"""Every way out of sales goes through the one read step (crm_kit.policy): the class test of issue 10, item 5,
as for customers (tests/customers/test_every_read_path.py, whose machinery it shares).

The read RPCs come from the descriptors of every sales service (`crm_kit.policy.read_methods`); `PATHS` says
how to call each, and a read RPC without a case fails `test_the_table_covers_every_read_rpc`. For each marked
object a user without any permission on it and a user with its marked fields hidden call every path (PDFs are
read back as text): no answer may carry those values, and the admin's answers must (the check can fail). A user
with every permission but data scope "own" (本人) on every object, owning none of the marked records, calls them
too: no answer may carry any marker (an approval is read in its quote's or contract's scope, an import's report
in the import's). The seeded world and its users are shared by the module's tests."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from crm.common.v1 import imports_pb2 as ipb
from crm.sales.v1 import (
    activities_pb2,
    activities_pb2_grpc,
    contracts_pb2,
    contracts_pb2_grpc,
    forecasts_pb2,
    forecasts_pb2_grpc,
    lead_imports_pb2,
    lead_imports_pb2_grpc,
    leads_pb2,
    leads_pb2_grpc,
    pipelines_pb2,
    pipelines_pb2_grpc,
    quotes_pb2,
    quotes_pb2_grpc,
    settings_pb2,
    settings_pb2_grpc,
)
from crm_kit.policy import read_methods
from google.protobuf import field_mask_pb2, timestamp_pb2

from tests.customers.helpers import auth, invite_and_join, role, sign_up
from tests.read_paths import answered, check_read_paths, check_write_answers
from tests.sales.test_lead_import import HEADER, csv_bytes, row, run_to_end, upload
from tests.sales.test_quotes import catalog

MODULES = (
    leads_pb2,
    pipelines_pb2,
    quotes_pb2,
    contracts_pb2,
    activities_pb2,
    forecasts_pb2,
    lead_imports_pb2,
    settings_pb2,
)
SERVICES = tuple(s for m in MODULES for s in m.DESCRIPTOR.services_by_name.values())
READS = read_methods(*SERVICES)

OBJECTS = (
    "lead",
    "opportunity",
    "quote",
    "contract",
    "order",
    "payment",
    "task",
    "activity",
    "pipeline",
    "lead_rule",
    "lead_pool",
    "web_form",
    "product",
    "price_book",
    "sales_settings",
    "forecast",
    "approval_policy",
    "account",
    "contact",
)
TAG = "mk7781"
OWN = "*"  # the own-scope user's key: every marked object is outside their scope
MARKED = {
    "lead": (("phone", "description"), ("13600007781", f"leaddesc{TAG}", "136-0000-7781x")),
    "opportunity": (("next_step", "description", "amount"), (f"oppnext{TAG}", f"oppdesc{TAG}", "7781.23")),
    # "40.00%": the quote's discount, which its approval's reason quotes.
    "quote": (("notes", "terms", "discount_percent"), (f"qnotes{TAG}", f"qterms{TAG}", "40.00%")),
    "contract": (("terms",), (f"cterms{TAG}",)),
    "payment": (("reference",), (f"payref{TAG}", f"refundref{TAG}")),
    "task": (("description",), (f"taskdesc{TAG}",)),
}


@dataclass
class World:
    stubs: dict[str, Any]
    admin: Any
    ids: dict[str, str] = field(default_factory=dict)
    token: str = ""
    # (marked object or OWN, how) → the metadata of a user who may not see it.
    users: dict[tuple[str, str], Any] = field(default_factory=dict)
    user_ids: dict[tuple[str, str], str] = field(default_factory=dict)


@dataclass(frozen=True)
class Path:
    call: Any
    shows: tuple[str, ...] = ()


def rpc(service: str, method: str, make: Any) -> Any:
    """A unary call of `service` with the request `make(world)` builds."""

    async def call(w: World, md: Any) -> Any:
        return await getattr(w.stubs[service], method)(make(w), metadata=md)

    return call


def stream(service: str, method: str, make: Any) -> Any:
    async def call(w: World, md: Any) -> Any:
        return [part async for part in getattr(w.stubs[service], method)(make(w), metadata=md)]

    return call


def ids(key: str, cls: Any, name: str = "id", **extra: Any) -> Any:
    return lambda w: cls(**{name: w.ids[key]}, **extra)


def empty(cls: Any, **fields: Any) -> Any:
    return lambda w: cls(**fields)


async def _lead_dry_run(w: World, md: Any) -> Any:
    """The caller's own upload: a lead import's dry run shows no one else's values."""

    class Caller:
        pass

    Caller.md = md
    job = await upload(w.stubs["lead_imports"], Caller, csv_bytes([["姓名", "公司名称"], ["赵六", "远景"]]))
    return await w.stubs["lead_imports"].DryRunLeadImport(
        lead_imports_pb2.DryRunLeadImportRequest(id=job.id), metadata=md
    )


L, P, Q, C, A, F, Imp, S = (
    leads_pb2,
    pipelines_pb2,
    quotes_pb2,
    contracts_pb2,
    activities_pb2,
    forecasts_pb2,
    lead_imports_pb2,
    settings_pb2,
)
PATHS: dict[str, Path] = {
    "LeadsService/GetLead": Path(rpc("leads", "GetLead", ids("lead", L.GetLeadRequest)), ("lead",)),
    "LeadsService/ListLeads": Path(rpc("leads", "ListLeads", empty(L.ListLeadsRequest)), ("lead",)),
    "LeadsService/ListLeadFollowUps": Path(
        rpc("leads", "ListLeadFollowUps", ids("lead", L.ListLeadFollowUpsRequest))
    ),
    "LeadsService/ListLeadHistory": Path(
        rpc("leads", "ListLeadHistory", ids("lead", L.ListLeadHistoryRequest))
    ),
    "LeadsService/GetLeadPool": Path(rpc("leads", "GetLeadPool", ids("pool", L.GetLeadPoolRequest))),
    "LeadsService/ListLeadPools": Path(rpc("leads", "ListLeadPools", empty(L.ListLeadPoolsRequest))),
    "LeadsService/ListScoringRules": Path(rpc("leads", "ListScoringRules", empty(L.ListScoringRulesRequest))),
    "LeadsService/ListAssignmentRules": Path(
        rpc("leads", "ListAssignmentRules", empty(L.ListAssignmentRulesRequest))
    ),
    "LeadsService/GetWebForm": Path(rpc("leads", "GetWebForm", ids("form", L.GetWebFormRequest))),
    "LeadsService/ListWebForms": Path(rpc("leads", "ListWebForms", empty(L.ListWebFormsRequest))),
    "LeadsService/GetPublicWebForm": Path(
        rpc("leads", "GetPublicWebForm", lambda w: L.GetPublicWebFormRequest(token=w.token))
    ),
    "PipelinesService/GetPipeline": Path(
        rpc("pipelines", "GetPipeline", ids("pipeline", P.GetPipelineRequest))
    ),
    "PipelinesService/ListPipelines": Path(rpc("pipelines", "ListPipelines", empty(P.ListPipelinesRequest))),
    "PipelinesService/GetBoard": Path(
        rpc("pipelines", "GetBoard", ids("pipeline", P.GetBoardRequest)), ("opportunity",)
    ),
    "PipelinesService/GetOpportunity": Path(
        rpc("pipelines", "GetOpportunity", ids("opportunity", P.GetOpportunityRequest)), ("opportunity",)
    ),
    "PipelinesService/ListOpportunities": Path(
        rpc("pipelines", "ListOpportunities", empty(P.ListOpportunitiesRequest)), ("opportunity",)
    ),
    "PipelinesService/ListStageHistory": Path(
        rpc("pipelines", "ListStageHistory", ids("opportunity", P.ListStageHistoryRequest))
    ),
    "QuotesService/GetProduct": Path(rpc("quotes", "GetProduct", ids("product", Q.GetProductRequest))),
    "QuotesService/ListProducts": Path(rpc("quotes", "ListProducts", empty(Q.ListProductsRequest))),
    "QuotesService/GetPriceBook": Path(rpc("quotes", "GetPriceBook", ids("book", Q.GetPriceBookRequest))),
    "QuotesService/ListPriceBooks": Path(rpc("quotes", "ListPriceBooks", empty(Q.ListPriceBooksRequest))),
    "QuotesService/GetApprovalPolicy": Path(
        rpc("quotes", "GetApprovalPolicy", empty(Q.GetApprovalPolicyRequest))
    ),
    "QuotesService/GetQuote": Path(rpc("quotes", "GetQuote", ids("quote", Q.GetQuoteRequest)), ("quote",)),
    "QuotesService/ListQuotes": Path(rpc("quotes", "ListQuotes", empty(Q.ListQuotesRequest)), ("quote",)),
    "QuotesService/GetQuotePdf": Path(
        rpc("quotes", "GetQuotePdf", ids("quote", Q.GetQuotePdfRequest)), ("quote",)
    ),
    "QuotesService/ListApprovals": Path(
        rpc("quotes", "ListApprovals", empty(Q.ListApprovalsRequest)), ("quote",)
    ),
    "QuotesService/GetApproval": Path(
        rpc("quotes", "GetApproval", ids("approval", Q.GetApprovalRequest)), ("quote",)
    ),
    "ContractsService/GetContract": Path(
        rpc("contracts", "GetContract", ids("contract", C.GetContractRequest)), ("contract",)
    ),
    "ContractsService/ListContracts": Path(
        rpc("contracts", "ListContracts", empty(C.ListContractsRequest)), ("contract",)
    ),
    "ContractsService/GetOrder": Path(rpc("contracts", "GetOrder", ids("order", C.GetOrderRequest))),
    "ContractsService/ListOrders": Path(rpc("contracts", "ListOrders", empty(C.ListOrdersRequest))),
    "ContractsService/GetPaymentPlan": Path(
        rpc("contracts", "GetPaymentPlan", ids("plan", C.GetPaymentPlanRequest))
    ),
    "ContractsService/ListPaymentPlans": Path(
        rpc("contracts", "ListPaymentPlans", empty(C.ListPaymentPlansRequest))
    ),
    "ContractsService/ListPayments": Path(
        rpc("contracts", "ListPayments", ids("plan", C.ListPaymentsRequest, "plan_id")), ("payment",)
    ),
    "ContractsService/GetReceivables": Path(
        rpc("contracts", "GetReceivables", ids("account", C.GetReceivablesRequest))
    ),
    "ContractsService/ListRefunds": Path(
        rpc("contracts", "ListRefunds", ids("plan", C.ListRefundsRequest, "plan_id")), ("payment",)
    ),
    "ContractsService/GetContractPdf": Path(
        rpc("contracts", "GetContractPdf", ids("contract", C.GetContractPdfRequest)), ("contract",)
    ),
    "ActivitiesService/GetTask": Path(rpc("activities", "GetTask", ids("task", A.GetTaskRequest)), ("task",)),
    "ActivitiesService/ListTasks": Path(rpc("activities", "ListTasks", empty(A.ListTasksRequest)), ("task",)),
    "ActivitiesService/ListActivities": Path(
        rpc(
            "activities",
            "ListActivities",
            lambda w: A.ListActivitiesRequest(related_type="opportunity", related_id=w.ids["opportunity"]),
        )
    ),
    "ForecastsService/GetForecast": Path(
        rpc("forecasts", "GetForecast", empty(F.GetForecastRequest, period="2030-03")), ("opportunity",)
    ),
    "LeadImportsService/GetLeadImport": Path(
        rpc("lead_imports", "GetLeadImport", ids("import", Imp.GetLeadImportRequest))
    ),
    "LeadImportsService/ListLeadImports": Path(
        rpc("lead_imports", "ListLeadImports", empty(Imp.ListLeadImportsRequest))
    ),
    "LeadImportsService/DryRunLeadImport": Path(_lead_dry_run),
    "LeadImportsService/ListLeadImportErrors": Path(
        rpc("lead_imports", "ListLeadImportErrors", ids("import", Imp.ListLeadImportErrorsRequest)), ("lead",)
    ),
    "LeadImportsService/DownloadLeadImportErrors": Path(
        stream(
            "lead_imports", "DownloadLeadImportErrors", ids("import", Imp.DownloadLeadImportErrorsRequest)
        ),
        ("lead",),
    ),
    "SalesSettingsService/GetSalesSettings": Path(
        rpc("settings", "GetSalesSettings", empty(S.GetSalesSettingsRequest))
    ),
}


def test_the_table_covers_every_read_rpc():
    """A new read RPC (or a renamed one) needs its case here: the read paths come from the descriptors."""
    assert sorted(READS - PATHS.keys()) == []
    assert sorted(PATHS.keys() - READS) == []


def _ts(days: int) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(days=days))
    return t


async def seed(identity, s: dict[str, Any]) -> World:
    company = await sign_up(identity)
    w = World(s, company)
    md = company.md
    pool = (await s["leads"].CreateLeadPool(L.CreateLeadPoolRequest(name="公海"), metadata=md)).pool
    phone, desc, bad_phone = MARKED["lead"][1]
    lead = (
        await s["leads"].CreateLead(
            L.CreateLeadRequest(name=f"周远景{TAG}", company="远景", phone=phone, description=desc),
            metadata=md,
        )
    ).lead
    await s["leads"].CreateLeadFollowUp(
        L.CreateLeadFollowUpRequest(id=lead.id, content=f"电话沟通{TAG}"), metadata=md
    )
    form = (
        await s["leads"].CreateWebForm(
            L.CreateWebFormRequest(name="官网", pool_id=pool.id, fields=["name", "company", "phone"]),
            metadata=md,
        )
    ).form
    w.ids.update(lead=lead.id, pool=pool.id, form=form.id)
    w.token = form.token
    pipeline = (
        await s["pipelines"].CreatePipeline(P.CreatePipelineRequest(name="直销"), metadata=md)
    ).pipeline
    nxt, odesc, amount = MARKED["opportunity"][1]
    opp = (
        await s["pipelines"].CreateOpportunity(
            P.CreateOpportunityRequest(
                name=f"远景储能{TAG}",
                pipeline_id=pipeline.id,
                stage_id=pipeline.stages[0].id,
                amount=amount,
                currency="CNY",
                close_date="2030-03-15",
                next_step=nxt,
                description=odesc,
            ),
            metadata=md,
        )
    ).opportunity
    w.ids.update(pipeline=pipeline.id, opportunity=opp.id)
    await s["quotes"].UpdateApprovalPolicy(
        Q.UpdateApprovalPolicyRequest(
            policy=Q.ApprovalPolicy(
                discount_threshold_percent="10", steps=[Q.ApprovalStep(approver_ids=[company.admin.id])]
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["discount_threshold_percent", "steps"]),
        ),
        metadata=md,
    )
    server, _, book = await catalog(s["quotes"], company)
    w.ids.update(product=server.id, book=book.id)
    notes, terms, _ = MARKED["quote"][1]
    from crm.customers.v1 import customers_pb2

    w.ids["account"] = (
        await s["customers"].CreateAccount(
            customers_pb2.CreateAccountRequest(account=customers_pb2.Account(name="远景能源科技有限公司")),
            metadata=md,
        )
    ).account.id
    quote = (
        await s["quotes"].CreateQuote(
            Q.CreateQuoteRequest(
                account_id=w.ids["account"],
                customer_name=f"远景{TAG}",
                price_book_id=book.id,
                lines=[Q.QuoteLineInput(product_id=server.id, quantity="1", discount_percent="40")],
                notes=notes,
                terms=terms,
            ),
            metadata=md,
        )
    ).quote
    submitted = await s["quotes"].SubmitQuote(Q.SubmitQuoteRequest(id=quote.id), metadata=md)
    assert submitted.approval.id, "a 40 % discount needs an approval"
    w.ids["approval"] = submitted.approval.id
    await s["quotes"].ApproveApproval(Q.ApproveApprovalRequest(id=submitted.approval.id), metadata=md)
    await s["quotes"].AcceptQuote(Q.AcceptQuoteRequest(id=quote.id), metadata=md)
    w.ids["quote"] = quote.id
    (cterms,) = MARKED["contract"][1]
    contract = (
        await s["contracts"].CreateContract(
            C.CreateContractRequest(quote_id=quote.id, title=f"储能合同{TAG}", terms=cterms), metadata=md
        )
    ).contract
    signed = await s["contracts"].SubmitContract(C.SubmitContractRequest(id=contract.id), metadata=md)
    if signed.approval.id:
        await s["quotes"].ApproveApproval(Q.ApproveApprovalRequest(id=signed.approval.id), metadata=md)
    order = (await s["contracts"].CreateOrder(C.CreateOrderRequest(quote_id=quote.id), metadata=md)).order
    plan = (
        await s["contracts"].CreatePaymentPlan(
            C.CreatePaymentPlanRequest(
                order_id=order.id, instalments=[C.InstalmentInput(due_date="2099-01-31", amount=order.total)]
            ),
            metadata=md,
        )
    ).plan
    ref, refund_ref = MARKED["payment"][1]
    paid = await s["contracts"].CreatePayment(
        C.CreatePaymentRequest(instalment_id=plan.instalments[0].id, amount="100.00", reference=ref),
        metadata=md,
    )
    await s["contracts"].CreateRefund(
        C.CreateRefundRequest(
            id=paid.payment.id, amount="1.00", reason=f"多付{TAG}", reference=refund_ref
        ),
        metadata=md,
    )
    w.ids.update(contract=contract.id, order=order.id, plan=plan.id)
    (tdesc,) = MARKED["task"][1]
    task = (
        await s["activities"].CreateTask(
            A.CreateTaskRequest(
                title=f"准备方案{TAG}",
                description=tdesc,
                related_type="opportunity",
                related_id=opp.id,
                due_at=_ts(2),
            ),
            metadata=md,
        )
    ).task
    await s["activities"].CreateActivity(
        A.CreateActivityRequest(
            related_type="opportunity", related_id=opp.id, kind="call", content=f"电话{TAG}"
        ),
        metadata=md,
    )
    w.ids["task"] = task.id
    # A lead import whose failing row carries a value of a field hidden from some: its report.
    job = await upload(
        s["lead_imports"], company, csv_bytes([HEADER, row(姓名="王五", 公司名称="远景", 手机=bad_phone)])
    )
    await s["lead_imports"].StartLeadImport(Imp.StartLeadImportRequest(id=job.id), metadata=md)
    await run_to_end(s["lead_imports"], company, job.id)
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


async def member(identity, company, permissions: list[dict]) -> tuple[str, Any]:
    """A user with a role of these permissions: their id and metadata."""
    rid = await role(identity, company, f"role-{uuid.uuid4().hex[:12]}", permissions)
    user, token = await invite_and_join(identity, company, role_ids=[rid])
    return user.id, auth(token.access_token)


@pytest.fixture(scope="module")
def stubs(sales_channel, customers_channel) -> dict[str, Any]:
    from crm.customers.v1 import customers_pb2_grpc

    ch = sales_channel
    return {
        # The account the quotes name: a reference names a record that exists.
        "customers": customers_pb2_grpc.CustomersServiceStub(customers_channel),
        "leads": leads_pb2_grpc.LeadsServiceStub(ch),
        "pipelines": pipelines_pb2_grpc.PipelinesServiceStub(ch),
        "quotes": quotes_pb2_grpc.QuotesServiceStub(ch),
        "contracts": contracts_pb2_grpc.ContractsServiceStub(ch),
        "activities": activities_pb2_grpc.ActivitiesServiceStub(ch),
        "forecasts": forecasts_pb2_grpc.ForecastsServiceStub(ch),
        "lead_imports": lead_imports_pb2_grpc.LeadImportsServiceStub(ch),
        "settings": settings_pb2_grpc.SalesSettingsServiceStub(ch),
    }


@pytest.fixture(scope="module")
async def world(identity, stubs) -> World:
    """One seeded company for the module, and its users: per marked object one without any permission on it
    and one with its marked fields hidden; and one with every permission on every object but data scope
    "own" (本人), who owns none of the marked records (the admin does)."""
    w = await seed(identity, stubs)
    for obj, (hidden, _) in MARKED.items():
        w.users[(obj, "without permission")] = await member(identity, w.admin, grants(without=obj))
        w.users[(obj, "fields hidden")] = await member(identity, w.admin, grants(hiding=hidden, on=obj))
    w.users[(OWN, "own scope")] = await member(identity, w.admin, grants(scope="DATA_SCOPE_OWN"))
    w.user_ids = {key: uid for key, (uid, _) in w.users.items()}
    w.users = {key: md for key, (_, md) in w.users.items()}
    return w


# The admin's records (and records about them: an approval, an import) that no own-scope user may learn of.
OWNED = ("lead", "opportunity", "quote", "approval", "contract", "order", "plan", "task", "import")


def markers(obj: str, w: World, *, ids: bool = True) -> tuple[str, ...]:
    """The values `obj`'s user may not see: the marked object's; for the own-scope user every marked one, and
    anything of the admin's records: their names, titles, follow-ups, activities and reasons (they carry the
    tag) and their ids."""
    if obj == OWN:
        owned = (w.ids[k] for k in OWNED) if ids else ()
        return (TAG, *(v for _, values in MARKED.values() for v in values), *owned)
    return MARKED[obj][1]


async def test_no_read_path_shows_what_the_caller_may_not_read(world):
    await check_read_paths(PATHS, world, MARKED, markers)


# ---------------------------------------------------------------- write answers
#
# A write that answers the record (created, updated, moved on) answers it through the same read step: a user
# allowed the write (changing another field, moving it on) never gets a hidden value back. The writes come from
# the descriptors: every write whose answer carries a marked object's message needs a case in `WRITES`, which
# makes a fresh record with the markers as the admin and then writes it as the caller.

# The messages of each marked object (an approval's reason quotes its quote's discount).
RECORDS = {
    "lead": (L.Lead,),
    "opportunity": (P.Opportunity,),
    "quote": (Q.Quote, Q.Approval),
    "contract": (C.Contract,),
    "payment": (C.Payment, C.Refund),
    "task": (A.Task,),
}
WRITE_ANSWERS = answered(SERVICES, RECORDS, READS)


def _mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


def _admin(w: World, md: Any) -> bool:
    return md == w.admin.md


def _me(w: World, md: Any) -> str:
    """The caller's user id."""
    if _admin(w, md):
        return w.admin.admin.id
    return next(w.user_ids[k] for k, v in w.users.items() if v == md)


async def _lead(w: World, **extra: Any) -> Any:
    phone, desc, _ = MARKED["lead"][1]
    request = L.CreateLeadRequest(name="吴远景", company="远景", phone=phone, description=desc, **extra)
    return (await w.stubs["leads"].CreateLead(request, metadata=w.admin.md)).lead


async def _opportunity(w: World) -> Any:
    nxt, odesc, amount = MARKED["opportunity"][1]
    pipeline = (
        await w.stubs["pipelines"].GetPipeline(
            P.GetPipelineRequest(id=w.ids["pipeline"]), metadata=w.admin.md
        )
    ).pipeline
    request = P.CreateOpportunityRequest(
        name="远景扩容",
        pipeline_id=pipeline.id,
        stage_id=pipeline.stages[0].id,
        amount=amount,
        currency="CNY",
        close_date="2030-03-20",
        next_step=nxt,
        description=odesc,
    )
    return (await w.stubs["pipelines"].CreateOpportunity(request, metadata=w.admin.md)).opportunity


async def _quote(w: World, until: str = "draft") -> Any:
    """A quote with the markers, its 40 % discount waiting for approval ("submitted"), approved or accepted."""
    notes, terms, _ = MARKED["quote"][1]
    q, md = w.stubs["quotes"], w.admin.md
    quote = (
        await q.CreateQuote(
            Q.CreateQuoteRequest(
                account_id=w.ids["account"],
                customer_name="远景",
                price_book_id=w.ids["book"],
                lines=[Q.QuoteLineInput(product_id=w.ids["product"], quantity="1", discount_percent="40")],
                notes=notes,
                terms=terms,
            ),
            metadata=md,
        )
    ).quote
    if until != "draft":
        submitted = await q.SubmitQuote(Q.SubmitQuoteRequest(id=quote.id), metadata=md)
        if until != "submitted":
            await q.ApproveApproval(Q.ApproveApprovalRequest(id=submitted.approval.id), metadata=md)
            if until == "accepted":
                await q.AcceptQuote(Q.AcceptQuoteRequest(id=quote.id), metadata=md)
        quote = submitted.quote if until == "submitted" else quote
        w.ids["last_approval"] = submitted.approval.id
    return quote


async def _contract(w: World, until: str = "draft") -> Any:
    """A contract with the marked terms, from an accepted quote: a draft, approved (signed) or active."""
    (cterms,) = MARKED["contract"][1]
    c, md = w.stubs["contracts"], w.admin.md
    quote = await _quote(w, "accepted")
    contract = (
        await c.CreateContract(
            C.CreateContractRequest(quote_id=quote.id, title="扩容合同", terms=cterms), metadata=md
        )
    ).contract
    if until != "draft":
        signed = await c.SubmitContract(C.SubmitContractRequest(id=contract.id), metadata=md)
        if signed.approval.id:
            await w.stubs["quotes"].ApproveApproval(
                Q.ApproveApprovalRequest(id=signed.approval.id), metadata=md
            )
        if until == "active":
            await c.ActivateContract(C.ActivateContractRequest(id=contract.id), metadata=md)
    return contract


async def _payment(w: World) -> Any:
    """A payment with the marked reference, on a plan of an order of an accepted quote."""
    c, md = w.stubs["contracts"], w.admin.md
    quote = await _quote(w, "accepted")
    order = (await c.CreateOrder(C.CreateOrderRequest(quote_id=quote.id), metadata=md)).order
    plan = (
        await c.CreatePaymentPlan(
            C.CreatePaymentPlanRequest(
                order_id=order.id, instalments=[C.InstalmentInput(due_date="2099-01-31", amount=order.total)]
            ),
            metadata=md,
        )
    ).plan
    ref, _ = MARKED["payment"][1]
    return (
        await c.CreatePayment(
            C.CreatePaymentRequest(instalment_id=plan.instalments[0].id, amount="100.00", reference=ref),
            metadata=md,
        )
    ).payment


async def _task(w: World) -> Any:
    (tdesc,) = MARKED["task"][1]
    request = A.CreateTaskRequest(
        title="回访",
        description=tdesc,
        related_type="opportunity",
        related_id=w.ids["opportunity"],
        due_at=_ts(3),
    )
    return (await w.stubs["activities"].CreateTask(request, metadata=w.admin.md)).task


def on(service: str, method: str, make: Any, build: Any) -> Any:
    """A write of a fresh record: `make(world)` makes it as the admin, `build(world, record, md)` the request."""

    async def call(w: World, md: Any) -> Any:
        record = await make(w)
        return await getattr(w.stubs[service], method)(build(w, record, md), metadata=md)

    return call


async def _pool_lead(w: World) -> Any:
    return await _lead(w, pool_id=w.ids["write_pool"])


async def _held_lead(w: World) -> Any:
    """A lead of a pool, claimed by the admin."""
    lead = await _pool_lead(w)
    return (await w.stubs["leads"].ClaimLead(L.ClaimLeadRequest(id=lead.id), metadata=w.admin.md)).lead


async def _approval(w: World) -> Any:
    await _quote(w, "submitted")
    return w.ids["last_approval"]


WRITES: dict[str, Path] = {
    "LeadsService/CreateLead": Path(
        rpc("leads", "CreateLead", empty(L.CreateLeadRequest, name="郑远景", company="远景"))
    ),
    "LeadsService/UpdateLead": Path(
        on(
            "leads",
            "UpdateLead",
            _lead,
            lambda w, r, md: L.UpdateLeadRequest(
                id=r.id, lead=L.Lead(title="经理"), update_mask=_mask("title")
            ),
        ),
        ("lead",),
    ),
    "LeadsService/CreateLeadFollowUp": Path(
        on(
            "leads",
            "CreateLeadFollowUp",
            _lead,
            lambda w, r, md: L.CreateLeadFollowUpRequest(id=r.id, content="再联系"),
        ),
        ("lead",),
    ),
    "LeadsService/ClaimLead": Path(
        on("leads", "ClaimLead", _pool_lead, lambda w, r, md: L.ClaimLeadRequest(id=r.id)), ("lead",)
    ),
    "LeadsService/AssignLead": Path(
        on("leads", "AssignLead", _lead, lambda w, r, md: L.AssignLeadRequest(id=r.id, owner_id=_me(w, md))),
        ("lead",),
    ),
    "LeadsService/ReleaseLead": Path(
        on(
            "leads",
            "ReleaseLead",
            _held_lead,
            lambda w, r, md: L.ReleaseLeadRequest(id=r.id, reason="不跟了"),
        ),
        ("lead",),
    ),
    "LeadsService/ConvertLead": Path(
        on("leads", "ConvertLead", _lead, lambda w, r, md: L.ConvertLeadRequest(id=r.id)), ("lead",)
    ),
    "PipelinesService/CreateOpportunity": Path(
        on(
            "pipelines",
            "CreateOpportunity",
            _opportunity,
            lambda w, r, md: P.CreateOpportunityRequest(
                name="远景新机会", pipeline_id=r.pipeline_id, stage_id=r.stage_id, currency="CNY"
            ),
        )
    ),
    "PipelinesService/UpdateOpportunity": Path(
        on(
            "pipelines",
            "UpdateOpportunity",
            _opportunity,
            lambda w, r, md: P.UpdateOpportunityRequest(
                id=r.id, opportunity=P.Opportunity(name="远景扩容二期"), update_mask=_mask("name")
            ),
        ),
        ("opportunity",),
    ),
    "PipelinesService/MoveOpportunityStage": Path(
        on(
            "pipelines",
            "MoveOpportunityStage",
            _opportunity,
            lambda w, r, md: P.MoveOpportunityStageRequest(id=r.id, stage_id=w.ids["second_stage"]),
        ),
        ("opportunity",),
    ),
    "QuotesService/CreateQuote": Path(
        rpc(
            "quotes",
            "CreateQuote",
            lambda w: Q.CreateQuoteRequest(
                account_id=w.ids["account"],
                customer_name="远景",
                price_book_id=w.ids["book"],
                lines=[Q.QuoteLineInput(product_id=w.ids["product"], quantity="2")],
            ),
        )
    ),
    "QuotesService/UpdateQuote": Path(
        on(
            "quotes",
            "UpdateQuote",
            _quote,
            lambda w, r, md: Q.UpdateQuoteRequest(
                id=r.id, quote=Q.QuotePatch(title="二版"), update_mask=_mask("title")
            ),
        ),
        ("quote",),
    ),
    "QuotesService/ReviseQuote": Path(
        on(
            "quotes",
            "ReviseQuote",
            lambda w: _quote(w, "approved"),
            lambda w, r, md: Q.ReviseQuoteRequest(id=r.id),
        ),
        ("quote",),
    ),
    "QuotesService/SubmitQuote": Path(
        on("quotes", "SubmitQuote", _quote, lambda w, r, md: Q.SubmitQuoteRequest(id=r.id)), ("quote",)
    ),
    "QuotesService/AcceptQuote": Path(
        on(
            "quotes",
            "AcceptQuote",
            lambda w: _quote(w, "approved"),
            lambda w, r, md: Q.AcceptQuoteRequest(id=r.id),
        ),
        ("quote",),
    ),
    "QuotesService/DeclineQuote": Path(
        on(
            "quotes",
            "DeclineQuote",
            lambda w: _quote(w, "approved"),
            lambda w, r, md: Q.DeclineQuoteRequest(id=r.id, reason="太贵"),
        ),
        ("quote",),
    ),
    "QuotesService/ApproveApproval": Path(
        on("quotes", "ApproveApproval", _approval, lambda w, r, md: Q.ApproveApprovalRequest(id=r)),
        ("quote",),
    ),
    "QuotesService/RejectApproval": Path(
        on(
            "quotes",
            "RejectApproval",
            _approval,
            lambda w, r, md: Q.RejectApprovalRequest(id=r, comment="折扣过高"),
        ),
        ("quote",),
    ),
    "ContractsService/CreateContract": Path(
        on(
            "contracts",
            "CreateContract",
            lambda w: _quote(w, "accepted"),
            lambda w, r, md: C.CreateContractRequest(quote_id=r.id, title="新合同"),
        )
    ),
    "ContractsService/UpdateContract": Path(
        on(
            "contracts",
            "UpdateContract",
            _contract,
            lambda w, r, md: C.UpdateContractRequest(
                id=r.id, contract=C.Contract(title="扩容合同（改）"), update_mask=_mask("title")
            ),
        ),
        ("contract",),
    ),
    "ContractsService/SubmitContract": Path(
        on("contracts", "SubmitContract", _contract, lambda w, r, md: C.SubmitContractRequest(id=r.id)),
        ("contract",),
    ),
    "ContractsService/ActivateContract": Path(
        on(
            "contracts",
            "ActivateContract",
            lambda w: _contract(w, "approved"),
            lambda w, r, md: C.ActivateContractRequest(id=r.id),
        ),
        ("contract",),
    ),
    "ContractsService/TerminateContract": Path(
        on(
            "contracts",
            "TerminateContract",
            lambda w: _contract(w, "active"),
            lambda w, r, md: C.TerminateContractRequest(id=r.id, reason="客户要求"),
        ),
        ("contract",),
    ),
    "ContractsService/CreatePayment": Path(
        on(
            "contracts",
            "CreatePayment",
            _payment,
            # The admin gives the marked reference (their answer holds it); the caller, from whom it is hidden,
            # gives none.
            lambda w, r, md: C.CreatePaymentRequest(
                instalment_id=r.instalment_id,
                amount="50.00",
                reference=MARKED["payment"][1][0] if _admin(w, md) else "",
            ),
        ),
        ("payment",),
    ),
    "ContractsService/CreateRefund": Path(
        on(
            "contracts",
            "CreateRefund",
            _payment,
            lambda w, r, md: C.CreateRefundRequest(id=r.id, amount="1.00", reason="多付"),
        ),
        ("payment",),
    ),
    "ActivitiesService/CreateTask": Path(
        rpc(
            "activities",
            "CreateTask",
            lambda w: A.CreateTaskRequest(
                title="回访", related_type="opportunity", related_id=w.ids["opportunity"], due_at=_ts(3)
            ),
        )
    ),
    "ActivitiesService/UpdateTask": Path(
        on(
            "activities",
            "UpdateTask",
            _task,
            lambda w, r, md: A.UpdateTaskRequest(
                id=r.id, task=A.Task(title="再回访"), update_mask=_mask("title")
            ),
        ),
        ("task",),
    ),
    "ActivitiesService/CompleteTask": Path(
        on("activities", "CompleteTask", _task, lambda w, r, md: A.CompleteTaskRequest(id=r.id)), ("task",)
    ),
}


def test_the_table_covers_every_write_that_answers_a_record():
    assert sorted(WRITE_ANSWERS.keys() - WRITES.keys()) == []
    assert sorted(WRITES.keys() - WRITE_ANSWERS.keys()) == []


async def test_no_write_answer_shows_a_hidden_field(identity, world):
    """Each write, as the admin (their answer must hold the markers the table says) and as the user from whom
    the answered object's marked fields are hidden, who is allowed the write: their answer comes (a refusal
    would mean the case tests nothing) and holds none of those values; and as the own-scope user, whose answer
    (if any) holds nothing of the admin's records."""
    w = world
    md = w.admin.md
    # The quote user decides approvals too; the lead users may claim from a pool.
    hidden = {obj: w.user_ids[(obj, "fields hidden")] for obj in MARKED}
    await w.stubs["quotes"].UpdateApprovalPolicy(
        Q.UpdateApprovalPolicyRequest(
            policy=Q.ApprovalPolicy(steps=[Q.ApprovalStep(approver_ids=[w.admin.admin.id, hidden["quote"]])]),
            update_mask=_mask("steps"),
        ),
        metadata=md,
    )
    pool = await w.stubs["leads"].CreateLeadPool(
        L.CreateLeadPoolRequest(name="写入", member_ids=[w.admin.admin.id, hidden["lead"]]), metadata=md
    )
    pipeline = (
        await w.stubs["pipelines"].GetPipeline(P.GetPipelineRequest(id=w.ids["pipeline"]), metadata=md)
    ).pipeline
    w.ids.update(write_pool=pool.pool.id, second_stage=pipeline.stages[1].id)
    await check_write_answers(WRITES, WRITE_ANSWERS, w, MARKED, markers, OWN)


__all__ = ["ipb"]
