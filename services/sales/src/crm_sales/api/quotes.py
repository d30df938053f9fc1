from __future__ import annotations

import asyncio

from crm.sales.v1 import quotes_pb2 as pb
from crm.sales.v1 import quotes_pb2_grpc
from crm_kit.db import Database
from crm_kit.errors import Conflict
from crm_kit.policy import PolicyCache

from crm_sales import models, pdf
from crm_sales.clock import Clock
from crm_sales.domain import approvals, catalog, documents, quotes
from crm_sales.domain.common import People, authorize, caller

SERVICE = pb.DESCRIPTOR.services_by_name["QuotesService"]


class QuotesApi(quotes_pb2_grpc.QuotesServiceServicer):
    def __init__(self, *, db: Database, policies: PolicyCache, clock: Clock, people: People):
        self.db = db
        self.policies = policies
        self.clock = clock
        self.people = people

    async def _reads(self) -> dict:
        """The caller's "read" on what approvals are about: their reasons quote those objects' fields."""
        return {obj: await self.policies.decide(caller(), obj, "read") for obj in approvals.SOURCES}

    async def _quote(self, q: models.Quote) -> pb.Quote:
        return quotes.quote_pb(q, await self.policies.decide(caller(), "quote", "read"))

    # ------------------------------------------------------------ products and price books

    async def CreateProduct(self, request, context):
        await authorize(self.policies, "product", "create")
        async with self.db.unit_of_work() as uow:
            p = await catalog.create_product(uow, request)
        return pb.CreateProductResponse(product=catalog.product_pb(p))

    async def GetProduct(self, request, context):
        await authorize(self.policies, "product", "read")
        async with self.db.read() as session:
            p = await catalog.get_product(session, request.id)
        return pb.GetProductResponse(product=catalog.product_pb(p))

    async def ListProducts(self, request, context):
        await authorize(self.policies, "product", "read")
        async with self.db.read() as session:
            rows, cursor = await catalog.list_products(session, request)
        return pb.ListProductsResponse(items=[catalog.product_pb(p) for p in rows], next_cursor=cursor)

    async def UpdateProduct(self, request, context):
        await authorize(self.policies, "product", "update")
        async with self.db.unit_of_work() as uow:
            p = await catalog.update_product(uow, request)
        return pb.UpdateProductResponse(product=catalog.product_pb(p))

    async def CreatePriceBook(self, request, context):
        await authorize(self.policies, "price_book", "create")
        async with self.db.unit_of_work() as uow:
            b = await catalog.create_book(uow, request)
            message = await catalog.book_pb(uow.session, b)
        return pb.CreatePriceBookResponse(price_book=message)

    async def GetPriceBook(self, request, context):
        await authorize(self.policies, "price_book", "read")
        async with self.db.read() as session:
            b = await catalog.get_book(session, request.id)
            return pb.GetPriceBookResponse(price_book=await catalog.book_pb(session, b))

    async def ListPriceBooks(self, request, context):
        await authorize(self.policies, "price_book", "read")
        async with self.db.read() as session:
            rows, cursor = await catalog.list_books(session, request)
            items = [await catalog.book_pb(session, b) for b in rows]
        return pb.ListPriceBooksResponse(items=items, next_cursor=cursor)

    async def UpdatePriceBook(self, request, context):
        await authorize(self.policies, "price_book", "update")
        async with self.db.unit_of_work() as uow:
            b = await catalog.update_book(uow, request)
            message = await catalog.book_pb(uow.session, b)
        return pb.UpdatePriceBookResponse(price_book=message)

    async def GetApprovalPolicy(self, request, context):
        await authorize(self.policies, "approval_policy", "read")
        async with self.db.read() as session:
            p = await approvals.policy(session, caller().tenant_id)
        return pb.GetApprovalPolicyResponse(policy=approvals.policy_pb(p))

    async def UpdateApprovalPolicy(self, request, context):
        await authorize(self.policies, "approval_policy", "update")
        async with self.db.unit_of_work() as uow:
            p = await approvals.update_policy(uow, request)
        return pb.UpdateApprovalPolicyResponse(policy=approvals.policy_pb(p))

    # ------------------------------------------------------------ quotes

    async def CreateQuote(self, request, context):
        await authorize(self.policies, "quote", "create")
        async with self.db.unit_of_work() as uow:
            q = await quotes.create(uow, request, people=self.people, now=self.clock.now())
        return pb.CreateQuoteResponse(quote=await self._quote(q))

    async def GetQuote(self, request, context):
        decision = await authorize(self.policies, "quote", "read")
        async with self.db.read() as session:
            q = await quotes.get(session, decision, request.id)
        return pb.GetQuoteResponse(quote=quotes.quote_pb(q, decision))

    async def ListQuotes(self, request, context):
        decision = await authorize(self.policies, "quote", "read")
        async with self.db.read() as session:
            rows, cursor = await quotes.list_quotes(session, decision, request)
        return pb.ListQuotesResponse(items=[quotes.quote_pb(q, decision) for q in rows], next_cursor=cursor)

    async def UpdateQuote(self, request, context):
        decision = await authorize(self.policies, "quote", "update")
        decision.check_writable(request.update_mask.paths)
        async with self.db.unit_of_work() as uow:
            q = await quotes.update_draft(uow, decision, request, people=self.people)
        return pb.UpdateQuoteResponse(quote=await self._quote(q))

    async def ReviseQuote(self, request, context):
        decision = await authorize(self.policies, "quote", "update")
        async with self.db.unit_of_work() as uow:
            q = await quotes.revise(uow, decision, request.id)
        return pb.ReviseQuoteResponse(quote=await self._quote(q))

    async def SubmitQuote(self, request, context):
        decision = await authorize(self.policies, "quote", "update")
        async with self.db.unit_of_work() as uow:
            q, approval = await quotes.submit(uow, decision, request.id)
        return pb.SubmitQuoteResponse(
            quote=await self._quote(q),
            approval=approvals.approval_pb(approval, await self._reads()) if approval else None,
        )

    async def AcceptQuote(self, request, context):
        decision = await authorize(self.policies, "quote", "update")
        async with self.db.unit_of_work() as uow:
            q = await quotes.respond(uow, decision, request.id, accept=True)
        return pb.AcceptQuoteResponse(quote=await self._quote(q))

    async def DeclineQuote(self, request, context):
        decision = await authorize(self.policies, "quote", "update")
        async with self.db.unit_of_work() as uow:
            q = await quotes.respond(uow, decision, request.id, accept=False)
        return pb.DeclineQuoteResponse(quote=await self._quote(q))

    async def GetQuotePdf(self, request, context):
        decision = await authorize(self.policies, "quote", "read")
        async with self.db.read() as session:
            q = await quotes.get(session, decision, request.id)
            letterhead = await documents.letterhead(session, q.tenant_id, q.locale)
        if q.status not in ("approved", "accepted"):
            raise Conflict("only an approved quote renders to a PDF", reason="quote_not_approved")
        # Rendering is CPU work: off the event loop.
        content = await asyncio.to_thread(pdf.render_quote, quotes.quote_pb(q, decision), letterhead)
        return pb.GetQuotePdfResponse(
            content=content, content_type="application/pdf", filename=f"{q.number}-v{q.revision}.pdf"
        )

    # ------------------------------------------------------------ approvals

    async def ListApprovals(self, request, context):
        await authorize(self.policies, "quote", "read")
        reads = await self._reads()
        async with self.db.read() as session:
            rows, cursor = await approvals.list_approvals(session, reads, request)
        return pb.ListApprovalsResponse(
            items=[approvals.approval_pb(a, reads) for a in rows], next_cursor=cursor
        )

    async def GetApproval(self, request, context):
        await authorize(self.policies, "quote", "read")
        reads = await self._reads()
        async with self.db.read() as session:
            a = await approvals.get(session, request.id, decisions=reads)
        return pb.GetApprovalResponse(approval=approvals.approval_pb(a, reads))

    async def ApproveApproval(self, request, context):
        caller()
        async with self.db.unit_of_work() as uow:
            a = await approvals.decide(
                uow, request.id, approve=True, comment=request.comment, now=self.clock.now()
            )
        return pb.ApproveApprovalResponse(approval=approvals.approval_pb(a, await self._reads()))

    async def RejectApproval(self, request, context):
        caller()
        async with self.db.unit_of_work() as uow:
            a = await approvals.decide(
                uow, request.id, approve=False, comment=request.comment, now=self.clock.now()
            )
        return pb.RejectApprovalResponse(approval=approvals.approval_pb(a, await self._reads()))
