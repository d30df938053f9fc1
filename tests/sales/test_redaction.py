"""Quote and contract PDFs print only what the reader may read (issue 10, item 5): prices, discounts and terms
that field rules hide are not in the document's text, nor the amounts they could be read back from."""

from __future__ import annotations

import io
import uuid
from decimal import Decimal

from crm.sales.v1 import contracts_pb2 as cpb
from crm.sales.v1 import quotes_pb2 as qpb
from pypdf import PdfReader

from tests.customers.helpers import auth, invite_and_join, role
from tests.sales.helpers import team
from tests.sales.test_quotes import catalog

TERMS = "保密条款-TERMS-4471：最低价不得外传"


def pdf_text(content: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(content)).pages)


def money(value: str) -> str:
    return f"{Decimal(value):,.2f}"


async def reader(identity, company, *permissions: dict):
    rid = await role(identity, company, f"role-{uuid.uuid4().hex[:12]}", list(permissions))
    _, token = await invite_and_join(identity, company, role_ids=[rid])
    return auth(token.access_token)


def grant(obj: str, *hidden: str) -> dict:
    return {
        "object": obj,
        "actions": ["read"],
        "data_scope": "DATA_SCOPE_ALL",
        "field_rules": [{"field": f, "access": "FIELD_ACCESS_HIDDEN"} for f in hidden],
    }


async def approved_quote(quotes, company) -> qpb.Quote:
    server, _, book = await catalog(quotes, company)
    q = (
        await quotes.CreateQuote(
            qpb.CreateQuoteRequest(
                customer_name="上海远景能源有限公司",
                price_book_id=book.id,
                lines=[qpb.QuoteLineInput(product_id=server.id, quantity="2", discount_percent="3")],
                discount_percent="2",
                terms=TERMS,
            ),
            metadata=company.md,
        )
    ).quote
    submitted = await quotes.SubmitQuote(qpb.SubmitQuoteRequest(id=q.id), metadata=company.md)
    if submitted.approval.id:
        await quotes.ApproveApproval(qpb.ApproveApprovalRequest(id=submitted.approval.id), metadata=company.md)
    return (await quotes.AcceptQuote(qpb.AcceptQuoteRequest(id=q.id), metadata=company.md)).quote


async def test_quote_and_contract_pdfs_leave_out_hidden_prices_discounts_and_terms(identity, quotes, contracts):
    company, _ = await team(identity, 0)
    q = await approved_quote(quotes, company)
    line = q.lines[0]
    secrets = {
        "unit price": money(line.unit_price),
        "line list amount": money(line.list_amount),
        "line discount": money(line.discount_amount),
        "overall discount": money(q.overall_discount_amount),
        "terms": "TERMS-4471",
    }
    full = pdf_text((await quotes.GetQuotePdf(qpb.GetQuotePdfRequest(id=q.id), metadata=company.md)).content)
    assert all(v in full for v in secrets.values()), full  # the admin's PDF has them: the check can fail

    blind = await reader(
        identity,
        company,
        grant("quote", "unit_price", "discount_percent", "terms"),
        grant("contract", "amount", "terms"),
        grant("payment", "amount"),
        grant("order", "unit_price"),
    )
    text = pdf_text((await quotes.GetQuotePdf(qpb.GetQuotePdfRequest(id=q.id), metadata=blind)).content)
    assert q.number in text and "服务器" in text
    assert [k for k, v in secrets.items() if v in text] == []
    # The API answers the same: the PDF shows nothing the quote's message does not.
    answer = (await quotes.GetQuote(qpb.GetQuoteRequest(id=q.id), metadata=blind)).quote
    assert (answer.lines[0].unit_price, answer.lines[0].net_amount, answer.discount_total, answer.terms) == (
        "",
        "",
        "",
        "",
    )

    contract = (
        await contracts.CreateContract(
            cpb.CreateContractRequest(quote_id=q.id, title="服务器采购合同", terms=TERMS), metadata=company.md
        )
    ).contract
    await contracts.SubmitContract(cpb.SubmitContractRequest(id=contract.id), metadata=company.md)
    await contracts.CreatePaymentPlan(
        cpb.CreatePaymentPlanRequest(
            contract_id=contract.id,
            instalments=[
                cpb.InstalmentInput(due_date="2027-01-31", amount="12345.67"),
                cpb.InstalmentInput(
                    due_date="2027-06-30", amount=str(Decimal(contract.amount) - Decimal("12345.67"))
                ),
            ],
        ),
        metadata=company.md,
    )
    contract_secrets = {
        "unit price": secrets["unit price"],
        "line net amount": money(line.net_amount),
        "terms": secrets["terms"],
        "contract amount": money(contract.amount),
        "instalment": "12,345.67",
    }
    request = cpb.GetContractPdfRequest(id=contract.id)
    full = pdf_text((await contracts.GetContractPdf(request, metadata=company.md)).content)
    assert all(v in full for v in contract_secrets.values()), full
    text = pdf_text((await contracts.GetContractPdf(request, metadata=blind)).content)
    assert contract.number in text and "服务器采购合同" in text and "2027-06-30" in text
    assert [k for k, v in contract_secrets.items() if v in text] == []

    # An order's lines are the quote's: the price hidden hides the amounts computed from it too.
    order = (await contracts.CreateOrder(cpb.CreateOrderRequest(quote_id=q.id), metadata=company.md)).order
    seen = (await contracts.GetOrder(cpb.GetOrderRequest(id=order.id), metadata=blind)).order
    assert seen.total == order.total and seen.lines[0].description == line.description
    assert (seen.lines[0].unit_price, seen.lines[0].list_amount, seen.lines[0].net_amount) == ("", "", "")
