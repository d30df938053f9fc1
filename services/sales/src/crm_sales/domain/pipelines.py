"""Pipelines with ordered stages (each with a win probability), and the kanban board's one query."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from crm.sales.v1 import events_pb2
from crm.sales.v1 import pipelines_pb2 as pb
from crm_kit.db import UnitOfWork, expect_version
from crm_kit.errors import Conflict, InvalidArgument
from crm_kit.ids import new_id
from crm_kit.paging import Page, SortKey
from crm_kit.policy import Decision
from crm_kit.validation import Check, updatable
from sqlalchemy import and_, func, select, text, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from crm_sales import models
from crm_sales.domain.common import (
    caller,
    enum_name,
    get_owned,
    money,
    to_message,
)

KIND = pb.StageKind.DESCRIPTOR
# Fields a stage may require before an opportunity enters it.
REQUIRABLE = (
    "account_id",
    "contact_id",
    "amount",
    "close_date",
    "next_step",
    "competitors",
    "products",
    "team_member_ids",
    "description",
)
# 默认销售阶段, in both languages.
DEFAULT_STAGES = [
    ("初步接洽", "Qualification", 10, "open"),
    ("需求分析", "Needs analysis", 25, "open"),
    ("方案报价", "Proposal", 50, "open"),
    ("商务谈判", "Negotiation", 75, "open"),
    ("赢单", "Won", 100, "won"),
    ("输单", "Lost", 0, "lost"),
]
# The pipeline a new company starts with (its default), named in the company's language.
DEFAULT_PIPELINE_NAME = {"zh-CN": "标准销售流程", "en": "Standard sales pipeline"}
# A board's per-stage totals are sums of the opportunities' amounts: hidden with the amount.
TOTALS_FROM = {"amount": ("amount",), "weighted_amount": ("amount",)}


def stage_pb(s: models.Stage) -> pb.Stage:
    return to_message(s, pb.Stage)


async def stages_of(session: AsyncSession, pipeline_id: str, *, archived: bool = False) -> list[models.Stage]:
    stmt = select(models.Stage).where(models.Stage.pipeline_id == pipeline_id)
    if not archived:
        stmt = stmt.where(models.Stage.archived.is_(False))
    return list((await session.scalars(stmt.order_by(models.Stage.position))).all())


async def pipeline_pb(session: AsyncSession, p: models.Pipeline) -> pb.Pipeline:
    return to_message(p, pb.Pipeline, stages=[stage_pb(s) for s in await stages_of(session, p.id)])


def _snapshot(p: models.Pipeline, stages: list[models.Stage]) -> dict[str, Any]:
    return {
        "name": p.name,
        "is_default": bool(p.is_default),
        "stages": [
            {"id": s.id, "name": s.name, "probability": s.probability, "kind": s.kind} for s in stages
        ],
    }


def _check_stages(check: Check, stages: list[pb.StageInput]) -> None:
    if not stages:
        check.fail("stages", "a pipeline needs at least one stage")
    if len(stages) > 30:
        check.fail("stages", "at most 30 stages")
    if not any(enum_name(KIND, s.kind) in ("", "open") for s in stages):
        check.fail("stages", "at least one stage must be open")
    names = [s.name.strip() for s in stages]
    if len(set(names)) != len(names):
        check.fail("stages", "stage names must be unique within the pipeline")
    for i, s in enumerate(stages):
        check.required(f"stages[{i}].name", s.name)
        check.length(f"stages[{i}].name", s.name, max_len=200)
        if not 0 <= s.probability <= 100:
            check.fail(f"stages[{i}].probability", "must be between 0 and 100")
        for f in s.required_fields:
            if f not in REQUIRABLE:
                check.fail(f"stages[{i}].required_fields", f"{f} is not one of {', '.join(REQUIRABLE)}")
        for locale in s.labels:
            if locale not in ("zh-CN", "en"):
                check.fail(f"stages[{i}].labels", "locales are zh-CN and en")


def _default_inputs(locale: str = "zh-CN") -> list[pb.StageInput]:
    return [
        pb.StageInput(
            name=zh if locale == "zh-CN" else en,
            labels={"zh-CN": zh, "en": en},
            probability=p,
            kind=pb.StageKind.Value(f"STAGE_KIND_{kind.upper()}"),
        )
        for zh, en, p, kind in DEFAULT_STAGES
    ]


async def _write_stages(
    session: AsyncSession, pipeline: models.Pipeline, inputs: list[pb.StageInput], check: Check
) -> list[models.Stage]:
    existing = {s.id: s for s in await stages_of(session, pipeline.id)}
    kept: set[str] = set()
    out = []
    for position, s in enumerate(inputs):
        kind = enum_name(KIND, s.kind) or "open"
        probability = 100 if kind == "won" else 0 if kind == "lost" else s.probability
        if s.id:
            stage = existing.get(s.id)
            if stage is None:
                check.fail(f"stages[{position}].id", "no such stage in this pipeline")
                continue
            kept.add(s.id)
        else:
            stage = models.Stage(id=new_id(), tenant_id=pipeline.tenant_id, pipeline_id=pipeline.id)
            session.add(stage)
        stage.position = position
        stage.name = s.name.strip()
        stage.labels = dict(s.labels) or {}
        stage.probability = probability
        stage.kind = kind
        stage.required_fields = list(s.required_fields)
        stage.archived = False
        out.append(stage)
    check.done()
    for sid, stage in existing.items():
        if sid not in kept:
            in_use = await session.scalar(
                select(models.Opportunity.id)
                .where(models.Opportunity.stage_id == sid, models.Opportunity.status == "open")
                .limit(1)
            )
            if in_use:
                raise Conflict(
                    f"stage {stage.name} still holds open opportunities; move them first",
                    reason="stage_in_use",
                )
            stage.archived = True
            stage.position = 1000 + stage.position
    return out


async def create(
    uow: UnitOfWork, request: pb.CreatePipelineRequest, *, locale: str = "zh-CN", is_default: bool = False
) -> models.Pipeline:
    inputs = list(request.stages) or _default_inputs(locale)
    check = Check()
    check.required("name", request.name)
    check.length("name", request.name, max_len=200)
    _check_stages(check, inputs)
    check.done()
    pipeline = models.Pipeline(
        id=new_id(), tenant_id=caller().tenant_id, name=request.name.strip(), version=1, is_default=is_default
    )
    uow.session.add(pipeline)
    await uow.session.flush()
    stages = await _write_stages(uow.session, pipeline, inputs, Check())
    await uow.session.flush()
    await uow.session.refresh(pipeline)
    uow.emit(
        events_pb2.PipelineChanged(pipeline=await pipeline_pb(uow.session, pipeline)),
        aggregate_type="pipeline",
        aggregate_id=pipeline.id,
        aggregate_version=1,
        action="created",
        after=_snapshot(pipeline, stages),
    )
    return pipeline


async def get(session: AsyncSession, pipeline_id: str, *, lock: bool = False) -> models.Pipeline:
    return await get_owned(session, models.Pipeline, "pipeline", pipeline_id, lock=lock)


async def default(session: AsyncSession) -> models.Pipeline | None:
    """The company's default pipeline; without one (its administrator unset or deleted it), its oldest
    pipeline; None when it has none at all."""
    return await session.scalar(
        select(models.Pipeline)
        .where(models.Pipeline.tenant_id == caller().tenant_id)
        .order_by(models.Pipeline.is_default.desc(), models.Pipeline.id)
        .limit(1)
    )


async def first(session: AsyncSession) -> models.Pipeline:
    p = await default(session)
    if p is None:
        raise InvalidArgument.for_field("pipeline_id", "the tenant has no pipeline yet; create one first")
    return p


async def _make_default(
    session: AsyncSession, pipeline: models.Pipeline
) -> list[tuple[models.Pipeline, dict]]:
    """`pipeline` becomes its company's default; returns the former default with its snapshot before."""
    former = list(
        (
            await session.scalars(
                select(models.Pipeline)
                .where(
                    models.Pipeline.tenant_id == pipeline.tenant_id,
                    models.Pipeline.is_default.is_(True),
                    models.Pipeline.id != pipeline.id,
                )
                .with_for_update()
            )
        ).all()
    )
    changed = []
    for p in former:
        before = _snapshot(p, await stages_of(session, p.id))
        p.is_default = False
        p.version += 1
        changed.append((p, before))
    # The former default is written first: the unique index allows one default per company.
    await session.flush()
    pipeline.is_default = True
    return changed


async def _emit_unset(uow: UnitOfWork, changed: list[tuple[models.Pipeline, dict]]) -> None:
    for p, before in changed:
        await uow.session.refresh(p)
        uow.emit(
            events_pb2.PipelineChanged(pipeline=await pipeline_pb(uow.session, p)),
            aggregate_type="pipeline",
            aggregate_id=p.id,
            aggregate_version=p.version,
            action="updated",
            before=before,
            after=_snapshot(p, await stages_of(uow.session, p.id)),
        )


async def set_up_defaults(uow: UnitOfWork, *, locale: str) -> models.Pipeline | None:
    """A new company's default pipeline with the usual stages, in its language (zh-CN or en). Nothing when
    the company already has a default (a redelivered event, or its administrator was quicker)."""
    session = uow.session
    tenant_id = caller().tenant_id
    locale = "en" if locale == "en" else "zh-CN"
    has_default = await session.scalar(
        select(models.Pipeline.id).where(
            models.Pipeline.tenant_id == tenant_id, models.Pipeline.is_default.is_(True)
        )
    )
    if has_default:
        return None
    name = DEFAULT_PIPELINE_NAME[locale]
    if await session.scalar(
        select(models.Pipeline.id).where(models.Pipeline.tenant_id == tenant_id, models.Pipeline.name == name)
    ):
        return None  # the administrator made one of that name already: theirs is not taken over
    return await create(uow, pb.CreatePipelineRequest(name=name), locale=locale, is_default=True)


async def list_pipelines(session: AsyncSession, request: pb.ListPipelinesRequest) -> tuple[list[Any], str]:
    keys = [SortKey(models.Pipeline.id)]
    page = Page.of(request.page, len(keys))
    stmt = select(models.Pipeline).where(models.Pipeline.tenant_id == caller().tenant_id)
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda r: [r.id])


async def update(uow: UnitOfWork, request: pb.UpdatePipelineRequest) -> models.Pipeline:
    paths = list(request.update_mask.paths)
    updatable(paths, ("name", "stages", "is_default"))
    pipeline = await get(uow.session, request.id, lock=True)
    expect_version(pipeline, request.expected_version)
    check = Check()
    if "name" in paths:
        check.required("name", request.pipeline.name)
        check.length("name", request.pipeline.name, max_len=200)
    if "stages" in paths:
        _check_stages(check, list(request.pipeline.stages))
    check.done()
    before = _snapshot(pipeline, await stages_of(uow.session, pipeline.id))
    if "name" in paths:
        pipeline.name = request.pipeline.name.strip()
    if "stages" in paths:
        await _write_stages(uow.session, pipeline, list(request.pipeline.stages), Check())
    unset: list[tuple[models.Pipeline, dict]] = []
    if "is_default" in paths:
        if request.pipeline.is_default and not pipeline.is_default:
            unset = await _make_default(uow.session, pipeline)
        elif not request.pipeline.is_default:
            pipeline.is_default = False
    await uow.session.flush()
    after = _snapshot(pipeline, await stages_of(uow.session, pipeline.id))
    if after == before:
        return pipeline
    await _emit_unset(uow, unset)
    pipeline.version += 1
    await uow.session.flush()
    await uow.session.refresh(pipeline)
    # Opportunities take their stage's (possibly new) probability.
    await uow.session.execute(
        text(
            "UPDATE opportunities o SET probability = s.probability FROM pipeline_stages s "
            "WHERE s.id = o.stage_id AND o.pipeline_id = :p AND o.status = 'open' "
            "AND o.probability <> s.probability"
        ),
        {"p": pipeline.id},
    )
    uow.emit(
        events_pb2.PipelineChanged(pipeline=await pipeline_pb(uow.session, pipeline)),
        aggregate_type="pipeline",
        aggregate_id=pipeline.id,
        aggregate_version=pipeline.version,
        action="updated",
        before=before,
        after=after,
    )
    return pipeline


async def delete(uow: UnitOfWork, pipeline_id: str, expected_version: int) -> None:
    pipeline = await get(uow.session, pipeline_id, lock=True)
    expect_version(pipeline, expected_version)
    if await uow.session.scalar(
        select(models.Opportunity.id).where(models.Opportunity.pipeline_id == pipeline.id).limit(1)
    ):
        raise Conflict("the pipeline has opportunities; move or delete them first", reason="pipeline_in_use")
    message = await pipeline_pb(uow.session, pipeline)
    before = _snapshot(pipeline, await stages_of(uow.session, pipeline.id))
    for s in await stages_of(uow.session, pipeline.id, archived=True):
        await uow.session.delete(s)
    await uow.session.delete(pipeline)
    uow.emit(
        events_pb2.PipelineChanged(pipeline=message),
        aggregate_type="pipeline",
        aggregate_id=pipeline.id,
        aggregate_version=pipeline.version + 1,
        action="deleted",
        before=before,
    )


# ---------------------------------------------------------------- the board

MAX_CARDS = 200


async def board(
    session: AsyncSession,
    decision: Decision,
    request: pb.GetBoardRequest,
    *,
    now: dt.datetime,
) -> tuple[pb.Pipeline, list[pb.BoardColumn]]:
    """Per stage: count, amount and weighted amount per currency over every open opportunity the caller sees,
    and the first cards. Two statements, both served by the partial board index."""
    pipeline = await get(session, request.id)
    limit = request.cards_per_stage or 20
    if not 0 <= limit <= MAX_CARDS:
        raise InvalidArgument.for_field("cards_per_stage", f"must be between 0 and {MAX_CARDS}")
    stages = await stages_of(session, pipeline.id)
    principal = caller()
    Opp = models.Opportunity
    scope = and_(
        Opp.tenant_id == principal.tenant_id,
        Opp.pipeline_id == pipeline.id,
        Opp.status == "open",
        decision.row_filter(principal, owner_column=Opp.owner_id, department_column=Opp.department_id),
    )
    if request.owner_id:
        scope = and_(scope, Opp.owner_id == request.owner_id)
    totals = (
        await session.execute(
            select(
                Opp.stage_id,
                Opp.currency,
                func.count(),
                func.coalesce(func.sum(Opp.amount), 0),
            )
            .where(scope)
            .group_by(Opp.stage_id, Opp.currency)
        )
    ).all()
    cards: list[Any] = []
    if limit and stages:
        # Per stage its newest cards: one index range scan with LIMIT each, however many cards a column holds.
        per_stage = [
            select(
                Opp.id,
                Opp.name,
                Opp.account_id,
                Opp.amount,
                Opp.currency,
                Opp.close_date,
                Opp.owner_id,
                Opp.stage_id,
                Opp.stage_entered_at,
                Opp.version,
            )
            .where(scope, Opp.stage_id == st.id)
            .order_by(Opp.stage_entered_at.desc(), Opp.id.desc())
            .limit(limit)
            for st in stages
            if st.kind == "open"
        ]
        if per_stage:
            cards = (await session.execute(union_all(*per_stage))).all()
    columns = []
    by_stage: dict[str, pb.BoardColumn] = {}
    for s in stages:
        col = pb.BoardColumn(stage=stage_pb(s))
        columns.append(col)
        by_stage[s.id] = col
    probability = {st.id: st.probability for st in stages}
    for stage_id, currency, count, amount in totals:
        col = by_stage.get(stage_id)
        if col is None:
            continue
        # An open opportunity's probability is always its stage's (kept so on moves and stage edits), so the
        # weighted total is the stage's sum times its probability: one multiplication, not one per row.
        weighted = Decimal(amount) * probability[stage_id]
        col.count += count
        col.totals.append(
            pb.CurrencyTotal(
                currency=currency,
                amount=format(money(Decimal(amount)), "f"),
                weighted_amount=format(money(Decimal(weighted) / 100), "f"),
                count=count,
            )
        )
    for c in cards:
        col = by_stage.get(c.stage_id)
        if col is None:
            continue
        col.cards.append(
            pb.BoardCard(
                id=c.id,
                name=c.name,
                account_id=c.account_id,
                amount=format(c.amount, "f") if c.amount is not None else "",
                currency=c.currency,
                close_date=c.close_date.isoformat() if c.close_date else "",
                owner_id=c.owner_id,
                status=pb.OPPORTUNITY_STATUS_OPEN,
                seconds_in_stage=max(0, int((now - c.stage_entered_at).total_seconds())),
                version=c.version,
            )
        )
    for col in columns:
        col.totals.sort(key=lambda t: t.currency)
    return to_message(pipeline, pb.Pipeline, stages=[col.stage for col in columns]), columns
