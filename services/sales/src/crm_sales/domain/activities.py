"""Tasks (任务) and follow-up records on leads, opportunities, accounts and contacts, with assignees, due
dates, reminders and @mentions — each mention and reminder an event that notifications delivers."""

from __future__ import annotations

import datetime as dt
from typing import Any

from crm.common.v1 import event_pb2
from crm.sales.v1 import activities_pb2 as pb
from crm.sales.v1 import events_pb2
from crm_kit.db import UnitOfWork, expect_version
from crm_kit.errors import Conflict
from crm_kit.ids import new_id
from crm_kit.paging import Page, SortKey
from crm_kit.policy import Decision
from crm_kit.validation import Check, updatable
from sqlalchemy import any_, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from crm_sales import models
from crm_sales.domain.common import (
    People,
    caller,
    check_local,
    enum_name,
    from_ts,
    get_owned,
    snapshot,
    to_message,
)

STATUS = pb.TaskStatus.DESCRIPTOR
RELATED = ("lead", "opportunity", "account", "contact", "contract", "quote", "order")
PRIORITIES = ("low", "normal", "high")
KINDS = ("call", "visit", "email", "wechat", "meeting", "note")
TASK_FIELDS = ("title", "description", "assignee_id", "due_at", "remind_at", "priority", "mentioned_user_ids")
AUDITED = (*TASK_FIELDS, "status", "related_type", "related_id")


def task_pb(t: models.Task) -> pb.Task:
    return to_message(t, pb.Task)


def activity_pb(a: models.Activity) -> pb.Activity:
    return to_message(a, pb.Activity)


def visible(decision: Decision) -> Any:
    principal = caller()
    return or_(
        decision.row_filter(
            principal, owner_column=models.Task.assignee_id, department_column=models.Task.department_id
        ),
        models.Task.created_by == principal.actor_id,
    )


def _check_related(check: Check, related_type: str, related_id: str) -> None:
    if related_type or related_id:
        check.one_of("related_type", related_type, RELATED)
        check.uuid("related_id", related_id, required=True)


# The sales records a task or follow-up may be about (accounts and contacts live at the customers service).
LOCAL_RECORDS: dict[str, Any] = {
    "lead": models.Lead,
    "opportunity": models.Opportunity,
    "contract": models.Contract,
    "quote": models.Quote,
    "order": models.Order,
}


async def _related_exists(
    session: AsyncSession, people: People, check: Check, related_type: str, related_id: str
) -> None:
    """`related_id` names a record of `related_type` in the caller's company (a 422 on it otherwise)."""
    if not related_id or check.errors:
        return
    if related_type in ("account", "contact"):
        await people.check_record(check, "related_id", related_type, related_id)
        return
    await check_local(
        session, check, "related_id", LOCAL_RECORDS[related_type], related_id, what=related_type
    )


async def _mentioned_exist(people: People, check: Check, ids: list[str], already: Any = ()) -> None:
    """Everyone mentioned (newly) is a user of the caller's company."""
    if not check.errors:
        known = set(already)
        await people.check_users(
            check, "mentioned_user_ids", [uid if uid not in known else "" for uid in ids]
        )


def _mentions(check: Check, ids: list[str]) -> list[str]:
    for i, uid in enumerate(ids):
        check.uuid(f"mentioned_user_ids[{i}]", uid)
    if len(ids) > 50:
        check.fail("mentioned_user_ids", "at most 50 people")
    return list(dict.fromkeys(ids))


def _mention_events(
    uow: UnitOfWork, new_ids: list[str], *, source_type: str, source_id: str, row: Any, text_: str
) -> None:
    author = caller().actor_id
    for uid in new_ids:
        uow.emit(
            events_pb2.UserMentioned(
                user_id=uid,
                by_user_id=author,
                source_type=source_type,
                source_id=source_id,
                related_type=row.related_type,
                related_id=row.related_id,
                excerpt=text_[:200],
            ),
            aggregate_type=source_type,
            aggregate_id=source_id,
            aggregate_version=getattr(row, "version", 1) or 1,
            action="mentioned",
            after={"user_id": uid},
        )


async def create_task(uow: UnitOfWork, request: pb.CreateTaskRequest, *, people: People) -> models.Task:
    principal = caller()
    check = Check()
    check.required("title", request.title)
    check.length("title", request.title, max_len=300)
    check.length("description", request.description, max_len=10_000)
    _check_related(check, request.related_type, request.related_id)
    priority = request.priority or "normal"
    check.one_of("priority", priority, PRIORITIES)
    check.uuid("assignee_id", request.assignee_id)
    mentions = _mentions(check, list(request.mentioned_user_ids))
    await _related_exists(uow.session, people, check, request.related_type, request.related_id)
    await _mentioned_exist(people, check, list(request.mentioned_user_ids))
    check.done()
    assignee = request.assignee_id or principal.actor_id
    t = models.Task(
        id=new_id(),
        tenant_id=principal.tenant_id,
        title=request.title.strip(),
        description=request.description,
        related_type=request.related_type,
        related_id=request.related_id,
        assignee_id=assignee,
        department_id=await people.department_of("assignee_id", assignee),
        due_at=from_ts(request.due_at, request.HasField("due_at")),
        remind_at=from_ts(request.remind_at, request.HasField("remind_at")),
        status="open",
        priority=priority,
        mentioned_user_ids=mentions,
        created_by=principal.actor_id,
        version=1,
    )
    uow.session.add(t)
    await uow.session.flush()
    await uow.session.refresh(t)
    uow.emit(
        events_pb2.TaskCreated(task=task_pb(t)),
        aggregate_type="task",
        aggregate_id=t.id,
        aggregate_version=1,
        action="created",
        after=snapshot(t, AUDITED),
    )
    _mention_events(
        uow, mentions, source_type="task", source_id=t.id, row=t, text_=f"{t.title} {t.description}"
    )
    return t


async def get_task(
    session: AsyncSession, decision: Decision, task_id: str, *, lock: bool = False
) -> models.Task:
    return await get_owned(session, models.Task, "task", task_id, lock=lock, visible=visible(decision))


async def list_tasks(
    session: AsyncSession, decision: Decision, request: pb.ListTasksRequest
) -> tuple[list[models.Task], str]:
    keys = [SortKey(models.Task.id, descending=True)]
    page = Page.of(request.page, len(keys))
    stmt = select(models.Task).where(models.Task.tenant_id == caller().tenant_id, visible(decision))
    if request.assignee_id:
        stmt = stmt.where(models.Task.assignee_id == request.assignee_id)
    if request.related_id:
        stmt = stmt.where(models.Task.related_id == request.related_id)
    if request.status:
        stmt = stmt.where(models.Task.status == enum_name(STATUS, request.status))
    if request.HasField("due_before"):
        stmt = stmt.where(
            models.Task.status == "open", models.Task.due_at < request.due_before.ToDatetime(tzinfo=dt.UTC)
        )
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda r: [r.id])


async def update_task(
    uow: UnitOfWork, decision: Decision, request: pb.UpdateTaskRequest, *, people: People
) -> models.Task:
    paths = list(request.update_mask.paths)
    updatable(paths, TASK_FIELDS)
    t = await get_task(uow.session, decision, request.id, lock=True)
    expect_version(t, request.expected_version)
    src = request.task
    check = Check()
    if "title" in paths:
        check.required("title", src.title)
        check.length("title", src.title, max_len=300)
    if "priority" in paths:
        check.one_of("priority", src.priority or "normal", PRIORITIES)
    if "assignee_id" in paths:
        check.uuid("assignee_id", src.assignee_id, required=True)
    mentions = _mentions(check, list(src.mentioned_user_ids)) if "mentioned_user_ids" in paths else None
    if mentions is not None:
        await _mentioned_exist(people, check, list(src.mentioned_user_ids), t.mentioned_user_ids or [])
    check.done()
    before = snapshot(t, AUDITED)
    old_mentions = set(t.mentioned_user_ids or [])
    if "title" in paths:
        t.title = src.title.strip()
    if "description" in paths:
        t.description = src.description
    if "priority" in paths:
        t.priority = src.priority or "normal"
    if "assignee_id" in paths:
        t.assignee_id = src.assignee_id
        t.department_id = await people.department_of("assignee_id", src.assignee_id)
    if "due_at" in paths:
        t.due_at = from_ts(src.due_at, src.HasField("due_at"))
    if "remind_at" in paths:
        t.remind_at = from_ts(src.remind_at, src.HasField("remind_at"))
        t.reminded_at = None
    if mentions is not None:
        t.mentioned_user_ids = mentions
    after = snapshot(t, AUDITED)
    if after == before:
        return t
    t.version += 1
    await uow.session.flush()
    await uow.session.refresh(t)
    uow.emit(
        events_pb2.TaskUpdated(task=task_pb(t)),
        aggregate_type="task",
        aggregate_id=t.id,
        aggregate_version=t.version,
        action="updated",
        before=before,
        after=after,
    )
    if mentions is not None:
        fresh = [m for m in mentions if m not in old_mentions]
        _mention_events(
            uow, fresh, source_type="task", source_id=t.id, row=t, text_=f"{t.title} {t.description}"
        )
    return t


async def complete_task(
    uow: UnitOfWork, decision: Decision, task_id: str, *, now: dt.datetime
) -> models.Task:
    t = await get_task(uow.session, decision, task_id, lock=True)
    if t.status != "open":
        raise Conflict(f"the task is already {t.status}", reason="task_closed")
    before = snapshot(t, AUDITED)
    t.status = "done"
    t.completed_at = now
    t.version += 1
    await uow.session.flush()
    await uow.session.refresh(t)
    uow.emit(
        events_pb2.TaskUpdated(task=task_pb(t)),
        aggregate_type="task",
        aggregate_id=t.id,
        aggregate_version=t.version,
        action="completed",
        before=before,
        after=snapshot(t, AUDITED),
    )
    return t


async def create_activity(
    uow: UnitOfWork, request: pb.CreateActivityRequest, *, people: People, now: dt.datetime
) -> models.Activity:
    principal = caller()
    check = Check()
    check.required("related_type", request.related_type)
    _check_related(check, request.related_type, request.related_id)
    kind = request.kind or "note"
    check.one_of("kind", kind, KINDS)
    check.required("content", request.content)
    check.length("content", request.content, max_len=10_000)
    mentions = _mentions(check, list(request.mentioned_user_ids))
    await _related_exists(uow.session, people, check, request.related_type, request.related_id)
    await _mentioned_exist(people, check, list(request.mentioned_user_ids))
    check.done()
    a = models.Activity(
        id=new_id(),
        tenant_id=principal.tenant_id,
        related_type=request.related_type,
        related_id=request.related_id,
        kind=kind,
        content=request.content,
        mentioned_user_ids=mentions,
        author_id=principal.actor_id,
        department_id=principal.department_id or None,
        occurred_at=from_ts(request.occurred_at, request.HasField("occurred_at")) or now,
    )
    uow.session.add(a)
    await uow.session.flush()
    uow.emit(
        events_pb2.ActivityRecorded(activity=activity_pb(a)),
        aggregate_type="activity",
        aggregate_id=a.id,
        aggregate_version=1,
        action="created",
        after={"related_type": a.related_type, "related_id": a.related_id, "kind": kind},
    )
    _mention_events(uow, mentions, source_type="activity", source_id=a.id, row=a, text_=a.content)
    return a


async def list_activities(
    session: AsyncSession, decision: Decision, request: pb.ListActivitiesRequest
) -> tuple[list[models.Activity], str]:
    principal = caller()
    keys = [SortKey(models.Activity.id, descending=True)]
    page = Page.of(request.page, len(keys))
    stmt = select(models.Activity).where(
        models.Activity.tenant_id == principal.tenant_id,
        or_(
            decision.row_filter(
                principal,
                owner_column=models.Activity.author_id,
                department_column=models.Activity.department_id,
            ),
            any_(models.Activity.mentioned_user_ids) == principal.actor_id,
        ),
    )
    if request.related_id:
        stmt = stmt.where(models.Activity.related_id == request.related_id)
    if request.related_type:
        stmt = stmt.where(models.Activity.related_type == request.related_type)
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda r: [r.id])


REMINDERS = text(
    """
    SELECT id FROM tasks
    WHERE status = 'open' AND reminded_at IS NULL AND remind_at IS NOT NULL AND remind_at <= :now
      AND (CAST(:tenant AS text) IS NULL OR tenant_id = :tenant)
    ORDER BY id LIMIT :limit
    FOR UPDATE SKIP LOCKED
    """
)


async def send_reminders(
    uow: UnitOfWork, *, now: dt.datetime, tenant_id: str | None, limit: int = 500
) -> int:
    ids = (
        (await uow.session.execute(REMINDERS, {"now": now, "tenant": tenant_id, "limit": limit}))
        .scalars()
        .all()
    )
    for tid in ids:
        t = await uow.session.get(models.Task, tid)
        assert t is not None
        t.reminded_at = now
        await uow.session.flush()
        await uow.session.refresh(t)
        uow.emit(
            events_pb2.TaskReminder(task=task_pb(t)),
            aggregate_type="task",
            aggregate_id=t.id,
            aggregate_version=t.version,
            action="reminder",
            tenant_id=t.tenant_id,
            actor=event_pb2.Actor(type=event_pb2.ACTOR_TYPE_SYSTEM, id="system", name="system"),
        )
    return len(ids)
