from __future__ import annotations

from crm.sales.v1 import settings_pb2 as pb
from crm.sales.v1 import settings_pb2_grpc
from crm_kit.db import Database
from crm_kit.policy import PolicyCache

from crm_sales.domain import settings
from crm_sales.domain.common import authorize, caller

SERVICE = pb.DESCRIPTOR.services_by_name["SalesSettingsService"]


class SalesSettingsApi(settings_pb2_grpc.SalesSettingsServiceServicer):
    def __init__(self, *, db: Database, policies: PolicyCache):
        self.db = db
        self.policies = policies

    async def GetSalesSettings(self, request, context):
        await authorize(self.policies, "sales_settings", "read")
        async with self.db.read() as session:
            row = await settings.get(session, caller().tenant_id)
        return pb.GetSalesSettingsResponse(settings=settings.settings_pb(row))

    async def UpdateSalesSettings(self, request, context):
        await authorize(self.policies, "sales_settings", "update")
        async with self.db.unit_of_work() as uow:
            row = await settings.update(uow, request)
        return pb.UpdateSalesSettingsResponse(settings=settings.settings_pb(row))
