"""Pipelines, opportunities and the kanban board: exact decimal totals, required fields per stage, time in
stage and stage history, won and lost."""

from __future__ import annotations

import grpc
from crm.sales.v1 import pipelines_pb2 as pb
from crm_kit.errors import from_rpc_error
from google.protobuf import field_mask_pb2

from tests.identity.helpers import rpc_error
from tests.sales.helpers import team


async def test_a_pipeline_without_stages_gets_the_default_stages_in_chinese_and_english(identity, pipelines):
    company, _ = await team(identity, 0)
    p = (await pipelines.CreatePipeline(pb.CreatePipelineRequest(name="直销"), metadata=company.md)).pipeline
    assert [s.name for s in p.stages] == ["初步接洽", "需求分析", "方案报价", "商务谈判", "赢单", "输单"]
    assert [s.labels["en"] for s in p.stages][:2] == ["Qualification", "Needs analysis"]
    assert [s.probability for s in p.stages] == [10, 25, 50, 75, 100, 0]
    assert p.stages[4].kind == pb.STAGE_KIND_WON and p.stages[5].kind == pb.STAGE_KIND_LOST


async def test_board_totals_are_exact_decimals_per_currency_with_weighted_amounts(identity, pipelines):
    company, (rep,) = await team(identity, 1)
    p = (await pipelines.CreatePipeline(pb.CreatePipelineRequest(name="渠道"), metadata=company.md)).pipeline
    first, proposal = p.stages[0], p.stages[2]
    for name, amount, currency, stage in (
        ("A", "0.10", "CNY", first),
        ("B", "0.20", "CNY", first),
        ("C", "100000.05", "CNY", proposal),
        ("D", "999.99", "USD", proposal),
    ):
        await pipelines.CreateOpportunity(
            pb.CreateOpportunityRequest(
                name=name,
                pipeline_id=p.id,
                stage_id=stage.id,
                amount=amount,
                currency=currency,
                owner_id=rep.id,
            ),
            metadata=company.md,
        )
    board = await pipelines.GetBoard(pb.GetBoardRequest(id=p.id), metadata=company.md)
    cols = {c.stage.id: c for c in board.columns}
    assert [c.stage.name for c in board.columns][:3] == ["初步接洽", "需求分析", "方案报价"]
    (cny,) = cols[first.id].totals
    assert (cny.amount, cny.weighted_amount, cny.count) == ("0.30", "0.03", 2)  # never 0.30000000000000004
    totals = {t.currency: (t.amount, t.weighted_amount) for t in cols[proposal.id].totals}
    assert totals == {"CNY": ("100000.05", "50000.03"), "USD": ("999.99", "500.00")}
    assert cols[proposal.id].count == 2 and len(cols[proposal.id].cards) == 2
    assert cols[p.stages[1].id].count == 0
    # A rep with own scope sees own cards only: all four are the rep's.
    mine = await pipelines.GetBoard(pb.GetBoardRequest(id=p.id, cards_per_stage=1), metadata=rep.md)
    assert sum(c.count for c in mine.columns) == 4 and max(len(c.cards) for c in mine.columns) == 1


async def test_money_must_be_an_exact_decimal(identity, pipelines):
    company, _ = await team(identity, 0)
    await pipelines.CreatePipeline(pb.CreatePipelineRequest(name="默认"), metadata=company.md)
    err = await rpc_error(
        pipelines.CreateOpportunity(
            pb.CreateOpportunityRequest(name="x", amount="1e400", currency="人民币", close_date="2026-13-01"),
            metadata=company.md,
        )
    )
    assert {f.field for f in from_rpc_error(err).field_errors} == {"amount", "currency", "close_date"}
    err = await rpc_error(
        pipelines.CreateOpportunity(
            pb.CreateOpportunityRequest(name="x", amount="12.345"), metadata=company.md
        )
    )
    assert [f.field for f in from_rpc_error(err).field_errors] == ["amount"]


async def test_stage_moves_check_required_fields_keep_history_and_close_won_or_lost(
    identity, pipelines, clock
):
    company, _ = await team(identity, 0)
    stages = [
        pb.StageInput(name="线索确认", probability=10),
        pb.StageInput(name="报价", probability=60, required_fields=["amount", "close_date"]),
        pb.StageInput(name="赢单", kind=pb.STAGE_KIND_WON),
        pb.StageInput(name="输单", kind=pb.STAGE_KIND_LOST),
    ]
    p = (
        await pipelines.CreatePipeline(
            pb.CreatePipelineRequest(name="项目制", stages=stages), metadata=company.md
        )
    ).pipeline
    qualify, quote, _won, lost = p.stages
    o = (
        await pipelines.CreateOpportunity(
            pb.CreateOpportunityRequest(name="智慧工厂项目", pipeline_id=p.id, competitors=["西门子"]),
            metadata=company.md,
        )
    ).opportunity
    assert o.stage_id == qualify.id and o.probability == 10

    err = await rpc_error(
        pipelines.MoveOpportunityStage(
            pb.MoveOpportunityStageRequest(id=o.id, stage_id=quote.id), metadata=company.md
        )
    )
    assert {f.field for f in from_rpc_error(err).field_errors} == {"amount", "close_date"}
    o = (
        await pipelines.UpdateOpportunity(
            pb.UpdateOpportunityRequest(
                id=o.id,
                opportunity=pb.Opportunity(
                    amount="880000.00", close_date="2026-12-31", next_step="提交技术方案"
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["amount", "close_date", "next_step"]),
            ),
            metadata=company.md,
        )
    ).opportunity
    clock.advance(hours=5)
    o = (
        await pipelines.MoveOpportunityStage(
            pb.MoveOpportunityStageRequest(id=o.id, stage_id=quote.id, expected_version=o.version),
            metadata=company.md,
        )
    ).opportunity
    assert (o.probability, o.status) == (60, pb.OPPORTUNITY_STATUS_OPEN)
    clock.advance(hours=2)
    board = await pipelines.GetBoard(pb.GetBoardRequest(id=p.id), metadata=company.md)
    (card,) = [c for col in board.columns for c in col.cards]
    assert 7000 <= card.seconds_in_stage <= 7300

    err = await rpc_error(
        pipelines.MoveOpportunityStage(
            pb.MoveOpportunityStageRequest(id=o.id, stage_id=lost.id), metadata=company.md
        )
    )
    assert [f.field for f in from_rpc_error(err).field_errors] == ["lost_reason"]
    o = (
        await pipelines.MoveOpportunityStage(
            pb.MoveOpportunityStageRequest(id=o.id, stage_id=lost.id, lost_reason="价格高于竞品"),
            metadata=company.md,
        )
    ).opportunity
    assert o.status == pb.OPPORTUNITY_STATUS_LOST and o.lost_reason == "价格高于竞品" and o.closed_at.seconds
    history = (
        await pipelines.ListStageHistory(pb.ListStageHistoryRequest(id=o.id), metadata=company.md)
    ).items
    assert [(h.from_stage_id, h.to_stage_id) for h in history] == [
        ("", qualify.id),
        (qualify.id, quote.id),
        (quote.id, lost.id),
    ]
    assert 18000 <= history[0].seconds_in_stage <= 18300 and 7000 <= history[1].seconds_in_stage <= 7300
    board = await pipelines.GetBoard(pb.GetBoardRequest(id=p.id), metadata=company.md)
    assert sum(c.count for c in board.columns) == 0  # closed opportunities leave the board


async def test_a_stage_holding_open_opportunities_cannot_be_removed(identity, pipelines):
    company, _ = await team(identity, 0)
    p = (await pipelines.CreatePipeline(pb.CreatePipelineRequest(name="P"), metadata=company.md)).pipeline
    await pipelines.CreateOpportunity(
        pb.CreateOpportunityRequest(name="o", pipeline_id=p.id), metadata=company.md
    )
    keep = [pb.StageInput(id=s.id, name=s.name, probability=s.probability, kind=s.kind) for s in p.stages[1:]]
    err = await rpc_error(
        pipelines.UpdatePipeline(
            pb.UpdatePipelineRequest(
                id=p.id,
                pipeline=pb.PipelinePatch(stages=keep),
                update_mask=field_mask_pb2.FieldMask(paths=["stages"]),
            ),
            metadata=company.md,
        )
    )
    assert from_rpc_error(err).reason == "stage_in_use"
    renamed = [
        pb.StageInput(id=s.id, name=s.name, probability=s.probability + (5 if i == 0 else 0), kind=s.kind)
        for i, s in enumerate(p.stages)
    ]
    p2 = (
        await pipelines.UpdatePipeline(
            pb.UpdatePipelineRequest(
                id=p.id,
                pipeline=pb.PipelinePatch(stages=renamed),
                update_mask=field_mask_pb2.FieldMask(paths=["stages"]),
            ),
            metadata=company.md,
        )
    ).pipeline
    assert p2.stages[0].probability == 15 and p2.version == p.version + 1
    (o,) = (
        await pipelines.ListOpportunities(pb.ListOpportunitiesRequest(pipeline_id=p.id), metadata=company.md)
    ).items
    assert o.probability == 15


async def test_another_tenants_pipeline_and_opportunity_are_not_found(identity, pipelines):
    alpha, _ = await team(identity, 0)
    beta, _ = await team(identity, 0, name="Beta GmbH")
    p = (await pipelines.CreatePipeline(pb.CreatePipelineRequest(name="A"), metadata=alpha.md)).pipeline
    o = (
        await pipelines.CreateOpportunity(pb.CreateOpportunityRequest(name="o"), metadata=alpha.md)
    ).opportunity
    for call in (
        pipelines.GetPipeline(pb.GetPipelineRequest(id=p.id), metadata=beta.md),
        pipelines.GetBoard(pb.GetBoardRequest(id=p.id), metadata=beta.md),
        pipelines.GetOpportunity(pb.GetOpportunityRequest(id=o.id), metadata=beta.md),
        pipelines.MoveOpportunityStage(
            pb.MoveOpportunityStageRequest(id=o.id, stage_id=p.stages[1].id), metadata=beta.md
        ),
    ):
        assert (await rpc_error(call)).code() == grpc.StatusCode.NOT_FOUND


async def test_team_members_and_followers_see_an_opportunity_others_do_not(identity, pipelines):
    company, (owner, member, follower, outsider) = await team(identity, 4)
    await pipelines.CreatePipeline(pb.CreatePipelineRequest(name="P"), metadata=company.md)
    o = (
        await pipelines.CreateOpportunity(
            pb.CreateOpportunityRequest(
                name="联合投标", team_member_ids=[member.id], follower_ids=[follower.id]
            ),
            metadata=owner.md,
        )
    ).opportunity
    for rep in (owner, member, follower):
        seen = (
            await pipelines.GetOpportunity(pb.GetOpportunityRequest(id=o.id), metadata=rep.md)
        ).opportunity
        assert seen.id == o.id
    err = await rpc_error(pipelines.GetOpportunity(pb.GetOpportunityRequest(id=o.id), metadata=outsider.md))
    assert err.code() == grpc.StatusCode.NOT_FOUND
