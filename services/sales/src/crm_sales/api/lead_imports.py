"""The gRPC transport of LeadImportsService: the kit's import RPCs (crm_kit.imports.rpc) with the lead
importer. Every method needs the "import" action on "lead"."""

from __future__ import annotations

from crm.sales.v1 import lead_imports_pb2 as pb
from crm.sales.v1 import lead_imports_pb2_grpc
from crm_kit.db import Database
from crm_kit.imports.rpc import ImportRpcs
from crm_kit.imports.worker import Worker
from crm_kit.policy import PolicyCache

from crm_sales.clock import Clock
from crm_sales.domain.common import People
from crm_sales.domain.lead_imports import LeadImporter

SERVICE = pb.DESCRIPTOR.services_by_name["LeadImportsService"]


class LeadImportsApi(lead_imports_pb2_grpc.LeadImportsServiceServicer):
    def __init__(self, *, db: Database, policies: PolicyCache, people: People, clock: Clock):
        importer = LeadImporter(people=people, clock=clock)
        # Runs the started imports of this replica at once, and any replica's whose lease ran out.
        self.worker = Worker(db, {importer.target: importer}, name="sales-imports-worker")
        self.imports = ImportRpcs(
            db=db, policies=policies, importers={importer.target: importer}, worker=self.worker
        )

    async def UploadLeadImportFile(self, request_iterator, context):
        return await self.imports.upload(
            request_iterator, pb.UploadLeadImportFileResponse, target=lambda _: "leads"
        )

    async def GetLeadImport(self, request, context):
        return await self.imports.get(request, pb.GetLeadImportResponse)

    async def ListLeadImports(self, request, context):
        return await self.imports.list(request, pb.ListLeadImportsResponse)

    async def DryRunLeadImport(self, request, context):
        return await self.imports.dry_run(request, pb.DryRunLeadImportResponse)

    async def StartLeadImport(self, request, context):
        return await self.imports.start(request, pb.StartLeadImportResponse)

    async def CancelLeadImport(self, request, context):
        return await self.imports.cancel(request, pb.CancelLeadImportResponse)

    async def ListLeadImportErrors(self, request, context):
        return await self.imports.list_errors(request, pb.ListLeadImportErrorsResponse)

    async def DownloadLeadImportErrors(self, request, context):
        async for part in self.imports.download_errors(request, pb.DownloadLeadImportErrorsResponse):
            yield part
