from __future__ import annotations

from crm.sales.v1 import pipelines_pb2 as pb
from crm.sales.v1 import pipelines_pb2_grpc
from crm_kit.db import Database
from crm_kit.policy import PolicyCache

from crm_sales import models
from crm_sales.clock import Clock
from crm_sales.domain import opportunities, pipelines
from crm_sales.domain.common import People, authorize, caller

SERVICE = pb.DESCRIPTOR.services_by_name["PipelinesService"]


class PipelinesApi(pipelines_pb2_grpc.PipelinesServiceServicer):
    def __init__(self, *, db: Database, policies: PolicyCache, clock: Clock, people: People):
        self.db = db
        self.policies = policies
        self.clock = clock
        self.people = people

    async def _opp(self, o: models.Opportunity) -> pb.Opportunity:
        decision = await self.policies.decide(caller(), "opportunity", "read")
        return opportunities.opportunity_pb(o, decision)

    # ------------------------------------------------------------ pipelines

    async def CreatePipeline(self, request, context):
        await authorize(self.policies, "pipeline", "create")
        async with self.db.unit_of_work() as uow:
            p = await pipelines.create(uow, request)
            message = await pipelines.pipeline_pb(uow.session, p)
        return pb.CreatePipelineResponse(pipeline=message)

    async def GetPipeline(self, request, context):
        await authorize(self.policies, "pipeline", "read")
        async with self.db.read() as session:
            p = await pipelines.get(session, request.id)
            return pb.GetPipelineResponse(pipeline=await pipelines.pipeline_pb(session, p))

    async def ListPipelines(self, request, context):
        await authorize(self.policies, "pipeline", "read")
        async with self.db.read() as session:
            rows, cursor = await pipelines.list_pipelines(session, request)
            items = [await pipelines.pipeline_pb(session, p) for p in rows]
        return pb.ListPipelinesResponse(items=items, next_cursor=cursor)

    async def UpdatePipeline(self, request, context):
        await authorize(self.policies, "pipeline", "update")
        async with self.db.unit_of_work() as uow:
            p = await pipelines.update(uow, request)
            message = await pipelines.pipeline_pb(uow.session, p)
        return pb.UpdatePipelineResponse(pipeline=message)

    async def DeletePipeline(self, request, context):
        await authorize(self.policies, "pipeline", "delete")
        async with self.db.unit_of_work() as uow:
            await pipelines.delete(uow, request.id, request.expected_version)
        return pb.DeletePipelineResponse()

    async def GetBoard(self, request, context):
        await authorize(self.policies, "pipeline", "read")
        decision = await authorize(self.policies, "opportunity", "read")
        async with self.db.read() as session:
            message, columns = await pipelines.board(session, decision, request, now=self.clock.now())
        for column in columns:
            for card in column.cards:
                decision.redact_message(card)
            for total in column.totals:
                decision.redact_derived(total, pipelines.TOTALS_FROM)
        return pb.GetBoardResponse(pipeline=message, columns=columns)

    # ------------------------------------------------------------ opportunities

    async def CreateOpportunity(self, request, context):
        await authorize(self.policies, "opportunity", "create")
        async with self.db.unit_of_work() as uow:
            o = await opportunities.create(uow, request, people=self.people, now=self.clock.now())
        return pb.CreateOpportunityResponse(opportunity=await self._opp(o))

    async def GetOpportunity(self, request, context):
        decision = await authorize(self.policies, "opportunity", "read")
        async with self.db.read() as session:
            o = await opportunities.get(session, decision, request.id)
        return pb.GetOpportunityResponse(opportunity=opportunities.opportunity_pb(o, decision))

    async def ListOpportunities(self, request, context):
        decision = await authorize(self.policies, "opportunity", "read")
        async with self.db.read() as session:
            rows, cursor = await opportunities.list_opportunities(session, decision, request)
        return pb.ListOpportunitiesResponse(
            items=[opportunities.opportunity_pb(o, decision) for o in rows], next_cursor=cursor
        )

    async def UpdateOpportunity(self, request, context):
        decision = await authorize(self.policies, "opportunity", "update")
        decision.check_writable(request.update_mask.paths)
        async with self.db.unit_of_work() as uow:
            o = await opportunities.update(uow, decision, request, people=self.people)
        return pb.UpdateOpportunityResponse(opportunity=await self._opp(o))

    async def DeleteOpportunity(self, request, context):
        decision = await authorize(self.policies, "opportunity", "delete")
        async with self.db.unit_of_work() as uow:
            await opportunities.delete(uow, decision, request.id, request.expected_version)
        return pb.DeleteOpportunityResponse()

    async def MoveOpportunityStage(self, request, context):
        decision = await authorize(self.policies, "opportunity", "update")
        decision.check_writable(["stage_id"])
        async with self.db.unit_of_work() as uow:
            o = await opportunities.move(uow, decision, request, now=self.clock.now())
        return pb.MoveOpportunityStageResponse(opportunity=await self._opp(o))

    async def ListStageHistory(self, request, context):
        decision = await authorize(self.policies, "opportunity", "read")
        async with self.db.read() as session:
            rows, cursor = await opportunities.stage_history(session, decision, request)
        now = self.clock.now()
        return pb.ListStageHistoryResponse(
            items=[opportunities.change_pb(c, now) for c in rows], next_cursor=cursor
        )
