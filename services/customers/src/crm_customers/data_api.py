"""The gRPC transport of CustomersDataService (duplicate rules, scans, merges, imports, exports): authorize,
open a unit of work, call the domain, convert. No rules live here.

Permissions: rules are the object "duplicate_rule"; scans and merges need "merge" on the record type, imports
"import", exports "export" (plus "read", whose data scope and hidden fields apply too).
"""

from __future__ import annotations

from typing import Any

from crm.customers.v1 import data_quality_pb2 as pb
from crm.customers.v1 import data_quality_pb2_grpc
from crm_kit.db import Database
from crm_kit.errors import InvalidArgument
from crm_kit.imports.rpc import ImportRpcs
from crm_kit.policy import Decision, PolicyCache

from crm_customers.domain.dedup import matching, rules
from crm_customers.domain.dedup import merge as merges
from crm_customers.domain.dedup import scan as scans
from crm_customers.domain.dedup.common import ACTION_PB, RECORD_TYPE_PB, RECORD_TYPES, caller
from crm_customers.domain.imports.importers import importers, target_name

SERVICE = pb.DESCRIPTOR.services_by_name["CustomersDataService"]


def _object(record_type: int) -> str:
    kind = RECORD_TYPES.get(record_type)
    if kind is None:
        raise InvalidArgument.for_field("record_type", "must be account or contact")
    return kind


class CustomersDataApi(data_quality_pb2_grpc.CustomersDataServiceServicer):
    def __init__(self, *, db: Database, policies: PolicyCache, worker: Any = None, undo_days: int = 30):
        self.db = db
        self.policies = policies
        self.worker = worker
        self.undo_days = undo_days
        self.imports = ImportRpcs(db=db, policies=policies, importers=importers(policies), worker=worker)

    async def _authorize(self, obj: str, action: str) -> Decision:
        return (await self.policies.decide(caller(), obj, action)).require()

    def _wake(self) -> None:
        if self.worker is not None:
            self.worker.wake()

    # ------------------------------------------------------------ duplicate rules

    async def CreateDuplicateRule(self, request, context):
        await self._authorize("duplicate_rule", "create")
        async with self.db.unit_of_work() as uow:
            row = await rules.create(uow, request.duplicate_rule)
        return pb.CreateDuplicateRuleResponse(duplicate_rule=rules.rule_pb(row))

    async def GetDuplicateRule(self, request, context):
        await self._authorize("duplicate_rule", "read")
        async with self.db.read() as session:
            row = await rules.get(session, request.id)
        return pb.GetDuplicateRuleResponse(duplicate_rule=rules.rule_pb(row))

    async def ListDuplicateRules(self, request, context):
        await self._authorize("duplicate_rule", "read")
        async with self.db.read() as session:
            rows, cursor = await rules.list_rules(
                session, page_request=request.page, record_type=request.record_type
            )
        return pb.ListDuplicateRulesResponse(items=[rules.rule_pb(r) for r in rows], next_cursor=cursor)

    async def UpdateDuplicateRule(self, request, context):
        await self._authorize("duplicate_rule", "update")
        async with self.db.unit_of_work() as uow:
            row = await rules.update(
                uow,
                rule_id=request.id,
                expected_version=request.expected_version,
                rule=request.duplicate_rule,
                paths=list(request.update_mask.paths),
            )
        return pb.UpdateDuplicateRuleResponse(duplicate_rule=rules.rule_pb(row))

    async def DeleteDuplicateRule(self, request, context):
        await self._authorize("duplicate_rule", "delete")
        async with self.db.unit_of_work() as uow:
            await rules.delete(uow, rule_id=request.id, expected_version=request.expected_version)
        return pb.DeleteDuplicateRuleResponse()

    async def CheckDuplicates(self, request, context):
        kind = _object(request.record_type)
        decision = await self._authorize(kind, "read")
        fields = request.account if kind == "account" else request.contact
        async with self.db.read() as session:
            result = await matching.check(session, kind, fields, mode="create", exclude_id=request.exclude_id)
            # Outside the caller's scope: that it exists, not what it is.
            candidates = await matching.conceal(session, kind, decision, result.to_pb())
        return pb.CheckDuplicatesResponse(candidates=candidates, action=ACTION_PB.get(result.action or "", 0))

    # ------------------------------------------------------------ scans

    async def StartDuplicateScan(self, request, context):
        await self._authorize(_object(request.record_type), "merge")
        async with self.db.unit_of_work() as uow:
            scan = await scans.start(uow, record_type=request.record_type)
        self._wake()
        return pb.StartDuplicateScanResponse(duplicate_scan=scans.scan_pb(scan))

    async def GetDuplicateScan(self, request, context):
        async with self.db.read() as session:
            scan = await scans.get(session, request.id)
        await self._authorize(scan.record_type, "merge")
        return pb.GetDuplicateScanResponse(duplicate_scan=scans.scan_pb(scan))

    async def ListDuplicateScans(self, request, context):
        async with self.db.read() as session:
            rows, cursor = await scans.list_scans(session, page_request=request.page)
        allowed = {
            k: (await self.policies.decide(caller(), k, "merge")).allowed for k in ("account", "contact")
        }
        if not any(allowed.values()):
            await self._authorize("account", "merge")
        return pb.ListDuplicateScansResponse(
            items=[scans.scan_pb(s) for s in rows if allowed[s.record_type]], next_cursor=cursor
        )

    async def ListDuplicateGroups(self, request, context):
        """A scan's groups, or those of the latest finished scan of `record_type`, or (neither given) of each
        record type the caller may merge and read."""
        async with self.db.read() as session:
            if request.scan_id:
                kinds = [(await scans.get(session, request.scan_id)).record_type]
            elif request.record_type:
                kinds = [_object(request.record_type)]
            else:
                kinds = [k for k in ("account", "contact") if await self._may_merge(k)]
                if not kinds:
                    await self._authorize("account", "merge")
            reads = {}
            for kind in kinds:
                await self._authorize(kind, "merge")
                reads[kind] = await self._authorize(kind, "read")
            rows, cursor = await scans.list_groups(
                session, page_request=request.page, scan_id=request.scan_id, record_types=kinds
            )
            items = [scans.group_pb(g) for g in rows]
            shown = []
            for kind, read in reads.items():
                mine = [g for g in items if g.record_type == RECORD_TYPE_PB[kind]]
                # A group is the caller's when one of its members is in their scope; the others come by id only.
                seen = await matching.in_scope(session, kind, read, {m.id for g in mine for m in g.members})
                mine = [g for g in mine if any(m.id in seen for m in g.members)]
                await matching.conceal(session, kind, read, [m for g in mine for m in g.members])
                shown.extend(g.id for g in mine)
            keep = set(shown)
        return pb.ListDuplicateGroupsResponse(items=[g for g in items if g.id in keep], next_cursor=cursor)

    async def _may_merge(self, kind: str) -> bool:
        principal = caller()
        return all([(await self.policies.decide(principal, kind, a)).allowed for a in ("merge", "read")])

    # ------------------------------------------------------------ merges

    async def CreateMerge(self, request, context):
        kind = _object(request.record_type)
        decision = await self._authorize(kind, "merge")
        read = await self._authorize(kind, "read")
        visible = _visible(read)
        async with self.db.unit_of_work() as uow:
            record, survivor = await merges.merge(
                uow,
                record_type=request.record_type,
                survivor_id=request.survivor_id,
                merged_ids=list(request.merged_ids),
                field_sources=dict(request.field_sources),
                expected_version=request.expected_version,
                visible=visible,
                undo_days=self.undo_days,
            )
            decision.check_writable(k.split(".", 1)[0] for k in request.field_sources)
            answer = pb.CreateMergeResponse(merge=merges.merge_pb(record))
            _fill_record(answer, kind, survivor, read)
        return answer

    async def _reads(self) -> dict[str, Decision]:
        """The caller's "read" on each kind of record merges are about: a merge is read in its survivor's scope."""
        return {kind: await self.policies.decide(caller(), kind, "read") for kind in merges.SOURCES}

    async def GetMerge(self, request, context):
        async with self.db.read() as session:
            record = await merges.get(session, request.id, reads=await self._reads())
        await self._authorize(record.record_type, "merge")
        return pb.GetMergeResponse(merge=merges.merge_pb(record))

    async def ListMerges(self, request, context):
        if request.record_type:
            await self._authorize(_object(request.record_type), "merge")
        else:
            await self._authorize("account", "merge")
        async with self.db.read() as session:
            rows, cursor = await merges.list_merges(
                session,
                await self._reads(),
                page_request=request.page,
                record_type=request.record_type,
                survivor_id=request.survivor_id,
            )
        return pb.ListMergesResponse(items=[merges.merge_pb(m) for m in rows], next_cursor=cursor)

    async def UndoMerge(self, request, context):
        async with self.db.read() as session:
            record = await merges.get(session, request.id)
        await self._authorize(record.record_type, "merge")
        read = await self._authorize(record.record_type, "read")
        async with self.db.unit_of_work() as uow:
            record, _ = await merges.undo(uow, merge_id=request.id, visible=_visible(read))
        return pb.UndoMergeResponse(merge=merges.merge_pb(record))

    # ------------------------------------------------------------ imports (crm_kit.imports.rpc)

    async def UploadImportFile(self, request_iterator, context):
        return await self.imports.upload(
            request_iterator, pb.UploadImportFileResponse, target=lambda header: target_name(header.target)
        )

    async def GetImport(self, request, context):
        return await self.imports.get(request, pb.GetImportResponse)

    async def ListImports(self, request, context):
        return await self.imports.list(request, pb.ListImportsResponse)

    async def DryRunImport(self, request, context):
        return await self.imports.dry_run(request, pb.DryRunImportResponse)

    async def StartImport(self, request, context):
        return await self.imports.start(request, pb.StartImportResponse)

    async def CancelImport(self, request, context):
        return await self.imports.cancel(request, pb.CancelImportResponse)

    async def ListImportErrors(self, request, context):
        return await self.imports.list_errors(request, pb.ListImportErrorsResponse)

    async def DownloadImportErrors(self, request, context):
        async for part in self.imports.download_errors(request, pb.DownloadImportErrorsResponse):
            yield part

    # ------------------------------------------------------------ exports

    async def ExportRecords(self, request, context):
        from crm_customers.domain.exports import export

        kind = _object(request.record_type)
        exporting = await self._authorize(kind, "export")
        reading = await self._authorize(kind, "read")
        async for part in export.stream(self.db, request=request, kind=kind, read=reading, export=exporting):
            yield part


def _visible(decision: Decision) -> Any:
    from crm_customers.domain.common import visible

    return lambda model: visible(decision, model)


def _fill_record(answer: Any, kind: str, row: Any, decision: Decision) -> None:
    """The survivor as the customers contract shows it, without the caller's hidden fields."""
    try:
        if kind == "account":
            from crm_customers.domain.accounts import account_pb as convert
        else:
            from crm_customers.domain.contacts import contact_pb as convert  # type: ignore[no-redef]
    except ImportError:  # the records' conversions are not there yet: the merge record says enough
        return
    message = decision.redact_message(convert(row))
    getattr(answer, kind).CopyFrom(message)


class DataParts:
    """What CustomersDataService adds to the service: its servicer and the background worker (imports, scans).

    In app.build():  data = DataParts(runtime.db, policies)  →  servicers += [data.servicer],
    on_stop += [data.stop]."""

    def __init__(self, db: Database, policies: PolicyCache, *, poll_seconds: float = 2.0):
        from crm_kit.grpc_server import Servicer

        from crm_customers.domain.imports.worker import Worker

        self.worker = Worker(db, importers=importers(policies), poll_seconds=poll_seconds)
        self.api = CustomersDataApi(db=db, policies=policies, worker=self.worker)
        self.servicer = Servicer(
            data_quality_pb2_grpc.add_CustomersDataServiceServicer_to_server, self.api, SERVICE.full_name
        )
        self.worker.start()

    async def stop(self) -> None:
        await self.worker.stop()
