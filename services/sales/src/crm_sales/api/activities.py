from __future__ import annotations

from crm.sales.v1 import activities_pb2 as pb
from crm.sales.v1 import activities_pb2_grpc, forecasts_pb2_grpc
from crm.sales.v1 import forecasts_pb2 as fpb
from crm_kit.db import Database
from crm_kit.policy import PolicyCache

from crm_sales.clock import Clock
from crm_sales.domain import activities, forecasts
from crm_sales.domain.common import People, authorize, caller, from_ts

SERVICE = pb.DESCRIPTOR.services_by_name["ActivitiesService"]
FORECASTS = fpb.DESCRIPTOR.services_by_name["ForecastsService"]


class ActivitiesApi(activities_pb2_grpc.ActivitiesServiceServicer):
    def __init__(self, *, db: Database, policies: PolicyCache, clock: Clock, people: People):
        self.db = db
        self.policies = policies
        self.clock = clock
        self.people = people

    async def CreateTask(self, request, context):
        await authorize(self.policies, "task", "create")
        async with self.db.unit_of_work() as uow:
            t = await activities.create_task(uow, request, people=self.people)
        read = await self.policies.decide(caller(), "task", "read")
        return pb.CreateTaskResponse(task=read.redact_message(activities.task_pb(t)))

    async def GetTask(self, request, context):
        decision = await authorize(self.policies, "task", "read")
        async with self.db.read() as session:
            t = await activities.get_task(session, decision, request.id)
        return pb.GetTaskResponse(task=decision.redact_message(activities.task_pb(t)))

    async def ListTasks(self, request, context):
        decision = await authorize(self.policies, "task", "read")
        async with self.db.read() as session:
            rows, cursor = await activities.list_tasks(session, decision, request)
        return pb.ListTasksResponse(
            items=[decision.redact_message(activities.task_pb(t)) for t in rows], next_cursor=cursor
        )

    async def UpdateTask(self, request, context):
        decision = await authorize(self.policies, "task", "update")
        decision.check_writable(request.update_mask.paths)
        async with self.db.unit_of_work() as uow:
            t = await activities.update_task(uow, decision, request, people=self.people)
        read = await self.policies.decide(caller(), "task", "read")
        return pb.UpdateTaskResponse(task=read.redact_message(activities.task_pb(t)))

    async def CompleteTask(self, request, context):
        decision = await authorize(self.policies, "task", "update")
        async with self.db.unit_of_work() as uow:
            t = await activities.complete_task(uow, decision, request.id, now=self.clock.now())
        read = await self.policies.decide(caller(), "task", "read")
        return pb.CompleteTaskResponse(task=read.redact_message(activities.task_pb(t)))

    async def CreateActivity(self, request, context):
        await authorize(self.policies, "task", "create")
        async with self.db.unit_of_work() as uow:
            a = await activities.create_activity(uow, request, people=self.people, now=self.clock.now())
        return pb.CreateActivityResponse(activity=activities.activity_pb(a))

    async def ListActivities(self, request, context):
        decision = await authorize(self.policies, "task", "read")
        async with self.db.read() as session:
            rows, cursor = await activities.list_activities(session, decision, request)
        return pb.ListActivitiesResponse(items=[activities.activity_pb(a) for a in rows], next_cursor=cursor)

    async def RunTaskReminders(self, request, context):
        await authorize(self.policies, "task", "update")
        now = from_ts(request.now, request.HasField("now")) or self.clock.now()
        total = 0
        while True:
            async with self.db.unit_of_work() as uow:
                n = await activities.send_reminders(uow, now=now, tenant_id=caller().tenant_id)
            total += n
            if n < 500:
                return pb.RunTaskRemindersResponse(reminded=total)


class ForecastsApi(forecasts_pb2_grpc.ForecastsServiceServicer):
    def __init__(self, *, db: Database, policies: PolicyCache):
        self.db = db
        self.policies = policies

    async def GetForecast(self, request, context):
        await authorize(self.policies, "forecast", "read")
        principal = caller()
        opp = await self.policies.decide(principal, "opportunity", "read")
        pay = await self.policies.decide(principal, "payment", "read")
        team = None
        if request.department_id:
            team = await forecasts.team(self.policies, principal.tenant_id, request.department_id)
        async with self.db.read() as session:
            return await forecasts.forecast(session, opp, pay, request, team=team)

    async def SetForecastTarget(self, request, context):
        await authorize(self.policies, "forecast", "update")
        async with self.db.unit_of_work() as uow:
            t = await forecasts.set_target(uow, request)
        return fpb.SetForecastTargetResponse(target=forecasts.target_pb(t))
