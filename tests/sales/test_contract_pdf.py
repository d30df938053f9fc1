"""The contract as a PDF in Chinese or English, and the tenant's letterhead (sales settings) on contract and quote
PDFs, read back with pypdf."""

from __future__ import annotations

import io

import grpc
from crm.sales.v1 import contracts_pb2 as cpb
from crm.sales.v1 import events_pb2, settings_pb2_grpc
from crm.sales.v1 import quotes_pb2 as qpb
from crm.sales.v1 import settings_pb2 as spb
from crm_kit.errors import from_rpc_error
from google.protobuf import field_mask_pb2
from PIL import Image
from pypdf import PdfReader

from tests.identity.helpers import rpc_error
from tests.sales.helpers import payloads, team
from tests.sales.test_contracts_and_collection import accepted_quote

TERMS = "一、甲方应于合同签订后十日内支付首期款。\n二、乙方负责软件的安装、调试与培训。"


def logo_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (240, 80), (196, 30, 58)).save(out, "PNG")
    return out.getvalue()


def letterhead(**fields) -> spb.UpdateSalesSettingsRequest:  # type: ignore[no-untyped-def]
    return spb.UpdateSalesSettingsRequest(
        settings=spb.SalesSettings(**fields), update_mask=field_mask_pb2.FieldMask(paths=sorted(fields))
    )


def text_of(content: bytes) -> tuple[str, int]:
    """The first page's text, and how many images it shows."""
    page = PdfReader(io.BytesIO(content)).pages[0]
    return page.extract_text(), len(page.images)


async def test_the_letterhead_is_set_by_an_admin_and_printed_on_contract_and_quote_pdfs(
    identity, sales_channel, quotes, contracts, outbox
):
    company, (rep,) = await team(identity, 1)
    settings = settings_pb2_grpc.SalesSettingsServiceStub(sales_channel)
    empty = (await settings.GetSalesSettings(spb.GetSalesSettingsRequest(), metadata=company.md)).settings
    assert (empty.company_name, empty.version) == ("", 0)

    denied = await rpc_error(settings.UpdateSalesSettings(letterhead(company_name="x"), metadata=rep.md))
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    bad = await rpc_error(
        settings.UpdateSalesSettings(
            letterhead(logo=b"\x89PNG\r\n\x1a\n not an image", phone="1" * 51), metadata=company.md
        )
    )
    assert sorted(f.field for f in from_rpc_error(bad).field_errors) == ["logo", "phone"]
    logo = logo_png()
    saved = (
        await settings.UpdateSalesSettings(
            letterhead(
                company_name="北京智联网络有限公司",
                company_name_en="Beijing Zhilian Networks Co., Ltd.",
                address="北京市海淀区中关村大街1号",
                address_en="No. 1 Zhongguancun Street, Haidian, Beijing",
                phone="010-88886666",
                tax_number="91110108MA01ABCD3X",
                logo=logo,
            ),
            metadata=company.md,
        )
    ).settings
    assert saved.version == 1 and saved.logo == logo and saved.logo_content_type == "image/png"
    assert len(saved.logo_sha256) == 64
    ((envelope, event),) = payloads(await outbox(company.tenant.id), events_pb2.SalesSettingsUpdated)
    assert event.settings.company_name == "北京智联网络有限公司" and not event.settings.logo
    assert {c.field for c in envelope.changes} >= {"company_name", "tax_number", "logo_sha256"}
    stale = await rpc_error(
        settings.UpdateSalesSettings(
            spb.UpdateSalesSettingsRequest(
                settings=spb.SalesSettings(phone="010-1"),
                update_mask=field_mask_pb2.FieldMask(paths=["phone"]),
                expected_version=7,
            ),
            metadata=company.md,
        )
    )
    assert stale.code() == grpc.StatusCode.ABORTED
    beta, _ = await team(identity, 0, name="Beta Ltd")
    other = (await settings.GetSalesSettings(spb.GetSalesSettingsRequest(), metadata=beta.md)).settings
    assert other.company_name == "" and not other.logo

    # A contract from a quote, with a payment plan.
    quote = await accepted_quote(quotes, company, "")
    contract = (
        await contracts.CreateContract(
            cpb.CreateContractRequest(quote_id=quote.id, title="企业服务器采购合同", terms=TERMS),
            metadata=company.md,
        )
    ).contract
    draft = await rpc_error(
        contracts.GetContractPdf(cpb.GetContractPdfRequest(id=contract.id), metadata=company.md)
    )
    assert from_rpc_error(draft).reason == "contract_not_approved"
    await contracts.SubmitContract(cpb.SubmitContractRequest(id=contract.id), metadata=company.md)
    await contracts.CreatePaymentPlan(
        cpb.CreatePaymentPlanRequest(
            contract_id=contract.id,
            instalments=[
                cpb.InstalmentInput(due_date="2027-01-31", amount="50000.00"),
                cpb.InstalmentInput(due_date="2027-06-30", amount="53959.98"),
            ],
        ),
        metadata=company.md,
    )

    zh = await contracts.GetContractPdf(cpb.GetContractPdfRequest(id=contract.id), metadata=company.md)
    assert (zh.content_type, zh.filename) == ("application/pdf", f"{contract.number}.pdf")
    text, images = text_of(zh.content)
    for expected in (
        "北京智联网络有限公司",
        "北京市海淀区中关村大街1号",
        "010-88886666",
        "91110108MA01ABCD3X",
        "销售合同",
        "企业服务器采购合同",
        "上海远景能源有限公司",
        "一、甲方应于合同签订后十日内支付首期款。",
        "付款计划",
        "53,959.98",
        "103,959.98",
    ):
        assert expected in text, expected
    assert images == 1
    en = await contracts.GetContractPdf(
        cpb.GetContractPdfRequest(id=contract.id, locale="en"), metadata=company.md
    )
    text, _ = text_of(en.content)
    assert "Beijing Zhilian Networks Co., Ltd." in text and "No. 1 Zhongguancun Street" in text
    assert "Sales Contract" in text and "Payment schedule" in text and "企业服务器采购合同" in text
    wrong = await rpc_error(
        contracts.GetContractPdf(cpb.GetContractPdfRequest(id=contract.id, locale="fr"), metadata=company.md)
    )
    assert [f.field for f in from_rpc_error(wrong).field_errors] == ["locale"]
    hidden = await rpc_error(
        contracts.GetContractPdf(cpb.GetContractPdfRequest(id=contract.id), metadata=beta.md)
    )
    assert hidden.code() == grpc.StatusCode.NOT_FOUND

    # The quote carries the letterhead too.
    quote_pdf = await quotes.GetQuotePdf(qpb.GetQuotePdfRequest(id=quote.id), metadata=company.md)
    text, images = text_of(quote_pdf.content)
    assert "北京智联网络有限公司" in text and "91110108MA01ABCD3X" in text and images == 1

    # Without a logo the letterhead is text only.
    cleared = (await settings.UpdateSalesSettings(letterhead(logo=b""), metadata=company.md)).settings
    assert (cleared.logo, cleared.logo_content_type, cleared.version) == (b"", "", 2)
    text, images = text_of(
        (
            await contracts.GetContractPdf(cpb.GetContractPdfRequest(id=contract.id), metadata=company.md)
        ).content
    )
    assert "北京智联网络有限公司" in text and images == 0
