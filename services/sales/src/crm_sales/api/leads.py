from __future__ import annotations

from crm.sales.v1 import leads_pb2 as pb
from crm.sales.v1 import leads_pb2_grpc
from crm_kit.db import Database
from crm_kit.policy import PolicyCache

from crm_sales import models
from crm_sales.clock import Clock
from crm_sales.domain import forms, leads, pools, rules
from crm_sales.domain.common import People, authorize, caller, enum_name, from_ts
from crm_sales.domain.conversion import Converter
from crm_sales.settings import SalesSettings

SERVICE = pb.DESCRIPTOR.services_by_name["LeadsService"]
PUBLIC_METHODS = {f"/{SERVICE.full_name}/{m}" for m in ("GetPublicWebForm", "SubmitWebForm")}


class LeadsApi(leads_pb2_grpc.LeadsServiceServicer):
    def __init__(
        self,
        *,
        db: Database,
        policies: PolicyCache,
        clock: Clock,
        people: People,
        settings: SalesSettings,
        converter: Converter,
    ):
        self.db = db
        self.policies = policies
        self.clock = clock
        self.people = people
        self.settings = settings
        self.converter = converter

    async def _lead(self, lead: models.Lead) -> pb.Lead:
        decision = await self.policies.decide(caller(), "lead", "read")
        return leads.lead_pb(lead, decision)

    # ------------------------------------------------------------ leads

    async def CreateLead(self, request, context):
        await authorize(self.policies, "lead", "create")
        principal = caller()
        values = {f: getattr(request, f) for f in leads.TEXT_FIELDS}
        async with self.db.unit_of_work() as uow:
            lead = await leads.create(
                uow,
                values=values,
                source=enum_name(leads.SOURCE, request.source)
                or ("api" if principal.is_api_key else "manual"),
                attributes=dict(request.attributes),
                pool_id=request.pool_id,
                owner_id=request.owner_id,
                campaign_id=request.campaign_id,
                fallback_owner=None if principal.is_api_key else principal.actor_id,
                people=self.people,
                now=self.clock.now(),
            )
            reading = await self.policies.decide(principal, "lead", "read")
            duplicates = await leads.open_duplicates(uow.session, lead, reading)
        answer = leads.lead_pb(lead, reading)
        answer.duplicates.extend(duplicates)
        return pb.CreateLeadResponse(lead=answer)

    async def GetLead(self, request, context):
        decision = await authorize(self.policies, "lead", "read")
        async with self.db.read() as session:
            lead = await leads.get(session, decision, request.id)
        return pb.GetLeadResponse(lead=leads.lead_pb(lead, decision))

    async def ListLeads(self, request, context):
        decision = await authorize(self.policies, "lead", "read")
        async with self.db.read() as session:
            rows, cursor = await leads.list_leads(session, decision, request)
        return pb.ListLeadsResponse(items=[leads.lead_pb(r, decision) for r in rows], next_cursor=cursor)

    async def UpdateLead(self, request, context):
        decision = await authorize(self.policies, "lead", "update")
        decision.check_writable(request.update_mask.paths)
        async with self.db.unit_of_work() as uow:
            lead = await leads.update_lead(uow, decision, request)
            reading = await self.policies.decide(caller(), "lead", "read")
            duplicates = await leads.open_duplicates(uow.session, lead, reading)
        answer = leads.lead_pb(lead, reading)
        answer.duplicates.extend(duplicates)
        return pb.UpdateLeadResponse(lead=answer)

    async def DeleteLead(self, request, context):
        decision = await authorize(self.policies, "lead", "delete")
        async with self.db.unit_of_work() as uow:
            await leads.delete(uow, decision, request.id, request.expected_version)
        return pb.DeleteLeadResponse()

    async def CreateLeadFollowUp(self, request, context):
        decision = await authorize(self.policies, "lead", "update")
        async with self.db.unit_of_work() as uow:
            follow, lead = await leads.add_follow_up(uow, decision, request, now=self.clock.now())
        return pb.CreateLeadFollowUpResponse(
            follow_up=leads.follow_up_pb(follow), lead=await self._lead(lead)
        )

    async def ListLeadFollowUps(self, request, context):
        decision = await authorize(self.policies, "lead", "read")
        async with self.db.read() as session:
            rows, cursor = await leads.list_follow_ups(session, decision, request)
        return pb.ListLeadFollowUpsResponse(items=[leads.follow_up_pb(r) for r in rows], next_cursor=cursor)

    # ------------------------------------------------------------ the pool

    async def ClaimLead(self, request, context):
        decision = await authorize(self.policies, "lead", "read")
        async with self.db.unit_of_work() as uow:
            lead = await leads.claim(uow, decision, request.id, now=self.clock.now())
        return pb.ClaimLeadResponse(lead=await self._lead(lead))

    async def AssignLead(self, request, context):
        decision = await authorize(self.policies, "lead", "read")
        can_assign = await self.policies.decide(caller(), "lead", "assign")
        async with self.db.unit_of_work() as uow:
            lead = await leads.assign(
                uow, decision, can_assign, request, people=self.people, now=self.clock.now()
            )
        return pb.AssignLeadResponse(lead=await self._lead(lead))

    async def ReleaseLead(self, request, context):
        decision = await authorize(self.policies, "lead", "read")
        can_assign = await self.policies.decide(caller(), "lead", "assign")
        async with self.db.unit_of_work() as uow:
            lead = await leads.release(uow, decision, can_assign, request, now=self.clock.now())
        return pb.ReleaseLeadResponse(lead=await self._lead(lead))

    async def ListLeadHistory(self, request, context):
        decision = await authorize(self.policies, "lead", "read")
        async with self.db.read() as session:
            rows, cursor = await leads.history(session, decision, request)
        return pb.ListLeadHistoryResponse(items=[leads.move_pb(r) for r in rows], next_cursor=cursor)

    async def ConvertLead(self, request, context):
        decision = await authorize(self.policies, "lead", "update")
        result = await self.converter.convert(decision, request, now=self.clock.now())
        return pb.ConvertLeadResponse(
            lead=await self._lead(result.lead),
            account_id=result.account_id,
            contact_id=result.contact_id,
            opportunity_id=result.opportunity_id,
            merged_into_existing_account=result.merged,
        )

    async def RunLeadReclaim(self, request, context):
        await authorize(self.policies, "lead", "assign")
        now = from_ts(request.now, request.HasField("now")) or self.clock.now()
        reclaimed = warned = 0
        while True:
            async with self.db.unit_of_work() as uow:
                r, w = await leads.reclaim(uow, now=now, tenant_id=caller().tenant_id)
            reclaimed, warned = reclaimed + r, warned + w
            if r + w < 500:
                break
        return pb.RunLeadReclaimResponse(reclaimed=reclaimed, warned=warned)

    # ------------------------------------------------------------ pools

    async def CreateLeadPool(self, request, context):
        await authorize(self.policies, "lead_pool", "create")
        async with self.db.unit_of_work() as uow:
            pool = await pools.create(uow, request, people=self.people)
            message = await pools.pool_pb(uow.session, pool)
        return pb.CreateLeadPoolResponse(pool=message)

    async def GetLeadPool(self, request, context):
        await authorize(self.policies, "lead_pool", "read")
        async with self.db.read() as session:
            pool = await pools.get(session, request.id)
            return pb.GetLeadPoolResponse(pool=await pools.pool_pb(session, pool))

    async def ListLeadPools(self, request, context):
        await authorize(self.policies, "lead_pool", "read")
        async with self.db.read() as session:
            rows, cursor = await pools.list_pools(session, request)
            items = [await pools.pool_pb(session, p) for p in rows]
        return pb.ListLeadPoolsResponse(items=items, next_cursor=cursor)

    async def UpdateLeadPool(self, request, context):
        await authorize(self.policies, "lead_pool", "update")
        async with self.db.unit_of_work() as uow:
            pool = await pools.update(uow, request, people=self.people)
            message = await pools.pool_pb(uow.session, pool)
        return pb.UpdateLeadPoolResponse(pool=message)

    async def DeleteLeadPool(self, request, context):
        await authorize(self.policies, "lead_pool", "delete")
        async with self.db.unit_of_work() as uow:
            await pools.delete_pool(uow, request.id, request.expected_version)
        return pb.DeleteLeadPoolResponse()

    # ------------------------------------------------------------ rules

    async def CreateScoringRule(self, request, context):
        await authorize(self.policies, "lead_rule", "create")
        async with self.db.unit_of_work() as uow:
            rule = await rules.create_scoring(uow, request)
        return pb.CreateScoringRuleResponse(rule=rules.scoring_pb(rule))

    async def ListScoringRules(self, request, context):
        await authorize(self.policies, "lead_rule", "read")
        async with self.db.read() as session:
            rows, cursor = await rules.list_rules(session, models.ScoringRule, request)
        return pb.ListScoringRulesResponse(items=[rules.scoring_pb(r) for r in rows], next_cursor=cursor)

    async def DeleteScoringRule(self, request, context):
        await authorize(self.policies, "lead_rule", "delete")
        async with self.db.unit_of_work() as uow:
            await rules.delete_rule(uow, models.ScoringRule, "scoring", request.id)
        return pb.DeleteScoringRuleResponse()

    async def CreateAssignmentRule(self, request, context):
        await authorize(self.policies, "lead_rule", "create")
        async with self.db.unit_of_work() as uow:
            rule = await rules.create_assignment(uow, request)
        return pb.CreateAssignmentRuleResponse(rule=rules.assignment_pb(rule))

    async def ListAssignmentRules(self, request, context):
        await authorize(self.policies, "lead_rule", "read")
        async with self.db.read() as session:
            rows, cursor = await rules.list_rules(session, models.AssignmentRule, request)
        return pb.ListAssignmentRulesResponse(
            items=[rules.assignment_pb(r) for r in rows], next_cursor=cursor
        )

    async def DeleteAssignmentRule(self, request, context):
        await authorize(self.policies, "lead_rule", "delete")
        async with self.db.unit_of_work() as uow:
            await rules.delete_rule(uow, models.AssignmentRule, "assignment", request.id)
        return pb.DeleteAssignmentRuleResponse()

    # ------------------------------------------------------------ web forms

    async def CreateWebForm(self, request, context):
        await authorize(self.policies, "web_form", "create")
        async with self.db.unit_of_work() as uow:
            form = await forms.create(uow, request)
        return pb.CreateWebFormResponse(form=forms.form_pb(form))

    async def GetWebForm(self, request, context):
        await authorize(self.policies, "web_form", "read")
        async with self.db.read() as session:
            form = await forms.get(session, request.id)
        return pb.GetWebFormResponse(form=forms.form_pb(form))

    async def ListWebForms(self, request, context):
        await authorize(self.policies, "web_form", "read")
        async with self.db.read() as session:
            rows, cursor = await forms.list_forms(session, request)
        return pb.ListWebFormsResponse(items=[forms.form_pb(f) for f in rows], next_cursor=cursor)

    async def UpdateWebForm(self, request, context):
        await authorize(self.policies, "web_form", "update")
        async with self.db.unit_of_work() as uow:
            form = await forms.update(uow, request)
        return pb.UpdateWebFormResponse(form=forms.form_pb(form))

    async def GetPublicWebForm(self, request, context):
        async with self.db.read() as session:
            form = await forms.by_token(session, request.token)
        return pb.GetPublicWebFormResponse(
            title=form.title or form.name,
            fields=list(form.fields),
            honeypot_field=form.honeypot_field,
            started_token=forms.sign_start(self.settings.form_secret, form.token, self.clock.now()),
        )

    async def SubmitWebForm(self, request, context):
        async with self.db.unit_of_work() as uow:
            accepted, message = await forms.submit(
                uow, request, secret=self.settings.form_secret, now=self.clock.now()
            )
        del accepted  # spam is answered exactly like a success
        return pb.SubmitWebFormResponse(accepted=True, message=message)
