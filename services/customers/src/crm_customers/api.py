"""The gRPC transport of customers: authorize (object, action, data scope, field rules), open the unit of
work or read session, call the domain, convert and redact. No business rules live here."""

from __future__ import annotations

import grpc
from crm.customers.v1 import customers_pb2 as pb
from crm.customers.v1 import customers_pb2_grpc
from crm.identity.v1 import identity_pb2
from crm_kit import grpc_client
from crm_kit.db import Database
from crm_kit.errors import PermissionDenied
from crm_kit.policy import Decision, PolicyCache

from crm_customers import models
from crm_customers.domain import accounts, contacts, saved_views
from crm_customers.domain import custom_fields as cf
from crm_customers.domain.common import authorize, caller

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
        decision.check_writable(accounts.given_fields(request.account))
        async with self.db.unit_of_work() as uow:
            defs = await self._defs(uow.session, "account")
            row = await accounts.create(uow, request.account, defs=defs, department_of=self.department_of)
        return pb.CreateAccountResponse(account=await self._account_out(row, rollups=False))

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
            counts = await accounts.direct_counts(session, caller().tenant_id, [r.id for r in rows])
        items = [
            accounts.redact(decision, accounts.account_pb(r, subsidiaries=counts.get(r.id, 0))) for r in rows
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
        decision.check_writable(accounts.writable_paths(paths, request.account))
        async with self.db.unit_of_work() as uow:
            defs = await self._defs(uow.session, "account")
            row = await accounts.update(uow, request, decision, defs=defs, department_of=self.department_of)
        return pb.UpdateAccountResponse(account=await self._account_out(row))

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
        decision.check_writable(contacts.given_fields(request.contact))
        async with self.db.unit_of_work() as uow:
            defs = await self._defs(uow.session, "contact")
            row = await contacts.create(uow, request.contact, defs=defs, department_of=self.department_of)
        return pb.CreateContactResponse(contact=await self._contact_out(row))

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
        decision.check_writable(contacts.writable_paths(paths, request.contact))
        async with self.db.unit_of_work() as uow:
            defs = await self._defs(uow.session, "contact")
            row = await contacts.update(uow, request, decision, defs=defs, department_of=self.department_of)
        return pb.UpdateContactResponse(contact=await self._contact_out(row))

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
