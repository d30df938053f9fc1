"""Quotes: price books, exact totals, versions, multi-step discount approval, acceptance, and the PDF."""

from __future__ import annotations

import io

import grpc
from crm.sales.v1 import quotes_pb2 as pb
from crm_kit.errors import from_rpc_error
from google.protobuf import field_mask_pb2
from pypdf import PdfReader

from tests.identity.helpers import rpc_error
from tests.sales.helpers import team


async def catalog(quotes, company) -> tuple[pb.Product, pb.Product, pb.PriceBook]:
    server = (
        await quotes.CreateProduct(
            pb.CreateProductRequest(code="SRV-01", name="服务器", name_en="Server", unit="台", tax_rate="13"),
            metadata=company.md,
        )
    ).product
    support = (
        await quotes.CreateProduct(
            pb.CreateProductRequest(
                code="SUP-1Y", name="年度维保服务", name_en="Annual support", unit="年", tax_rate="6"
            ),
            metadata=company.md,
        )
    ).product
    book = (
        await quotes.CreatePriceBook(
            pb.CreatePriceBookRequest(
                name="标准价目表",
                currency="CNY",
                entries=[
                    pb.PriceBookEntry(product_id=server.id, unit_price="45999.99"),
                    pb.PriceBookEntry(product_id=support.id, unit_price="8800"),
                ],
            ),
            metadata=company.md,
        )
    ).price_book
    return server, support, book


async def test_a_quote_is_priced_from_its_price_book_to_the_cent(identity, quotes):
    company, _ = await team(identity, 0)
    server, support, book = await catalog(quotes, company)
    q = (
        await quotes.CreateQuote(
            pb.CreateQuoteRequest(
                title="数据中心扩容",
                customer_name="华为技术有限公司",
                price_book_id=book.id,
                lines=[
                    pb.QuoteLineInput(product_id=server.id, quantity="3", discount_percent="5"),
                    pb.QuoteLineInput(product_id=support.id, quantity="1", unit_price="9000.50"),
                ],
                discount_percent="2",
            ),
            metadata=company.md,
        )
    ).quote
    assert q.number.startswith("Q-") and q.revision == 1 and q.status == pb.QUOTE_STATUS_DRAFT
    assert [line.unit_price for line in q.lines] == ["45999.99", "9000.50"]
    # 3 × 45999.99 = 137999.97; −5 % = 6900.00 → 131099.97; + 9000.50 → subtotal 140100.47; −2 % = 2802.01
    assert (q.list_total, q.subtotal, q.overall_discount_amount) == ("147000.47", "140100.47", "2802.01")
    # The overall discount shared out: 2622.00 and 180.01 (largest remainder gets the odd cent).
    # Tax: 13 % of 128477.97 = 16702.1361 → 16702.14; 6 % of 8820.49 = 529.2294 → 529.23.
    assert q.lines[0].tax_amount == "16702.14" and q.lines[1].tax_amount == "529.23"
    assert (q.tax_total, q.total) == ("17231.37", "154529.83")
    assert q.currency == "CNY" and q.effective_discount_percent == "6.60"

    err = await rpc_error(
        quotes.CreateQuote(
            pb.CreateQuoteRequest(
                lines=[
                    pb.QuoteLineInput(product_id=server.id, quantity="0"),
                    pb.QuoteLineInput(product_id="x"),
                ]
            ),
            metadata=company.md,
        )
    )
    assert {f.field for f in from_rpc_error(err).field_errors} == {"lines[1].product_id"}
    err = await rpc_error(
        quotes.CreateQuote(
            pb.CreateQuoteRequest(
                lines=[pb.QuoteLineInput(product_id=server.id, quantity="-1", discount_percent="120")]
            ),
            metadata=company.md,
        )
    )
    assert {f.field for f in from_rpc_error(err).field_errors} == {
        "lines[0].quantity",
        "lines[0].unit_price",
        "lines[0].discount_percent",
    }


async def test_a_discount_above_the_threshold_needs_every_approval_step_and_a_reject_needs_a_comment(
    identity, quotes
):
    company, (rep, manager, director, bystander) = await team(identity, 4)
    server, _, book = await catalog(quotes, company)
    await quotes.UpdateApprovalPolicy(
        pb.UpdateApprovalPolicyRequest(
            policy=pb.ApprovalPolicy(
                discount_threshold_percent="10",
                steps=[
                    pb.ApprovalStep(approver_ids=[manager.id]),
                    pb.ApprovalStep(approver_ids=[director.id]),
                ],
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["discount_threshold_percent", "steps"]),
        ),
        metadata=company.md,
    )
    small = (
        await quotes.CreateQuote(
            pb.CreateQuoteRequest(
                price_book_id=book.id,
                # 9 % of 45999.99 = 4139.9991 → 4140.00: 9.00000… % of the list total, within 10 %.
                lines=[pb.QuoteLineInput(product_id=server.id, quantity="1", discount_percent="9")],
            ),
            metadata=rep.md,
        )
    ).quote
    submitted = await quotes.SubmitQuote(pb.SubmitQuoteRequest(id=small.id), metadata=rep.md)
    assert submitted.quote.status == pb.QUOTE_STATUS_APPROVED and not submitted.HasField("approval")

    big = (
        await quotes.CreateQuote(
            pb.CreateQuoteRequest(
                price_book_id=book.id,
                lines=[pb.QuoteLineInput(product_id=server.id, quantity="2", discount_percent="8")],
                discount_percent="3",
            ),
            metadata=rep.md,
        )
    ).quote
    submitted = await quotes.SubmitQuote(pb.SubmitQuoteRequest(id=big.id), metadata=rep.md)
    assert submitted.quote.status == pb.QUOTE_STATUS_PENDING_APPROVAL
    approval = submitted.approval
    waiting = (await quotes.ListApprovals(pb.ListApprovalsRequest(mine=True), metadata=manager.md)).items
    assert [a.id for a in waiting] == [approval.id]
    assert (await quotes.ListApprovals(pb.ListApprovalsRequest(mine=True), metadata=director.md)).items == []

    err = await rpc_error(
        quotes.ApproveApproval(pb.ApproveApprovalRequest(id=approval.id), metadata=director.md)
    )
    assert from_rpc_error(err).reason == "not_approver"
    step1 = (
        await quotes.ApproveApproval(
            pb.ApproveApprovalRequest(id=approval.id, comment="同意"), metadata=manager.md
        )
    ).approval
    assert step1.current_step == 1 and step1.status == pb.APPROVAL_STATUS_PENDING
    still = (await quotes.GetQuote(pb.GetQuoteRequest(id=big.id), metadata=rep.md)).quote
    assert still.status == pb.QUOTE_STATUS_PENDING_APPROVAL
    err = await rpc_error(
        quotes.RejectApproval(pb.RejectApprovalRequest(id=approval.id), metadata=director.md)
    )
    assert [f.field for f in from_rpc_error(err).field_errors] == ["comment"]
    done = (
        await quotes.RejectApproval(
            pb.RejectApprovalRequest(id=approval.id, comment="折扣过高，请重新报价"), metadata=director.md
        )
    ).approval
    assert done.status == pb.APPROVAL_STATUS_REJECTED
    assert [(h.actor_id, h.decision, h.comment) for h in done.history] == [
        (manager.id, "approved", "同意"),
        (director.id, "rejected", "折扣过高，请重新报价"),
    ]
    rejected = (await quotes.GetQuote(pb.GetQuoteRequest(id=big.id), metadata=rep.md)).quote
    assert rejected.status == pb.QUOTE_STATUS_REJECTED

    # Reps read quotes in their own scope, and approvals in their quote's: whoever asked for or decided this
    # one still reads it (its reason quotes the discount), another rep neither lists nor gets it.
    for who in (rep, manager, director):
        assert approval.id in [
            a.id for a in (await quotes.ListApprovals(pb.ListApprovalsRequest(), metadata=who.md)).items
        ]
        got = (await quotes.GetApproval(pb.GetApprovalRequest(id=approval.id), metadata=who.md)).approval
        assert "%" in got.reason
    assert (await quotes.ListApprovals(pb.ListApprovalsRequest(), metadata=bystander.md)).items == []
    err = await rpc_error(quotes.GetApproval(pb.GetApprovalRequest(id=approval.id), metadata=bystander.md))
    assert err.code() == grpc.StatusCode.NOT_FOUND

    # A new version with a smaller discount goes through at once; the old one is superseded.
    v2 = (await quotes.ReviseQuote(pb.ReviseQuoteRequest(id=big.id), metadata=rep.md)).quote
    assert (v2.number, v2.revision, v2.status) == (big.number, 2, pb.QUOTE_STATUS_DRAFT)
    v2 = (
        await quotes.UpdateQuote(
            pb.UpdateQuoteRequest(
                id=v2.id,
                quote=pb.QuotePatch(discount_percent="0"),
                update_mask=field_mask_pb2.FieldMask(paths=["discount_percent"]),
            ),
            metadata=rep.md,
        )
    ).quote
    assert (await quotes.SubmitQuote(pb.SubmitQuoteRequest(id=v2.id), metadata=rep.md)).quote.status == (
        pb.QUOTE_STATUS_APPROVED
    )
    versions = (await quotes.ListQuotes(pb.ListQuotesRequest(number=big.number), metadata=rep.md)).items
    assert sorted((v.revision, v.status) for v in versions) == [
        (1, pb.QUOTE_STATUS_SUPERSEDED),
        (2, pb.QUOTE_STATUS_APPROVED),
    ]
    accepted = (await quotes.AcceptQuote(pb.AcceptQuoteRequest(id=v2.id), metadata=rep.md)).quote
    assert accepted.status == pb.QUOTE_STATUS_ACCEPTED
    err = await rpc_error(
        quotes.UpdateQuote(
            pb.UpdateQuoteRequest(
                id=v2.id,
                quote=pb.QuotePatch(title="x"),
                update_mask=field_mask_pb2.FieldMask(paths=["title"]),
            ),
            metadata=rep.md,
        )
    )
    assert from_rpc_error(err).reason == "quote_not_draft"


async def test_an_approved_quote_renders_a_pdf_whose_chinese_text_can_be_read_back(identity, quotes):
    company, _ = await team(identity, 0)
    server, support, book = await catalog(quotes, company)
    q = (
        await quotes.CreateQuote(
            pb.CreateQuoteRequest(
                title="智慧园区一期项目报价",
                customer_name="深圳市腾飞科技有限公司",
                price_book_id=book.id,
                lines=[
                    pb.QuoteLineInput(product_id=server.id, quantity="2"),
                    pb.QuoteLineInput(product_id=support.id, quantity="3", description="七乘二十四小时维保"),
                ],
                terms="付款方式：合同签订后预付百分之三十。",
            ),
            metadata=company.md,
        )
    ).quote
    err = await rpc_error(quotes.GetQuotePdf(pb.GetQuotePdfRequest(id=q.id), metadata=company.md))
    assert from_rpc_error(err).reason == "quote_not_approved"
    await quotes.SubmitQuote(pb.SubmitQuoteRequest(id=q.id), metadata=company.md)
    doc = await quotes.GetQuotePdf(pb.GetQuotePdfRequest(id=q.id), metadata=company.md)
    assert doc.content_type == "application/pdf" and doc.filename == f"{q.number}-v1.pdf"
    reader = PdfReader(io.BytesIO(doc.content))
    text = "".join(page.extract_text() for page in reader.pages)
    for expected in (
        "报价单",
        "深圳市腾飞科技有限公司",
        "智慧园区一期项目报价",
        "服务器",
        "七乘二十四小时维保",
        "付款方式",
        "含税总计",
    ):
        assert expected in text, expected
    total = f"{float(q.total):,.2f}"  # display only: the figure the PDF prints
    assert total in text
    fonts = reader.pages[0]["/Resources"]["/Font"]
    descendant = next(iter(fonts.values())).get_object()["/DescendantFonts"][0].get_object()
    assert "/FontFile2" in descendant["/FontDescriptor"].get_object()  # the font is embedded


async def test_an_english_quote_uses_english_labels_and_names(identity, quotes):
    company, _ = await team(identity, 0)
    server, _, book = await catalog(quotes, company)
    q = (
        await quotes.CreateQuote(
            pb.CreateQuoteRequest(
                customer_name="Acme GmbH",
                locale="en",
                price_book_id=book.id,
                lines=[pb.QuoteLineInput(product_id=server.id, quantity="1")],
            ),
            metadata=company.md,
        )
    ).quote
    await quotes.SubmitQuote(pb.SubmitQuoteRequest(id=q.id), metadata=company.md)
    doc = await quotes.GetQuotePdf(pb.GetQuotePdfRequest(id=q.id), metadata=company.md)
    text = PdfReader(io.BytesIO(doc.content)).pages[0].extract_text()
    assert "Quotation" in text and "Server" in text and "Total incl. tax" in text and "报价单" not in text


async def test_another_tenants_quotes_products_and_approvals_are_not_found(identity, quotes):
    alpha, _ = await team(identity, 0)
    beta, _ = await team(identity, 0, name="Beta AG")
    server, _, book = await catalog(quotes, alpha)
    q = (
        await quotes.CreateQuote(
            pb.CreateQuoteRequest(
                price_book_id=book.id, lines=[pb.QuoteLineInput(product_id=server.id, quantity="1")]
            ),
            metadata=alpha.md,
        )
    ).quote
    for call in (
        quotes.GetQuote(pb.GetQuoteRequest(id=q.id), metadata=beta.md),
        quotes.GetQuotePdf(pb.GetQuotePdfRequest(id=q.id), metadata=beta.md),
        quotes.GetProduct(pb.GetProductRequest(id=server.id), metadata=beta.md),
        quotes.GetPriceBook(pb.GetPriceBookRequest(id=book.id), metadata=beta.md),
        quotes.SubmitQuote(pb.SubmitQuoteRequest(id=q.id), metadata=beta.md),
    ):
        assert (await rpc_error(call)).code() == grpc.StatusCode.NOT_FOUND
    err = await rpc_error(
        quotes.CreateQuote(
            pb.CreateQuoteRequest(
                price_book_id=book.id, lines=[pb.QuoteLineInput(product_id=server.id, quantity="1")]
            ),
            metadata=beta.md,
        )
    )
    assert {f.field for f in from_rpc_error(err).field_errors} == {"price_book_id"}
