"""The gRPC transport of customers: authorize (object, action, data scope, field rules), open the unit of
work or read session, call the domain, convert and redact. No business rules live here."""

from __future__ import annotations

import grpc
from crm.customers.v1 import customers_pb2 as pb
from crm.customers.v1 import customers_pb2_grpc
from crm.identity.v1 import identity_pb2
from crm_kit import grpc_client
from crm_kit.db import Database
from crm_kit.errors import InvalidArgument, NotFound, PermissionDenied
from crm_kit.policy import Decision, PolicyCache
from sqlalchemy import false, select

from crm_customers import models
from crm_customers.domain import (
    accounts,
    contacts,
    dedup,
    finder,
    interactions,
    recycle_bin,
    relationships,
    sales_timeline,
    saved_views,
)
from crm_customers.domain import custom_fields as cf
from crm_customers.domain.common import (
    RECORD_TYPES,
    authorize,
    caller,
    check_writable,
    get_owned,
    visible,
)

SERVICE = pb.DESCRIPTOR.services_by_name["CustomersService"]


class CustomersApi(customers_pb2_grpc.CustomersServiceServicer):
    def __init__(self, *, db: Database, policies: PolicyCache, identity):  # type: ignore[no-untyped-def]
        self.db = db
        self.policies = policies
        self.identity = identity

    async def department_of(self, user_id: str) -> str | None:
        """The department of a user of the caller's tenant (asked of identity with the caller's credential)."""
        try:
            response = await self.identity.GetUser(
                identity_pb2.GetUserRequest(id=user_id), metadata=grpc_client.outgoing_metadata(), timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
                raise PermissionDenied(
                    "assigning another owner needs permission to read users", reason="owner_lookup_denied"
                ) from exc
            raise
        return response.user.department_id

    async def _defs(self, session, record_type: str) -> dict[str, models.CustomField]:  # type: ignore[no-untyped-def]
        return await cf.definitions(session, caller().tenant_id, record_type)

    async def _read_decision(self, obj: str) -> Decision:
        return await authorize(self.policies, obj, "read")

    async def _sees(self, obj: str) -> Decision:
        """The caller's read decision, allowed or not (what duplicate candidates may show of records)."""
        return await self.policies.decide(caller(), obj, "read")

    # ------------------------------------------------------------ accounts

    async def _account_out(self, row: models.Account, *, rollups: bool = True) -> pb.Account:
        read = await self.policies.decide(caller(), "account", "read")
        counts = (0, 0)
        if rollups:
            async with self.db.read() as session:
                counts = (await accounts.rollups(session, row.tenant_id, [row.id])).get(row.id, (0, 0))
        return accounts.redact(read, accounts.account_pb(row, subsidiaries=counts[0], descendants=counts[1]))

    async def CreateAccount(self, request, context):
        decision = await authorize(self.policies, "account", "create")
        check_writable(decision, accounts.given_fields(request.account))
        async with self.db.unit_of_work() as uow:
            defs = await self._defs(uow.session, "account")
            row = await accounts.create(
                uow,
                request.account,
                defs=defs,
                department_of=self.department_of,
                read=await self._sees("account"),
            )
        return pb.CreateAccountResponse(
            account=_with_duplicates(await self._account_out(row, rollups=False), row)
        )

    async def GetAccount(self, request, context):
        decision = await self._read_decision("account")
        async with self.db.read() as session:
            row = await accounts.get(session, request.id, decision, deleted=None)
            counts = (await accounts.rollups(session, row.tenant_id, [row.id])).get(row.id, (0, 0))
        return pb.GetAccountResponse(
            account=accounts.redact(
                decision, accounts.account_pb(row, subsidiaries=counts[0], descendants=counts[1])
            )
        )

    async def ListAccounts(self, request, context):
        decision = await self._read_decision("account")
        async with self.db.read() as session:
            query, filters, sort = await saved_views.apply(session, request, "account")
            defs = await self._defs(session, "account") if _needs_defs(query, filters, sort) else {}
            rows, cursor = await accounts.list_accounts(
                session,
                decision,
                defs,
                page=request.page,
                query=query,
                filters=filters,
                sort=sort,
                deleted=request.deleted,
            )
        items = [
            accounts.redact(decision, accounts.account_pb(r, subsidiaries=r.subsidiary_count)) for r in rows
        ]
        return pb.ListAccountsResponse(items=items, next_cursor=cursor)

    async def CountAccounts(self, request, context):
        decision = await self._read_decision("account")
        async with self.db.read() as session:
            query, filters, _ = await saved_views.apply(session, request, "account")
            defs = await self._defs(session, "account") if _needs_defs(query, filters, "") else {}
            n, exact = await accounts.count_accounts(
                session, decision, defs, query=query, filters=filters, deleted=request.deleted
            )
        return pb.CountAccountsResponse(count=n, exact=exact)

    async def UpdateAccount(self, request, context):
        decision = await authorize(self.policies, "account", "update")
        paths = list(request.update_mask.paths)
        accounts.check_mask(paths)
        check_writable(decision, accounts.writable_paths(paths, request.account))
        async with self.db.unit_of_work() as uow:
            defs = await self._defs(uow.session, "account")
            row = await accounts.update(
                uow,
                request,
                decision,
                defs=defs,
                department_of=self.department_of,
                read=await self._sees("account"),
            )
        return pb.UpdateAccountResponse(account=_with_duplicates(await self._account_out(row), row))

    async def DeleteAccount(self, request, context):
        decision = await authorize(self.policies, "account", "delete")
        async with self.db.unit_of_work() as uow:
            await accounts.delete(uow, request.id, request.expected_version, decision)
        return pb.DeleteAccountResponse()

    async def RestoreAccount(self, request, context):
        decision = await authorize(self.policies, "account", "delete")
        async with self.db.unit_of_work() as uow:
            defs = await self._defs(uow.session, "account")
            row = await accounts.restore(uow, request.id, decision, defs=defs)
        return pb.RestoreAccountResponse(account=await self._account_out(row))

    async def ListAccountStageChanges(self, request, context):
        decision = await self._read_decision("account")
        check_visible(decision, "lifecycle_stage")
        async with self.db.read() as session:
            rows, cursor = await accounts.stage_changes(session, request.id, decision, request.page)
        return pb.ListAccountStageChangesResponse(
            items=[accounts.stage_change_pb(r) for r in rows], next_cursor=cursor
        )

    async def GetAccountTree(self, request, context):
        decision = await self._read_decision("account")
        async with self.db.read() as session:
            root, nodes = await accounts.tree(session, request.id, decision, request.max_depth)
        return pb.GetAccountTreeResponse(root_id=root, nodes=nodes)

    async def GetTierRules(self, request, context):
        await self._read_decision("account")
        async with self.db.read() as session:
            rules, version = await accounts.tier_rules(session, caller().tenant_id)
        return pb.GetTierRulesResponse(tier_rules=accounts.tier_rules_pb(rules, version))

    async def UpdateTierRules(self, request, context):
        await authorize(self.policies, "tier_rules", "update")
        async with self.db.unit_of_work() as uow:
            rules, version, changed = await accounts.set_tier_rules(
                uow, list(request.rules), request.default_tier, reapply=request.reapply
            )
        return pb.UpdateTierRulesResponse(
            tier_rules=accounts.tier_rules_pb(rules, version), accounts_changed=changed
        )

    # ------------------------------------------------------------ contacts

    async def _contact_out(self, row: models.Contact) -> pb.Contact:
        read = await self.policies.decide(caller(), "contact", "read")
        return accounts.redact(read, contacts.contact_pb(row))

    async def CreateContact(self, request, context):
        decision = await authorize(self.policies, "contact", "create")
        check_writable(decision, contacts.given_fields(request.contact))
        async with self.db.unit_of_work() as uow:
            defs = await self._defs(uow.session, "contact")
            row = await contacts.create(
                uow,
                request.contact,
                defs=defs,
                department_of=self.department_of,
                read=await self._sees("contact"),
            )
        return pb.CreateContactResponse(contact=_with_duplicates(await self._contact_out(row), row))

    async def GetContact(self, request, context):
        decision = await self._read_decision("contact")
        async with self.db.read() as session:
            row = await contacts.get(session, request.id, decision, deleted=None)
        return pb.GetContactResponse(contact=accounts.redact(decision, contacts.contact_pb(row)))

    async def ListContacts(self, request, context):
        decision = await self._read_decision("contact")
        async with self.db.read() as session:
            query, filters, sort = await saved_views.apply(session, request, "contact")
            defs = await self._defs(session, "contact") if _needs_defs(query, filters, sort) else {}
            rows, cursor = await contacts.list_contacts(
                session,
                decision,
                defs,
                page=request.page,
                query=query,
                filters=filters,
                sort=sort,
                deleted=request.deleted,
                account_id=request.account_id,
            )
        items = [accounts.redact(decision, contacts.contact_pb(r)) for r in rows]
        return pb.ListContactsResponse(items=items, next_cursor=cursor)

    async def CountContacts(self, request, context):
        decision = await self._read_decision("contact")
        async with self.db.read() as session:
            query, filters, _ = await saved_views.apply(session, request, "contact")
            defs = await self._defs(session, "contact") if _needs_defs(query, filters, "") else {}
            n, exact = await contacts.count_contacts(
                session,
                decision,
                defs,
                query=query,
                filters=filters,
                deleted=request.deleted,
                account_id=request.account_id,
            )
        return pb.CountContactsResponse(count=n, exact=exact)

    async def UpdateContact(self, request, context):
        decision = await authorize(self.policies, "contact", "update")
        paths = list(request.update_mask.paths)
        contacts.check_mask(paths)
        check_writable(decision, contacts.writable_paths(paths, request.contact))
        async with self.db.unit_of_work() as uow:
            defs = await self._defs(uow.session, "contact")
            row = await contacts.update(
                uow,
                request,
                decision,
                defs=defs,
                department_of=self.department_of,
                read=await self._sees("contact"),
            )
        return pb.UpdateContactResponse(contact=_with_duplicates(await self._contact_out(row), row))

    async def DeleteContact(self, request, context):
        decision = await authorize(self.policies, "contact", "delete")
        async with self.db.unit_of_work() as uow:
            await contacts.delete(uow, request.id, request.expected_version, decision)
        return pb.DeleteContactResponse()

    async def RestoreContact(self, request, context):
        decision = await authorize(self.policies, "contact", "delete")
        async with self.db.unit_of_work() as uow:
            defs = await self._defs(uow.session, "contact")
            row = await contacts.restore(uow, request.id, decision, defs=defs)
        return pb.RestoreContactResponse(contact=await self._contact_out(row))

    # ------------------------------------------------------------ custom fields

    async def CreateCustomField(self, request, context):
        await authorize(self.policies, "custom_field", "create")
        async with self.db.unit_of_work() as uow:
            row = await cf.create(uow, request.custom_field)
        return pb.CreateCustomFieldResponse(custom_field=cf.custom_field_pb(row))

    async def GetCustomField(self, request, context):
        await _any_read(self.policies)
        async with self.db.read() as session:
            row = await cf.get(session, request.id)
        return pb.GetCustomFieldResponse(custom_field=cf.custom_field_pb(row))

    async def ListCustomFields(self, request, context):
        await _any_read(self.policies)
        async with self.db.read() as session:
            rows, cursor = await cf.list_fields(session, request)
        return pb.ListCustomFieldsResponse(items=[cf.custom_field_pb(r) for r in rows], next_cursor=cursor)

    async def GetCustomFieldSchemas(self, request, context):
        await _any_read(self.policies)
        async with self.db.read() as session:
            schemas = await cf.schemas(session, caller().tenant_id)
        return pb.GetCustomFieldSchemasResponse(schemas=schemas)

    async def UpdateCustomField(self, request, context):
        await authorize(self.policies, "custom_field", "update")
        async with self.db.unit_of_work() as uow:
            row = await cf.update(uow, request)
        return pb.UpdateCustomFieldResponse(custom_field=cf.custom_field_pb(row))

    async def DeleteCustomField(self, request, context):
        await authorize(self.policies, "custom_field", "delete")
        async with self.db.unit_of_work() as uow:
            await cf.delete(uow, request.id, request.expected_version)
        return pb.DeleteCustomFieldResponse()

    # ------------------------------------------------------------ interactions and the timeline

    async def CreateInteraction(self, request, context):
        await authorize(self.policies, "interaction", "create")
        async with self.db.unit_of_work() as uow:
            await self._records_visible(
                uow.session, request.interaction.account_ids, request.interaction.contact_ids
            )
            row = await interactions.create(uow, request.interaction)
        read = await self._sees("interaction")
        return pb.CreateInteractionResponse(interaction=read.redact_message(interactions.interaction_pb(row)))

    async def GetInteraction(self, request, context):
        decision = await self._read_decision("interaction")
        async with self.db.read() as session:
            row = await interactions.get(session, request.id, decision)
        return pb.GetInteractionResponse(
            interaction=decision.redact_message(interactions.interaction_pb(row))
        )

    async def ListInteractions(self, request, context):
        decision = await self._read_decision("interaction")
        async with self.db.read() as session:
            rows, cursor = await interactions.list_interactions(session, request, decision)
        return pb.ListInteractionsResponse(
            items=[decision.redact_message(interactions.interaction_pb(r)) for r in rows], next_cursor=cursor
        )

    async def UpdateInteraction(self, request, context):
        decision = await authorize(self.policies, "interaction", "update")
        decision.check_writable(request.update_mask.paths)
        async with self.db.unit_of_work() as uow:
            i = request.interaction
            paths = set(request.update_mask.paths)
            await self._records_visible(
                uow.session,
                i.account_ids if "account_ids" in paths else [],
                i.contact_ids if "contact_ids" in paths else [],
            )
            row = await interactions.update(uow, request, decision)
        read = await self._sees("interaction")
        return pb.UpdateInteractionResponse(interaction=read.redact_message(interactions.interaction_pb(row)))

    async def DeleteInteraction(self, request, context):
        decision = await authorize(self.policies, "interaction", "delete")
        async with self.db.unit_of_work() as uow:
            await interactions.delete(uow, request.id, request.expected_version, decision)
        return pb.DeleteInteractionResponse()

    async def _records_visible(self, session, account_ids, contact_ids) -> None:  # type: ignore[no-untyped-def]
        """Logging on a record needs read access to it (outside the scope it does not exist for the caller)."""
        for obj, model, ids in (
            ("account", models.Account, account_ids),
            ("contact", models.Contact, contact_ids),
        ):
            if not ids:
                continue
            decision = await self._read_decision(obj)
            for n, rid in enumerate(ids):
                try:
                    await get_owned(session, model, obj, rid, decision=decision)
                except NotFound as exc:
                    raise InvalidArgument.for_field(f"{obj}_ids[{n}]", "no such record") from exc

    async def _timeline_out(self, rows, locale: str) -> list[pb.TimelineItem]:  # type: ignore[no-untyped-def]
        """Each item through the caller's read decision on the object it came from: interactions under
        "interaction", sales entries under their sales object's rules."""
        principal = caller()
        decisions = {
            obj: await self.policies.decide(principal, obj, "read")
            for obj in ("interaction", *sales_timeline.OBJECTS)
        }
        locale = "en" if locale == "en" else "zh-CN"
        items = []
        for r in rows:
            if isinstance(r, models.TimelineEntry):
                items.append(sales_timeline.item(r, decisions[r.object_type], locale))
            else:
                items.append(interactions.timeline_item(r, decisions["interaction"], locale))
        return items

    async def _interactions_shown(self):  # type: ignore[no-untyped-def]
        """The interactions the caller may read: the "interaction" permission and its data scope."""
        decision = await self.policies.decide(caller(), "interaction", "read")
        return visible(decision, models.Interaction) if decision.allowed else false()

    async def _sales_entries(self):  # type: ignore[no-untyped-def]
        """The sales entries the caller may see: per sales object, its read decision and data scope."""
        principal = caller()
        return sales_timeline.visible(
            {obj: await self.policies.decide(principal, obj, "read") for obj in sales_timeline.OBJECTS}
        )

    async def ListAccountTimeline(self, request, context):
        decision = await self._read_decision("account")
        async with self.db.read() as session:
            account = await accounts.get(session, request.id, decision, deleted=None)
            contact_ids: list[str] = []
            people = await self._sees("contact")
            if request.include_contacts and people.allowed:
                # Only the contacts the caller may read: the others' interactions stay out of the timeline.
                contact_ids = list(
                    (
                        await session.scalars(
                            select(models.Contact.id)
                            .where(
                                models.Contact.tenant_id == account.tenant_id,
                                models.Contact.account_ids.contains([account.id]),
                                visible(people, models.Contact),
                            )
                            .limit(1000)
                        )
                    ).all()
                )
            rows, cursor = await interactions.timeline(
                session,
                account_ids=[account.id],
                contact_ids=contact_ids,
                page_request=request.page,
                shown=await self._interactions_shown(),
                entries=await self._sales_entries(),
            )
        return pb.ListAccountTimelineResponse(
            items=await self._timeline_out(rows, request.locale), next_cursor=cursor
        )

    async def ListContactTimeline(self, request, context):
        decision = await self._read_decision("contact")
        async with self.db.read() as session:
            contact = await contacts.get(session, request.id, decision, deleted=None)
            rows, cursor = await interactions.timeline(
                session,
                account_ids=[],
                contact_ids=[contact.id],
                page_request=request.page,
                shown=await self._interactions_shown(),
            )
        return pb.ListContactTimelineResponse(
            items=await self._timeline_out(rows, request.locale), next_cursor=cursor
        )

    # ------------------------------------------------------------ relationships and the graph

    async def _record_decisions(self) -> dict[str, Decision]:
        principal = caller()
        return {obj: await self.policies.decide(principal, obj, "read") for obj in ("account", "contact")}

    async def CreateRelationshipType(self, request, context):
        await authorize(self.policies, "relationship_type", "create")
        async with self.db.unit_of_work() as uow:
            row = await relationships.create_type(uow, request.relationship_type)
        return pb.CreateRelationshipTypeResponse(relationship_type=relationships.type_pb(row))

    async def ListRelationshipTypes(self, request, context):
        await _any_read(self.policies)
        async with self.db.read() as session:
            items, cursor = await relationships.list_types(session, request.page)
        return pb.ListRelationshipTypesResponse(items=items, next_cursor=cursor)

    async def UpdateRelationshipType(self, request, context):
        await authorize(self.policies, "relationship_type", "update")
        async with self.db.unit_of_work() as uow:
            row = await relationships.update_type(uow, request)
        return pb.UpdateRelationshipTypeResponse(relationship_type=relationships.type_pb(row))

    async def DeleteRelationshipType(self, request, context):
        await authorize(self.policies, "relationship_type", "delete")
        async with self.db.unit_of_work() as uow:
            await relationships.delete_type(uow, request.id, request.expected_version)
        return pb.DeleteRelationshipTypeResponse()

    async def CreateRelationship(self, request, context):
        await authorize(self.policies, "relationship", "create")
        decisions = await self._record_decisions()
        async with self.db.unit_of_work() as uow:
            row = await relationships.create(uow, request, decisions)
        return pb.CreateRelationshipResponse(relationship=relationships.relationship_pb(row))

    async def GetRelationship(self, request, context):
        await self._read_decision("relationship")
        decisions = await self._record_decisions()
        async with self.db.read() as session:
            row = await relationships.get(session, request.id, decisions)
        return pb.GetRelationshipResponse(relationship=relationships.relationship_pb(row))

    async def ListRelationships(self, request, context):
        await self._read_decision("relationship")
        decisions = await self._record_decisions()
        async with self.db.read() as session:
            rows, cursor = await relationships.list_relationships(session, request, decisions)
        return pb.ListRelationshipsResponse(
            items=[relationships.relationship_pb(r) for r in rows], next_cursor=cursor
        )

    async def DeleteRelationship(self, request, context):
        await authorize(self.policies, "relationship", "delete")
        decisions = await self._record_decisions()
        async with self.db.unit_of_work() as uow:
            await relationships.delete(uow, request.id, request.expected_version, decisions)
        return pb.DeleteRelationshipResponse()

    async def GetAccountGraph(self, request, context):
        await self._read_decision("account")
        decisions = await self._record_decisions()
        async with self.db.read() as session:
            nodes, edges, cut = await relationships.neighbourhood(
                session, ("account", request.id), request.depth, list(request.types), decisions
            )
        return pb.GetAccountGraphResponse(nodes=nodes, edges=edges, truncated=cut)

    async def GetContactGraph(self, request, context):
        await self._read_decision("contact")
        decisions = await self._record_decisions()
        async with self.db.read() as session:
            nodes, edges, cut = await relationships.neighbourhood(
                session, ("contact", request.id), request.depth, list(request.types), decisions
            )
        return pb.GetContactGraphResponse(nodes=nodes, edges=edges, truncated=cut)

    async def FindPath(self, request, context):
        decisions = await self._record_decisions()
        start = (RECORD_TYPES.name(request.from_type), request.from_id)
        goal = (RECORD_TYPES.name(request.to_type), request.to_id)
        for field, node in (("from_type", start), ("to_type", goal)):
            if node[0] not in ("account", "contact"):
                raise InvalidArgument.for_field(field, "must be account or contact")
            if not decisions[node[0]].allowed:
                raise PermissionDenied(f"not allowed to read {node[0]}", reason="permission_denied")
        async with self.db.read() as session:
            nodes, edges = await relationships.shortest_path(
                session, start, goal, request.max_depth, list(request.types), decisions
            )
        return pb.FindPathResponse(nodes=nodes, edges=edges)

    # ------------------------------------------------------------ saved views

    async def CreateSavedView(self, request, context):
        await _any_read(self.policies)
        async with self.db.unit_of_work() as uow:
            row = await saved_views.create(uow, request.saved_view)
        return pb.CreateSavedViewResponse(saved_view=saved_views.saved_view_pb(row))

    async def GetSavedView(self, request, context):
        await _any_read(self.policies)
        async with self.db.read() as session:
            row = await saved_views.get(session, request.id)
        return pb.GetSavedViewResponse(saved_view=saved_views.saved_view_pb(row))

    async def ListSavedViews(self, request, context):
        await _any_read(self.policies)
        async with self.db.read() as session:
            rows, cursor = await saved_views.list_views(session, request)
        return pb.ListSavedViewsResponse(
            items=[saved_views.saved_view_pb(r) for r in rows], next_cursor=cursor
        )

    async def UpdateSavedView(self, request, context):
        await _any_read(self.policies)
        async with self.db.unit_of_work() as uow:
            row = await saved_views.update(uow, request)
        return pb.UpdateSavedViewResponse(saved_view=saved_views.saved_view_pb(row))

    async def DeleteSavedView(self, request, context):
        await _any_read(self.policies)
        async with self.db.unit_of_work() as uow:
            await saved_views.delete(uow, request.id, request.expected_version)
        return pb.DeleteSavedViewResponse()

    # ------------------------------------------------------------ the recycle bin

    async def GetRecycleBinSettings(self, request, context):
        await _any_read(self.policies)
        async with self.db.read() as session:
            answer = await recycle_bin.get_settings(session, caller().tenant_id)
        return pb.GetRecycleBinSettingsResponse(recycle_bin_settings=answer)

    async def UpdateRecycleBinSettings(self, request, context):
        await authorize(self.policies, "recycle_bin", "update")
        async with self.db.unit_of_work() as uow:
            answer = await recycle_bin.set_retention(uow, request.retention_days, request.expected_version)
        return pb.UpdateRecycleBinSettingsResponse(recycle_bin_settings=answer)

    async def _purge(self, kind: str, record_id: str) -> None:
        decision = await authorize(self.policies, kind, "delete")
        await authorize(self.policies, "recycle_bin", "delete")
        async with self.db.unit_of_work() as uow:
            await recycle_bin.purge_now(uow, kind, record_id, decision)

    async def PurgeAccount(self, request, context):
        await self._purge("account", request.id)
        return pb.PurgeAccountResponse()

    async def PurgeContact(self, request, context):
        await self._purge("contact", request.id)
        return pb.PurgeContactResponse()

    # ------------------------------------------------------------ search

    async def Search(self, request, context):
        await _any_read(self.policies)
        decisions = await self._record_decisions()
        async with self.db.read() as session:
            hits, cursor = await finder.find(session, request, decisions)
        return pb.SearchResponse(items=hits, next_cursor=cursor)


def _with_duplicates(message, row):  # type: ignore[no-untyped-def]
    """The answer of a create or an update: the record, with what "warn" duplicate rules found on it (already
    concealed for the caller by the rules' check). Only these answers carry `duplicates`."""
    message.duplicates.extend(dedup.warnings_of(row))
    return message


def _needs_defs(query: str, filters: list[str], sort: str) -> bool:
    """Custom field definitions are loaded only when the list touches custom fields or searches."""
    return (
        bool(query.strip())
        or "custom_fields." in sort
        or any(f.startswith("custom_fields.") for f in filters)
    )


def check_visible(decision: Decision, field: str) -> None:
    if field in decision.hidden:
        raise PermissionDenied(f"field {field} is hidden from you", reason="field_hidden")


async def _any_read(policies: PolicyCache) -> None:
    """Custom field definitions are readable by anyone who may read accounts or contacts."""
    principal = caller()
    for obj in ("account", "contact"):
        if (await policies.decide(principal, obj, "read")).allowed:
            return
    raise PermissionDenied("not allowed to read accounts or contacts", reason="permission_denied")
