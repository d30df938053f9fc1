"""Tasks with reminders and @mentions, follow-up records, and the forecast with its targets."""

from __future__ import annotations

import datetime as dt

import grpc
from crm.sales.v1 import activities_pb2 as apb
from crm.sales.v1 import contracts_pb2 as cpb
from crm.sales.v1 import forecasts_pb2 as fpb
from crm.sales.v1 import pipelines_pb2 as ppb
from crm_kit.errors import from_rpc_error
from google.protobuf import field_mask_pb2, timestamp_pb2

from tests.identity.helpers import rpc_error
from tests.sales.helpers import new_account, team


def ts(when: dt.datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when)
    return out


async def test_a_task_reminds_its_assignee_once_and_tells_everyone_mentioned(
    identity, activities, pipelines, clock, outbox
):
    company, (rep, colleague) = await team(identity, 2)
    await pipelines.CreatePipeline(ppb.CreatePipelineRequest(name="P"), metadata=company.md)
    opp = (
        await pipelines.CreateOpportunity(ppb.CreateOpportunityRequest(name="年度框架协议"), metadata=rep.md)
    ).opportunity
    now = clock.now()
    task = (
        await activities.CreateTask(
            apb.CreateTaskRequest(
                title="准备技术交流材料",
                related_type="opportunity",
                related_id=opp.id,
                due_at=ts(now + dt.timedelta(days=2)),
                remind_at=ts(now + dt.timedelta(days=1)),
                mentioned_user_ids=[colleague.id],
                priority="high",
            ),
            metadata=rep.md,
        )
    ).task
    assert task.assignee_id == rep.id and task.status == apb.TASK_STATUS_OPEN
    run = await activities.RunTaskReminders(
        apb.RunTaskRemindersRequest(now=ts(now + dt.timedelta(hours=23))), metadata=company.md
    )
    assert run.reminded == 0
    run = await activities.RunTaskReminders(
        apb.RunTaskRemindersRequest(now=ts(now + dt.timedelta(days=1, minutes=1))), metadata=company.md
    )
    assert run.reminded == 1
    run = await activities.RunTaskReminders(
        apb.RunTaskRemindersRequest(now=ts(now + dt.timedelta(days=3))), metadata=company.md
    )
    assert run.reminded == 0
    events = await outbox(task.id)
    types = [e.type.rsplit(".", 1)[-1] for e in events]
    assert types == ["TaskCreated", "UserMentioned", "TaskReminder"]
    assert events[0].actor.id == rep.id and events[2].actor.id == "system"

    # Own data scope: the colleague was mentioned, but the task is the rep's.
    assert (
        await rpc_error(activities.GetTask(apb.GetTaskRequest(id=task.id), metadata=colleague.md))
    ).code() == (grpc.StatusCode.NOT_FOUND)
    done = (await activities.CompleteTask(apb.CompleteTaskRequest(id=task.id), metadata=rep.md)).task
    assert done.status == apb.TASK_STATUS_DONE and done.completed_at.seconds
    again = await rpc_error(activities.CompleteTask(apb.CompleteTaskRequest(id=task.id), metadata=rep.md))
    assert from_rpc_error(again).reason == "task_closed"
    overdue = (
        await activities.ListTasks(
            apb.ListTasksRequest(due_before=ts(now + dt.timedelta(days=5))), metadata=rep.md
        )
    ).items
    assert overdue == []  # done tasks are not due


async def test_follow_up_records_on_an_account_reach_the_people_mentioned(
    identity, activities, outbox, customers_channel
):
    _, (rep, manager) = await team(identity, 2)
    account = await new_account(customers_channel, rep.md, "杭州西湖数据有限公司")
    note = (
        await activities.CreateActivity(
            apb.CreateActivityRequest(
                related_type="account",
                related_id=account,
                kind="visit",
                content="拜访客户CTO，对方关注数据安全合规，@经理 请支持",
                mentioned_user_ids=[manager.id],
            ),
            metadata=rep.md,
        )
    ).activity
    assert (note.kind, note.author_id) == ("visit", rep.id)
    seen_by_manager = (
        await activities.ListActivities(apb.ListActivitiesRequest(related_id=account), metadata=manager.md)
    ).items
    assert [a.id for a in seen_by_manager] == [note.id]  # mentioned, so visible
    mention = [e for e in await outbox(note.id) if e.type.endswith("UserMentioned")]
    assert len(mention) == 1
    bad = await rpc_error(
        activities.CreateActivity(
            apb.CreateActivityRequest(related_type="planet", kind="smoke"), metadata=rep.md
        )
    )
    assert {f.field for f in from_rpc_error(bad).field_errors} == {
        "related_type",
        "related_id",
        "kind",
        "content",
    }


async def test_the_forecast_weighs_the_pipeline_and_counts_collection_against_targets(
    identity, pipelines, contracts, forecasts, clock
):
    company, (rep,) = await team(identity, 1)
    p = (await pipelines.CreatePipeline(ppb.CreatePipelineRequest(name="直销"), metadata=company.md)).pipeline
    qualify, _, proposal, negotiation, won, _ = p.stages
    period_start = dt.date(2030, 3, 1)
    for name, amount, stage, close, category in (
        ("A", "100000.00", proposal, "2030-03-15", ppb.FORECAST_CATEGORY_COMMIT),
        ("B", "50000.00", qualify, "2030-03-20", ppb.FORECAST_CATEGORY_BEST_CASE),
        ("C", "80000.00", negotiation, "2030-03-31", ppb.FORECAST_CATEGORY_PIPELINE),
        ("D", "999999.00", negotiation, "2030-04-01", ppb.FORECAST_CATEGORY_COMMIT),  # next month
    ):
        await pipelines.CreateOpportunity(
            ppb.CreateOpportunityRequest(
                name=name,
                pipeline_id=p.id,
                stage_id=stage.id,
                amount=amount,
                close_date=close,
                forecast_category=category,
            ),
            metadata=rep.md,
        )
    clock.advance(days=(period_start - clock.now().date()).days + 5)
    deal = (
        await pipelines.CreateOpportunity(
            ppb.CreateOpportunityRequest(
                name="E", pipeline_id=p.id, amount="30000.00", close_date="2030-03-05"
            ),
            metadata=rep.md,
        )
    ).opportunity
    await pipelines.MoveOpportunityStage(
        ppb.MoveOpportunityStageRequest(id=deal.id, stage_id=won.id), metadata=rep.md
    )

    c = (
        await contracts.CreateContract(
            cpb.CreateContractRequest(amount="90000.00", currency="CNY"),
            metadata=rep.md,
        )
    ).contract
    await contracts.SubmitContract(cpb.SubmitContractRequest(id=c.id), metadata=rep.md)
    plan = (
        await contracts.CreatePaymentPlan(
            cpb.CreatePaymentPlanRequest(
                contract_id=c.id,
                instalments=[
                    cpb.InstalmentInput(due_date="2030-02-10", amount="20000.00"),
                    cpb.InstalmentInput(due_date="2030-03-10", amount="30000.00"),
                    cpb.InstalmentInput(due_date="2030-04-10", amount="40000.00"),
                ],
            ),
            metadata=rep.md,
        )
    ).plan
    await contracts.CreatePayment(
        cpb.CreatePaymentRequest(instalment_id=plan.instalments[1].id, amount="12000.00"), metadata=rep.md
    )
    await forecasts.SetForecastTarget(
        fpb.SetForecastTargetRequest(
            target=fpb.ForecastTarget(
                period="2030-03",
                owner_id=rep.id,
                currency="CNY",
                revenue_target="200000",
                collection_target="60000",
            )
        ),
        metadata=company.md,
    )
    answer = await forecasts.GetForecast(
        fpb.GetForecastRequest(period="2030-03", owner_id=rep.id), metadata=company.md
    )
    assert (answer.start_date, answer.end_date) == ("2030-03-01", "2030-03-31")
    (f,) = answer.figures
    assert f.open_count == 3 and f.pipeline_amount == "230000.00"
    # 100000 × 50 % + 50000 × 10 % + 80000 × 75 %
    assert f.weighted_amount == "115000.00"
    assert (f.won_amount, f.commit_amount, f.best_case_amount) == ("30000.00", "130000.00", "180000.00")
    assert (f.revenue_target, f.revenue_gap) == ("200000.00", "70000.00")
    assert (f.collection_due, f.collected, f.overdue_before_period) == ("30000.00", "12000.00", "20000.00")
    assert f.collection_expected == "38000.00" and f.collection_gap == "30000.00"

    quarter = await forecasts.GetForecast(fpb.GetForecastRequest(period="2030-Q2"), metadata=company.md)
    assert quarter.figures[0].commit_amount == "999999.00"
    bad = await rpc_error(
        forecasts.GetForecast(fpb.GetForecastRequest(period="2030-13"), metadata=company.md)
    )
    assert [x.field for x in from_rpc_error(bad).field_errors] == ["period"]
    # A rep sees only their own figures; another tenant sees none of them.
    beta, _ = await team(identity, 0, name="Delta Ltd")
    other = await forecasts.GetForecast(fpb.GetForecastRequest(period="2030-03"), metadata=beta.md)
    assert list(other.figures) == []
    mask = field_mask_pb2.FieldMask(paths=["collection_target"])
    updated = (
        await forecasts.SetForecastTarget(
            fpb.SetForecastTargetRequest(
                target=fpb.ForecastTarget(
                    period="2030-03", owner_id=rep.id, currency="CNY", collection_target="1"
                ),
                update_mask=mask,
            ),
            metadata=company.md,
        )
    ).target
    assert (updated.revenue_target, updated.collection_target, updated.version) == ("200000.00", "1.00", 2)
