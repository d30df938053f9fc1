"""Multi-step approvals (审批) of quotes and contracts: each step waits for any one of its approvers; approve
moves to the next step (the last approves the object), reject ends it; every decision and comment is kept."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from crm.sales.v1 import events_pb2
from crm.sales.v1 import quotes_pb2 as pb
from crm_kit.db import UnitOfWork, expect_version
from crm_kit.errors import Conflict, PermissionDenied
from crm_kit.ids import new_id
from crm_kit.paging import Page, SortKey
from crm_kit.policy import Decision, Text
from crm_kit.validation import Check
from sqlalchemy import and_, any_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_sales import models
from crm_sales.domain.common import (
    caller,
    enum_name,
    get_owned,
    parse_decimal,
    to_message,
)

STATUS = pb.ApprovalStatus.DESCRIPTOR
# object_type → what a final decision does to the object: f(uow, object_id, "approved" | "rejected", now).
Outcome = Callable[[UnitOfWork, str, str, dt.datetime], Awaitable[None]]
OUTCOMES: dict[str, Outcome] = {}
# object_type → the model of the objects approvals are about: an approval is read in its object's data scope.
SOURCES: dict[str, Any] = {"quote": models.Quote, "contract": models.Contract}


def approval_pb(a: models.Approval, decisions: dict[str, Decision] | None = None) -> pb.Approval:
    """The approval; with the reader's "read" `decisions` per object type, its reason as they may read it (it
    quotes the quote's discount or the contract's amount)."""
    reason = a.reason
    if decisions is not None:
        decision = decisions.get(a.object_type)
        sources = {"reason": a.reason_sources} if a.reason_sources is not None else None
        allowed = decision is not None and decision.allowed
        reason = decision.redact_sourced({"reason": a.reason}, sources)["reason"] if allowed else ""
    return to_message(
        a,
        pb.Approval,
        reason=reason,
        steps=[pb.ApprovalStep(approver_ids=s) for s in a.steps],
        history=[
            to_message(
                None, pb.ApprovalAction, **{**h, "occurred_at": dt.datetime.fromisoformat(h["occurred_at"])}
            )
            for h in a.history
        ],
    )


# ---------------------------------------------------------------- the tenant's policy


async def policy(session: AsyncSession, tenant_id: str) -> models.ApprovalPolicy:
    row = await session.get(models.ApprovalPolicy, tenant_id)
    return row or models.ApprovalPolicy(
        tenant_id=tenant_id, discount_threshold_percent=Decimal(100), steps=[], version=0
    )


def policy_pb(p: models.ApprovalPolicy) -> pb.ApprovalPolicy:
    return pb.ApprovalPolicy(
        discount_threshold_percent=format(p.discount_threshold_percent.normalize(), "f"),
        steps=[pb.ApprovalStep(approver_ids=s) for s in p.steps or []],
        version=p.version or 0,
    )


async def update_policy(uow: UnitOfWork, request: pb.UpdateApprovalPolicyRequest) -> models.ApprovalPolicy:
    tenant_id = caller().tenant_id
    paths = set(request.update_mask.paths)
    row = await uow.session.get(models.ApprovalPolicy, tenant_id, with_for_update=True)
    if row is None:
        row = models.ApprovalPolicy(
            tenant_id=tenant_id, discount_threshold_percent=Decimal(100), steps=[], version=0
        )
        uow.session.add(row)
    expect_version(row, request.expected_version)
    check = Check()
    if "discount_threshold_percent" in paths:
        threshold = parse_decimal(
            check,
            "discount_threshold_percent",
            request.policy.discount_threshold_percent,
            required=True,
            maximum=Decimal(100),
            places=4,
        )
    if "steps" in paths:
        if len(request.policy.steps) > 10:
            check.fail("steps", "at most 10 steps")
        for i, step in enumerate(request.policy.steps):
            if not step.approver_ids:
                check.fail(f"steps[{i}].approver_ids", "name at least one approver")
            for j, uid in enumerate(step.approver_ids):
                check.uuid(f"steps[{i}].approver_ids[{j}]", uid)
    for p in paths - {"discount_threshold_percent", "steps"}:
        check.fail(p, "cannot be changed here")
    check.done()
    before = {"threshold": format(row.discount_threshold_percent, "f"), "steps": list(row.steps or [])}
    if "discount_threshold_percent" in paths and threshold is not None:
        row.discount_threshold_percent = threshold
    if "steps" in paths:
        row.steps = [list(s.approver_ids) for s in request.policy.steps]
    row.version = (row.version or 0) + 1
    await uow.session.flush()
    uow.emit(
        events_pb2.ApprovalPolicyChanged(policy=policy_pb(row)),
        aggregate_type="approval_policy",
        aggregate_id=tenant_id,
        aggregate_version=row.version,
        action="updated",
        before=before,
        after={"threshold": format(row.discount_threshold_percent, "f"), "steps": list(row.steps)},
    )
    return row


# ---------------------------------------------------------------- approvals


async def request_approval(
    uow: UnitOfWork, *, object_type: str, object_id: str, reason: Text, steps: list[list[str]]
) -> models.Approval:
    principal = caller()
    a = models.Approval(
        id=new_id(),
        tenant_id=principal.tenant_id,
        object_type=object_type,
        object_id=object_id,
        reason=reason.plain,
        reason_sources=reason.to_json(),
        status="pending",
        steps=steps,
        current_step=0,
        history=[],
        requested_by=principal.actor_id,
        current_approver_ids=list(steps[0]),
        version=1,
    )
    uow.session.add(a)
    await uow.session.flush()
    await uow.session.refresh(a)
    uow.emit(
        events_pb2.ApprovalRequested(approval=approval_pb(a), approver_ids=steps[0]),
        aggregate_type="approval",
        aggregate_id=a.id,
        aggregate_version=1,
        action="requested",
        after={"object_type": object_type, "object_id": object_id, "step": 0},
    )
    return a


def visible(decisions: dict[str, Decision]) -> Any:
    """The approvals the caller may read (`decisions`: their "read" per object type): those about an object
    inside their data scope of it, and those they asked for, decide or decided (approvers are named by the
    tenant's approval policy)."""
    principal = caller()
    A = models.Approval
    return or_(
        *(
            and_(A.object_type == kind, decisions[kind].source_filter(principal, A.object_id, model))
            for kind, model in SOURCES.items()
        ),
        A.requested_by == principal.actor_id,
        any_(A.current_approver_ids) == principal.actor_id,
        A.history.contains([{"actor_id": principal.actor_id}]),
    )


async def get(
    session: AsyncSession, approval_id: str, *, lock: bool = False, decisions: dict[str, Decision] | None = None
) -> models.Approval:
    """The approval; with the reader's `decisions`, only one they may read (`visible`)."""
    scope = visible(decisions) if decisions is not None else None
    return await get_owned(session, models.Approval, "approval", approval_id, lock=lock, visible=scope)


async def list_approvals(
    session: AsyncSession, decisions: dict[str, Decision], request: pb.ListApprovalsRequest
) -> tuple[list[Any], str]:
    principal = caller()
    keys = [SortKey(models.Approval.id, descending=True)]
    page = Page.of(request.page, len(keys))
    stmt = select(models.Approval).where(models.Approval.tenant_id == principal.tenant_id, visible(decisions))
    if request.mine:
        stmt = stmt.where(
            models.Approval.status == "pending",
            any_(models.Approval.current_approver_ids) == principal.actor_id,
        )
    if request.status:
        stmt = stmt.where(models.Approval.status == enum_name(STATUS, request.status))
    if request.object_id:
        stmt = stmt.where(models.Approval.object_id == request.object_id)
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda r: [r.id])


async def decide(
    uow: UnitOfWork, approval_id: str, *, approve: bool, comment: str, now: dt.datetime
) -> models.Approval:
    principal = caller()
    a = await get(uow.session, approval_id, lock=True)
    if a.status != "pending":
        raise Conflict(f"the approval is already {a.status}", reason="approval_closed")
    if principal.actor_id not in a.current_approver_ids:
        raise PermissionDenied("you are not an approver of the current step", reason="not_approver")
    check = Check()
    if not approve:
        check.required("comment", comment, "say why you reject it")
    check.length("comment", comment, max_len=2000)
    check.done()
    action = {
        "step": a.current_step,
        "actor_id": principal.actor_id,
        "decision": "approved" if approve else "rejected",
        "comment": comment.strip(),
        "occurred_at": now.isoformat(),
    }
    a.history = [*a.history, action]
    final = ""
    if not approve:
        a.status = final = "rejected"
        a.current_approver_ids = []
    elif a.current_step + 1 >= len(a.steps):
        a.status = final = "approved"
        a.current_approver_ids = []
    else:
        a.current_step += 1
        a.current_approver_ids = list(a.steps[a.current_step])
    a.version += 1
    await uow.session.flush()
    await uow.session.refresh(a)
    message = approval_pb(a)
    uow.emit(
        events_pb2.ApprovalDecided(approval=message, action=message.history[-1]),
        aggregate_type="approval",
        aggregate_id=a.id,
        aggregate_version=a.version,
        action=action["decision"],
        after={"step": action["step"], "decision": action["decision"], "comment": action["comment"]},
    )
    if final:
        await OUTCOMES[a.object_type](uow, a.object_id, final, now)
    else:
        uow.emit(
            events_pb2.ApprovalRequested(approval=message, approver_ids=a.current_approver_ids),
            aggregate_type="approval",
            aggregate_id=a.id,
            aggregate_version=a.version,
            action="requested",
            after={"step": a.current_step},
        )
    return a
